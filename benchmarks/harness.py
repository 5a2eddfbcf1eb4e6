"""What the benchmarks and the fault tests share to run the store for real.

Processes (gunicorn, a Celery worker, any server) each in its own process group with its
output in a log file, always stopped; a pool of spawned load-client processes; CPU time of
process groups read from /proc; the benchmark database; and the few lines every report
starts with (commit, load average). The fault tests (tests/faults/processes.py) import the
process classes from here, so there is one way to start and stop the store's processes.

Nothing here imports Django at module level: callers set up Django (or not) first.
"""

import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Service:
    """A subprocess in its own process group, its output in a log file, always stopped.

    With ``log_dir`` the log is kept there as ``<name>.log``; otherwise it is a temporary
    file removed by ``stop()``.
    """

    def __init__(self, name, command, env, cwd=ROOT, log_dir=None):
        self.name, self.command = name, list(command)
        if log_dir is None:
            self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
            self.log_path, self.keep_log = Path(self.log.name), False
        else:
            self.log_path, self.keep_log = Path(log_dir) / f"{name}.log", True
            self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.poll() is None

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines=30):
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self, doing="starting"):
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode} while {doing}:\n{self.tail()}"
            )

    def kill(self):
        """SIGKILL the whole group: no clean-up, as when a machine loses the process."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self, timeout=15):
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)


def gunicorn_command(port, workers=2, worker_class="sync", threads=1, timeout=60, extra_args=()):
    """The demo store behind gunicorn on 127.0.0.1:``port``, as the benchmarks and tests run it.

    ``extra_args`` come last, so they override the options before them (e.g. ``--config``).
    """
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "shop_demo.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "--timeout",
        str(timeout),
        "--graceful-timeout",
        "5",
    ]
    if worker_class == "gthread":
        cmd += ["--threads", str(threads)]
    return cmd + list(extra_args)


class Gunicorn(Service):
    """gunicorn serving the demo store; ``env`` names the settings module, database and Redis."""

    def __init__(
        self,
        env,
        workers=2,
        worker_class="sync",
        threads=1,
        timeout=60,
        name="gunicorn",
        extra_args=(),
        **kw,
    ):
        self.port, self.workers = free_port(), workers
        command = gunicorn_command(self.port, workers, worker_class, threads, timeout, extra_args)
        super().__init__(name, command, env, **kw)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self):
        return children_of(self.process.pid)

    def wait_ready(self, path="/", timeout=60):
        """Until ``path`` answers 200 and every worker has been forked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    if response.status == 200 and len(self.worker_pids()) >= self.workers:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")


def redis_server_command(binary, port, directory):
    """A private ``redis-server`` on 127.0.0.1:``port`` that persists nothing (its files,
    if any, in ``directory``): the benchmarks' own Redis and the one a fault test kills."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
    ]


def celery_worker_command(queues, loglevel="INFO", extra_args=()):
    """A one-process (``--pool solo``) Celery worker of the demo store on ``queues``, as the
    benchmarks and tests run it; ``extra_args`` come last."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "shop_demo",
        "worker",
        "--pool",
        "solo",
        "--queues",
        ",".join(queues),
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
        *extra_args,
    ]


class CeleryWorker(Service):
    """``celery worker --pool solo`` of the demo store on the given queues."""

    def __init__(self, env, queues, loglevel="INFO", extra_args=(), name="celery", **kw):
        super().__init__(name, celery_worker_command(queues, loglevel, extra_args), env, **kw)

    def wait_ready(self, timeout=60):
        """Until the worker logs that it is ready (needs ``loglevel`` INFO)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.output():
                return self
            self.check_alive()
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready in {timeout} s:\n{self.output()}")


class ClientPool:
    """``concurrency`` spawned load-client processes (``loadclient.client_main``), fed jobs
    over queues, always stopped."""

    def __init__(self, concurrency):
        from benchmarks import loadclient

        ctx = multiprocessing.get_context("spawn")
        self.jobs = [ctx.Queue() for _ in range(concurrency)]
        self.results = ctx.Queue()
        self.progress = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=loadclient.client_main, args=(jobs, self.results, self.progress), daemon=True
            )
            for jobs in self.jobs
        ]
        for proc in self.procs:
            proc.start()

    def run(self, jobs, bar, timeout):
        """One job per client; their results, once all are in (progress counted on ``bar``)."""
        for q, job in zip(self.jobs, jobs, strict=True):
            q.put(job)
        results, deadline = [], time.monotonic() + timeout
        while len(results) < len(jobs):
            if time.monotonic() > deadline:
                raise RuntimeError("load clients did not finish in time")
            self._drain(bar)
            try:
                result = self.results.get(timeout=0.1)
            except queue.Empty:
                if not all(p.is_alive() for p in self.procs):
                    raise RuntimeError("a load client process died") from None
                continue
            if "fatal" in result:
                raise RuntimeError(f"load client failed: {result['fatal']}")
            results.append(result)
        self._drain(bar)
        return results

    def _drain(self, bar):
        while True:
            try:
                bar.update(self.progress.get_nowait())
            except queue.Empty:
                return

    def stop(self):
        for q in self.jobs:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


# ---------------------------------------------------------------- CPU and memory from /proc


def proc_cpu(pids):
    """{pid: CPU seconds (user + system)} of the processes still alive."""
    seconds = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return seconds


def proc_cpu_seconds(pids):
    return sum(proc_cpu(pids).values())


def cpu_delta(before, after):
    """CPU used between two ``proc_cpu`` readings; a process that exited in between is not counted."""
    return sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def postgres_backends(exclude_self=True):
    """PIDs of the server processes serving Django's database (same machine only)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            + (" AND pid <> pg_backend_pid()" if exclude_self else "")
        )
        return [row[0] for row in cursor.fetchall()]


def own_backend_pid():
    from django.db import connection

    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def redis_pids():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "redis-server":
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


# ---------------------------------------------------------------- database and Django


def ensure_database(url):
    """Create the benchmark database when missing (connecting to the server's ``postgres`` db)."""
    import psycopg
    from psycopg import sql

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_django(env):
    """Put ``env`` in this process's environment, set Django up and migrate its database."""
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)


# ---------------------------------------------------------------- reports


def percentile(values, q):
    """The q-th percentile (nearest rank) of the values that are not None; None if there are none."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def git_commit():
    """The short commit of the tree, with a note when it has uncommitted changes."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (commit or "?") + (" (with uncommitted changes)" if dirty else "")


def redact(url):
    parts = urlparse(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return parts.geturl()


# ---------------------------------------------------------------- smoke runs


def smoke_output(name):
    """Where a ``--smoke`` run writes its report by default: never over benchmarks/results."""
    out = Path(tempfile.gettempdir()) / "recommender-bench-smoke"
    out.mkdir(parents=True, exist_ok=True)
    return str(out / f"{name}.md")


def smoke_user_item_file(shoppers=1000, items=300, seed=0):
    """A small ``user item`` file (the Beauty format) for the offline benchmarks' smoke runs:
    shoppers browse within a few item groups, so that the models have something to learn."""
    import random

    name = f"user-item-{shoppers}-{items}-{seed}.txt"
    path = Path(tempfile.gettempdir()) / "recommender-bench-smoke" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        groups = [list(range(g, items, 10)) for g in range(10)]
        lines = []
        for user in range(1, shoppers + 1):
            liked = rng.sample(groups, 2)
            for _ in range(rng.randint(5, 15)):
                lines.append(f"{user} {rng.choice(rng.choice(liked)) + 1}")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
    return str(path)
