"""Real processes of the fault tests: a Celery worker to SIGKILL, a gunicorn to serve through faults."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

from .services import free_port


def _test_env(**extra):
    return {
        **os.environ,
        "RECOMMENDER_TEST_DB_NAME": connection.settings_dict["NAME"],
        "RECOMMENDER_TEST_VAR_DIR": str(settings.VAR_DIR),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(settings.BASE_DIR), os.environ.get("PYTHONPATH")])
        ),
        **extra,
    }


class Worker:
    """``celery worker --pool solo`` on the test database and a private broker; its log in a file."""

    def __init__(self, broker_url, queues, recommender=None):
        self.log = tempfile.NamedTemporaryFile(prefix="fault-worker-", suffix=".log", delete=False)
        env = _test_env(
            DJANGO_SETTINGS_MODULE="tests.faults.worker_settings",
            FAULTS_BROKER_URL=broker_url,
            FAULTS_RECOMMENDER=json.dumps(recommender or {}),
        )
        self.process = subprocess.Popen(
            [
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
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--hostname",
                f"faults-{os.getpid()}-{time.monotonic_ns()}@localhost",
            ],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self):
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.output():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"the worker was not ready in {timeout} s:\n{self.output()}")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class Gunicorn:
    """gunicorn serving the demo store from the test database (persistent connections)."""

    def __init__(self, workers=2, settings_module="tests.faults.web_settings", args=(), **env):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(
            prefix="fault-gunicorn-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "shop_demo.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--log-level",
                "warning",
                "--timeout",
                "30",
                "--graceful-timeout",
                "5",
                *args,  # e.g. the demo's config file; later options override earlier ones
            ],
            env=_test_env(DJANGO_SETTINGS_MODULE=settings_module, **env),
            cwd=settings.BASE_DIR,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers = workers

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def output(self):
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, path="/", timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gunicorn was not ready in {timeout} s:\n{self.output()}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
