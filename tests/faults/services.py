"""Throwaway services the fault tests may kill, pause and restart.

The machine's shared PostgreSQL and Redis are never stopped: a test that needs a Redis to
die starts its own ``redis-server`` on a free port (no persistence) and kills that one.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from benchmarks.harness import free_port, redis_server_command


def wait_for_port(port, up=True, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise AssertionError(f"port {port} did not go {'up' if up else 'down'} in {timeout} s")


class PrivateRedis:
    """A ``redis-server`` of this test alone: start, kill (SIGKILL), pause (SIGSTOP), restart."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (needed to kill a Redis of our own)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fault-redis-")
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [
                *redis_server_command(self.binary, self.port, self.dir),
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def kill(self):
        """SIGKILL: the server vanishes, its data with it (no persistence)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        wait_for_port(self.port, up=False)

    def pause(self):
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def restart(self):
        if self.process is not None and self.process.poll() is None:
            self.kill()
        return self.start()

    def client(self, db=0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=2)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class DatabaseFaults:
    """Breaks the connections to one PostgreSQL database, as a server restart does, and no other.

    ``terminate()`` ends every backend of the database (pg_terminate_backend: SIGTERM to
    the backend, which is what a fast shutdown or restart sends; clients see "terminating
    connection due to administrator command" or a closed socket). ``refuse()`` makes new
    connections to it fail for a while, like a server that is starting up. Runs over its
    own connection to the ``postgres`` maintenance database of the same server.
    """

    def __init__(self, settings_dict):
        import psycopg

        self.name = settings_dict["NAME"]
        self.conn = psycopg.connect(
            host=settings_dict["HOST"],
            port=settings_dict["PORT"],
            user=settings_dict["USER"],
            password=settings_dict["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        )
        self.terminated = 0

    def backends(self):
        return self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.name]
        ).fetchone()[0]

    def terminate(self, keep_pids=()):
        rows = self.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND NOT pid = ANY(%s)",
            [self.name, list(keep_pids)],
        ).fetchall()
        self.terminated += len(rows)
        return len(rows)

    def refuse(self, refuse=True):
        from psycopg import sql

        self.conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(self.name), sql.SQL("false" if refuse else "true")
            )
        )

    def close(self):
        try:
            self.refuse(False)
        finally:
            self.conn.close()
