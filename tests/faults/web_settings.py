"""Settings of a gunicorn started by a fault test: production-like database connections.

The test settings with persistent connections (CONN_MAX_AGE=60, no health checks, as
the demo store runs on PostgreSQL), DEBUG off, a per-process memory cache (the database
is what this server's tests break) and no events throttle (the retrying client is fast).
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, RECOMMENDER

DEBUG = False
DATABASES["default"]["CONN_MAX_AGE"] = 60
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
RECOMMENDER = {**RECOMMENDER, "EVENTS_THROTTLE_RATE": None, "API_THROTTLE_RATE": None}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
