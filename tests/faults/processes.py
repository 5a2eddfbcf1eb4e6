"""Real processes of the fault tests: a Celery worker to SIGKILL, a gunicorn to serve through faults.

Both are the benchmarks' process harness (``benchmarks.harness``) pointed at this test run's
database, media directory and settings.
"""

import json
import os
import time

from django.conf import settings
from django.db import connection

from benchmarks import harness


def _test_env(**extra):
    return {
        **os.environ,
        "RECOMMENDER_TEST_DB_NAME": connection.settings_dict["NAME"],
        "RECOMMENDER_TEST_VAR_DIR": str(settings.VAR_DIR),
        **extra,
    }


class Worker(harness.CeleryWorker):
    """``celery worker --pool solo`` on the test database and a private broker; its log in a file."""

    def __init__(self, broker_url, queues, recommender=None):
        env = _test_env(
            DJANGO_SETTINGS_MODULE="tests.faults.worker_settings",
            FAULTS_BROKER_URL=broker_url,
            FAULTS_RECOMMENDER=json.dumps(recommender or {}),
        )
        hostname = f"faults-{os.getpid()}-{time.monotonic_ns()}@localhost"
        super().__init__(
            env,
            queues,
            extra_args=["--without-heartbeat", "--hostname", hostname],
            name="fault-worker",
            cwd=settings.BASE_DIR,
        )


class Gunicorn(harness.Gunicorn):
    """gunicorn serving the demo store from the test database (persistent connections)."""

    def __init__(self, workers=2, settings_module="tests.faults.web_settings", args=(), **env):
        super().__init__(
            _test_env(DJANGO_SETTINGS_MODULE=settings_module, **env),
            workers,
            timeout=30,
            name="fault-gunicorn",
            extra_args=args,
            cwd=settings.BASE_DIR,
        )
