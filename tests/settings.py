"""Test settings: the demo store, against the real PostgreSQL and Redis when reachable.

Configured by environment variables with the local defaults:
  TEST_POSTGRES_URL  postgres://postgres@127.0.0.1:5432/test  (pytest-django creates test_test)
  TEST_REDIS_URL     redis://127.0.0.1:6379/15
Where a service is unreachable the suite falls back to SQLite / local memory and skips the
tests marked ``postgres`` / ``redis``; with RECOMMENDER_REQUIRE_SERVICES=1 (as in CI) an
unreachable service fails the run instead.
"""

import json
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from shop_demo.settings import *  # noqa: F403
from shop_demo.settings import database_from_url

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def reachable(url, default_port):
    parts = urlparse(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


SERVICES = {
    "postgres": reachable(POSTGRES_URL, 5432),
    "redis": reachable(REDIS_URL, 6379),
}

if SERVICES["postgres"]:
    DATABASES = {"default": database_from_url(POSTGRES_URL)}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # One test database per run, so that runs side by side do not drop each other's.
    DATABASES["default"]["TEST"] = {"NAME": f"test_recommender_{os.getpid()}"}
    # A Celery worker started by the tests points here at pytest-django's test database.
    if os.environ.get("RECOMMENDER_TEST_DB_NAME"):
        DATABASES["default"]["NAME"] = os.environ["RECOMMENDER_TEST_DB_NAME"]
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

if SERVICES["redis"]:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"test{os.getpid()}",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

VAR_DIR = Path(
    os.environ.get("RECOMMENDER_TEST_VAR_DIR") or tempfile.mkdtemp(prefix="recommender-tests-")
)
MEDIA_ROOT = VAR_DIR / "media"
STATIC_ROOT = VAR_DIR / "static"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/14" if SERVICES["redis"] else "memory://"
LOGGING = {"version": 1, "disable_existing_loggers": False}

# A Celery worker started by a test may be handed RECOMMENDER settings of its own (JSON,
# merged over the demo's), e.g. small and fast training for a version the admin queues.
if os.environ.get("RECOMMENDER_TEST_SETTINGS"):
    RECOMMENDER = {**RECOMMENDER, **json.loads(os.environ["RECOMMENDER_TEST_SETTINGS"])}  # noqa: F405
