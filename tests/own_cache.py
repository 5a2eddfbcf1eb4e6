"""A test's cache on a Redis database of its own, for tests that watch keys come and go.

The suite's autouse fixture empties the test cache with FLUSHDB, which also empties the
cache of every other test process using the same Redis database at that moment (other
checkouts on the same machine). Tests that count throttle hits or look for cached keys
use this instead: another database, a key prefix of this process, and cleaning by prefix.
"""

import os
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.test import override_settings

OWN_DB = 11


@contextmanager
def own_cache():
    if not settings.SERVICES["redis"]:  # local memory: already private to this process
        yield caches["default"]
        return
    location = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{OWN_DB}"
    default = {
        **settings.CACHES["default"],
        "LOCATION": location,
        "KEY_PREFIX": f"own{os.getpid()}",
    }
    with override_settings(CACHES={**settings.CACHES, "default": default}):
        cache = caches["default"]
        assert isinstance(cache, RedisCache)
        _empty(cache)
        try:
            yield cache
        finally:
            _empty(cache)


def _empty(cache):
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=cache.make_key("*"), count=1000))
    if keys:
        client.delete(*keys)
