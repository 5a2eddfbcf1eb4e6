"""A store whose item model is keyed by a UUID or a slug (KEYED_ITEM_MODEL names which).

Like tests/settings.py: the real PostgreSQL when KEYED_DATABASE_URL names one, with a test
database of this process's own (scenario.py creates and drops it), else SQLite in memory.
"""

import os
import tempfile
from urllib.parse import urlparse

SECRET_KEY = "keyed-store-test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "recommender",
    "keyedshop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "keyed_urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


# postgres://user@host:port/name, or unset for SQLite (tests/test_keyed_stores.py passes
# tests/settings.py's TEST_POSTGRES_URL when that PostgreSQL is reachable).
DATABASE_URL = urlparse(os.environ.get("KEYED_DATABASE_URL", ""))
if DATABASE_URL.scheme.startswith("postgres"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DATABASE_URL.path.lstrip("/") or "postgres",
            "USER": DATABASE_URL.username or "postgres",
            "PASSWORD": DATABASE_URL.password or "",
            "HOST": DATABASE_URL.hostname or "127.0.0.1",
            "PORT": DATABASE_URL.port or 5432,
            # scenario.py creates this database and drops it when done.
            "TEST": {"NAME": f"test_keyed_store_{os.getpid()}"},
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
MEDIA_ROOT = os.environ.get("KEYED_VAR_DIR") or tempfile.mkdtemp(prefix="keyed-store-")
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
LOGGING = {"version": 1, "disable_existing_loggers": False}

RECOMMENDER_ITEM_MODEL = os.environ.get("KEYED_ITEM_MODEL", "keyedshop.Gadget")
RECOMMENDER = {
    "ITEM_FILTER": "keyedshop.rules.in_stock",
    "ITEM_CATEGORY_FIELD": "shelf",
    "EVENTS_THROTTLE_RATE": None,
    "API_THROTTLE_RATE": None,
    "VERSION_CHECK_SECONDS": 0,
    # A tiny model trained in seconds.
    "MODEL_CONFIG": {"dim": 16, "tower_hidden": 32, "dropout": 0.1, "emb_dropout": 0.1},
    "TRAINING": {"epochs": 3, "patience": 3, "max_seconds": 10, "batch_size": 64, "lr": 0.01},
    "CLEANING": {"min_item_count": 1, "min_shopper_count": 2},
    "HOLDOUT_DAYS": 4,
    "MIN_TRAINING_EVENTS": 100,
    # A tiny store: let its few validation shoppers choose between the model and the baselines.
    "MIN_VALIDATION_SHOPPERS": 10,
    # Serve from the approximate nearest-neighbour index too (built when training).
    "ANN_MIN_ITEMS": 10,
}
