"""Settings of the demo store.

With no environment variables it runs on nothing but Python: SQLite, a file cache and
Celery over a filesystem broker, so ``make demo`` works on a bare machine. Production-like
runs (CI, benchmarks) set DATABASE_URL and REDIS_URL:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/shop  REDIS_URL=redis://127.0.0.1:6379/0
"""

import os
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SHOP_VAR_DIR", BASE_DIR / "var"))


def persisted_secret_key(path):
    """A random key made once and kept in ``path`` (owner-only), never a value in the source.

    A public SECRET_KEY lets anyone forge sessions and re-compute shopper pseudonyms; the
    demo makes its own key on first start instead, so a checkout has nothing to change.
    """
    path = Path(path)
    if not path.exists():
        import secrets
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=".secret-key-")  # 0600
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
        try:
            os.link(draft, path)  # atomic; processes starting together keep the first key
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or persisted_secret_key(VAR_DIR / "secret-key")
# Off unless asked for (DJANGO_DEBUG=1): debug pages show settings, SQL and code to anyone.
# `manage.py rundemo` serves the static files itself (runserver --insecure).
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get(
    "DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver"
).split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "recommender",
    "shop_demo.catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_demo.urls"
WSGI_APPLICATION = "shop_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "shop_demo.catalog.context_processors.shop",
            ],
        },
    },
]


def database_from_url(url):
    """A DATABASES entry from ``sqlite:///path`` or ``postgres://user:pw@host:port/name``."""
    parts = urlparse(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path[1:] or ":memory:"}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/") or "postgres",
            "USER": parts.username or "postgres",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
            # Persistent connections; a connection broken by a database restart fails one
            # request and is replaced (clients retry: events carry idempotent ids).
            "CONN_MAX_AGE": 60,
        }
    raise ValueError(f"Unsupported DATABASE_URL scheme {parts.scheme!r}")


DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'demo.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web, worker and beat share the file: wait for locks instead of failing at once.
    # IMMEDIATE: a transaction takes the write lock when it begins, so it waits for it;
    # one that read first and then wrote would fail at once with "database is locked"
    # whenever another request was writing (concurrent shoppers carting and buying).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # A Redis outage degrades to "no cache" (sessions from the database, recommendations
    # computed, throttles open) instead of 500s; caching resumes by itself.
    CACHES = {
        "default": {"BACKEND": "recommender.cache.ResilientRedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# Sessions are read on every page; the cache keeps that off the database.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "catalog:home"
LOGOUT_REDIRECT_URL = "catalog:home"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    # A database that cannot answer (restart, failover) is a 503 + Retry-After, not a 500.
    "EXCEPTION_HANDLER": "recommender.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "recommender API",
    "VERSION": "0.1.0",
    # Swagger UI from the installed sidecar package: the docs work offline, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# The recommender: the store's item model and its business rules.
RECOMMENDER_ITEM_MODEL = "catalog.Product"
RECOMMENDER = {
    "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
    "RECORDABLE_ITEMS": "shop_demo.catalog.rules.active_products",
    "ITEM_CATEGORY_FIELD": "category_id",
    "ITEM_SERIALIZER": "shop_demo.catalog.rules.product_as_json",
    "PLACEMENTS": {"cart": {"exclude_purchased": False}, "home": {"diversity": 3}},
    # Unset here, the pseudonyms are keyed from the (random, persisted) SECRET_KEY; a
    # store sets a secret of its own (check --deploy warns otherwise).
    "PSEUDONYM_KEY": os.environ.get("RECOMMENDER_PSEUDONYM_KEY") or None,
}

# Celery: Redis when REDIS_URL is set, otherwise a broker in local folders.
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER", "0") == "1"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
# Every recommender task (training, the stale-run sweeper) on the queue its worker consumes.
CELERY_TASK_ROUTES = {"recommender.*": {"queue": "recommender-training"}}

# Everything to stderr: the recommender's log, and the traceback of every request that
# ended in a 500 (Django only prints those with DEBUG on, or mails them to ADMINS).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "recommender": {
            "handlers": ["console"],
            "level": os.environ.get("RECOMMENDER_LOG_LEVEL", "INFO"),
        },
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
