"""The demo store's settings, made production-like for benchmarks.

Environment: DATABASE_URL and REDIS_URL as for the demo store, plus
BENCH_EVENTS_THROTTLE_RATE ("none" disables the events throttle; any DRF rate such as
"1000000/min" keeps the throttle and its cache round trips but never cuts the benchmark),
BENCH_API_THROTTLE_RATE (the same for the read endpoints; default "none"), and
BENCH_MODEL_TIMING=1 (time in the model and the service per request, in response headers:
see timing.py) and BENCH_ANN_MIN_ITEMS (the store's ANN_MIN_ITEMS, so that a small catalogue
is served from the IVF index in the serving benchmark's smoke run).
"""

import os

from shop_demo.settings import *  # noqa: F403
from shop_demo.settings import RECOMMENDER, REDIS_URL

DEBUG = False
ROOT_URLCONF = "benchmarks.bench_site.urls"

_rate = os.environ.get("BENCH_EVENTS_THROTTLE_RATE", "1000000/min")
_api_rate = os.environ.get("BENCH_API_THROTTLE_RATE", "none")
RECOMMENDER = {
    **RECOMMENDER,
    "EVENTS_THROTTLE_RATE": None if _rate.lower() == "none" else _rate,
    "API_THROTTLE_RATE": None if _api_rate.lower() == "none" else _api_rate,
}
if os.environ.get("BENCH_ANN_MIN_ITEMS"):
    RECOMMENDER["ANN_MIN_ITEMS"] = int(os.environ["BENCH_ANN_MIN_ITEMS"])

if os.environ.get("BENCH_MODEL_TIMING") == "1":
    MIDDLEWARE = ["benchmarks.bench_site.timing.ModelTimingMiddleware", *MIDDLEWARE]  # noqa: F405

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "recommender.cache.ResilientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "recommender-bench",
        }
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
