"""A Redis cache that a Redis outage cannot take the site down with.

Django's ``RedisCache`` raises on every call while Redis is unreachable. The store uses
the cache for sessions (``cached_db``), API throttles and recommendations, so one dead
Redis would turn every page and every tracker batch into a 500. ``ResilientRedisCache``
is a drop-in replacement::

    CACHES = {"default": {
        "BACKEND": "recommender.cache.ResilientRedisCache",
        "LOCATION": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"RETRY_SECONDS": 5},      # optional, see below
    }}

While Redis is unreachable the cache behaves like an empty cache that forgets every
write at once, which is something any cache may do, so callers need no special code:

- ``get`` returns the default, ``get_many`` ``{}``, ``has_key``/``touch``/``delete`` False;
- ``set``/``set_many``/``delete_many``/``clear`` do nothing (``set_many`` reports every key
  as not stored); ``add`` returns True (stored, then evicted);
- ``incr``/``decr`` raise ``ValueError`` as for a missing key (so a fixed-window throttle
  starts a new window and lets the request through: throttling fails open).

The rest of the app then answers from the database or the process: ``cached_db`` sessions
read the session table, recommendations are computed from the shopper's events, throttles
let requests through.

**Circuit breaker.** The first failure is logged once, as a warning, and the cache stops
calling Redis for ``RETRY_SECONDS`` (default 5), so requests do not each pay a connect or
read timeout; then one call probes Redis again (the other threads still skip it) and, if
it answers, caching resumes by itself and the recovery is logged. The breaker is shared
by all threads of a process for the same servers (Django makes one cache object per
thread). Unless the store's ``OPTIONS`` say otherwise, connecting times out after 0.5 s
and a command after 1 s, so a hung (not refused) Redis costs at most that once per period.

**Invalidations are not lost.** A ``delete`` that could not reach Redis is remembered
(up to ``MAX_PENDING_DELETES`` keys per process, default 10,000) and replayed when Redis
answers again, so an entry that was meant to be dropped during the outage (a shopper's
recommendations after a new event) is not served stale from a Redis that kept its data.
Writes (``set``) are not replayed: a lost write is only a later miss.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

import redis.exceptions
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

logger = logging.getLogger(__name__)

# Errors that mean "Redis cannot answer now" (down, restarting, loading, hung, failing
# over), as opposed to a bug in the call. They open the breaker.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # refused, reset, closed; BusyLoadingError too
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica during failover
    redis.exceptions.OutOfMemoryError,  # maxmemory with noeviction
    OSError,
)
DEFAULT_RETRY_SECONDS = 5.0
DEFAULT_MAX_PENDING_DELETES = 10_000
DEFAULT_SOCKET_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 1.0}


@dataclass
class _Breaker:
    """Per process and servers: whether Redis is skipped, and the deletes it missed."""

    retry_seconds: float
    max_pending: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    open_until: float | None = None  # None: closed (Redis is called)
    opened_at: float = 0.0
    failures: int = 0
    pending_deletes: set = field(default_factory=set)
    dropped_deletes: int = 0

    def allows_call(self):
        """Closed: yes. Open: no, except one probe per RETRY_SECONDS."""
        if self.open_until is None:
            return True
        now = time.monotonic()
        with self.lock:
            if self.open_until is None:
                return True
            if now < self.open_until:
                return False
            self.open_until = now + self.retry_seconds  # this caller probes; others skip
            return True


_breakers = {}
_breakers_lock = threading.Lock()


def _breaker_for(servers, retry_seconds, max_pending):
    key = (tuple(servers), retry_seconds, max_pending)
    with _breakers_lock:
        breaker = _breakers.get(key)
        if breaker is None:
            breaker = _breakers[key] = _Breaker(retry_seconds, max_pending)
        return breaker


class _ReusedClientRedisCacheClient(RedisCacheClient):
    """Keeps one ``redis.Redis`` per connection pool instead of building one per call.

    Django's client builds a new ``redis.Redis`` for every cache call; with redis-py 8 that
    costs about as much CPU as the round trip itself (it fills its table of response
    callbacks each time). The object is thread-safe and Django already keeps one
    cache object per thread, so reusing it changes nothing else.
    """

    def __init__(self, servers, **options):
        super().__init__(servers, **options)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class ResilientRedisCache(RedisCache):
    """``RedisCache`` that degrades to an always-empty cache while Redis is down."""

    def __init__(self, server, params):
        params = dict(params)
        options = dict(params.get("OPTIONS") or {})
        retry_seconds = float(options.pop("RETRY_SECONDS", DEFAULT_RETRY_SECONDS))
        max_pending = int(options.pop("MAX_PENDING_DELETES", DEFAULT_MAX_PENDING_DELETES))
        for name, value in DEFAULT_SOCKET_OPTIONS.items():
            options.setdefault(name, value)
        params["OPTIONS"] = options
        super().__init__(server, params)
        self._class = _ReusedClientRedisCacheClient
        self._breaker = _breaker_for(self._servers, retry_seconds, max_pending)

    # ------------------------------------------------------------------ state

    @property
    def available(self):
        """False while the breaker is open (Redis failed and is not being called)."""
        return self._breaker.open_until is None

    def _call(self, operation, fallback, *args):
        breaker = self._breaker
        if not breaker.allows_call():
            return fallback
        started = time.monotonic()
        try:
            result = operation(*args)
        except UNAVAILABLE as exc:
            self._failed(exc)
            return fallback
        except Exception:  # Redis answered (e.g. incr of a missing key): it is back
            self._maybe_recovered(started)
            raise
        self._maybe_recovered(started)
        return result

    def _maybe_recovered(self, started):
        # Only a call made after the breaker opened proves Redis is back (not one that was
        # already under way when another thread saw it fail).
        if self._breaker.open_until is not None and started > self._breaker.opened_at:
            self._recovered()

    def _failed(self, exc):
        breaker = self._breaker
        with breaker.lock:
            breaker.failures += 1
            first = breaker.opened_at == 0.0
            if first:
                breaker.opened_at = time.monotonic()
            breaker.open_until = time.monotonic() + breaker.retry_seconds
        if first:
            logger.warning(
                "Cache %s is unreachable (%s: %s); serving without it and retrying every %g s.",
                ",".join(self._servers),
                type(exc).__name__,
                exc,
                breaker.retry_seconds,
            )
        else:
            logger.debug("Cache %s still unreachable: %s", ",".join(self._servers), exc)

    def _recovered(self):
        breaker = self._breaker
        with breaker.lock:
            if breaker.open_until is None:
                return
            breaker.open_until = None
            outage = time.monotonic() - breaker.opened_at
            failures, breaker.failures, breaker.opened_at = breaker.failures, 0, 0.0
            pending, breaker.pending_deletes = breaker.pending_deletes, set()
            dropped, breaker.dropped_deletes = breaker.dropped_deletes, 0
        replayed = 0
        if pending:
            try:
                self._cache.delete_many(list(pending))
                replayed = len(pending)
            except UNAVAILABLE as exc:  # down again at once: keep them for next time
                self._remember_deletes(pending)
                self._failed(exc)
        logger.warning(
            "Cache %s is reachable again after %.1f s (%d failed calls); %d missed invalidation(s) replayed%s.",
            ",".join(self._servers),
            outage,
            failures,
            replayed,
            f", {dropped} lost (over MAX_PENDING_DELETES)" if dropped else "",
        )

    def _remember_deletes(self, raw_keys):
        breaker = self._breaker
        with breaker.lock:
            room = breaker.max_pending - len(breaker.pending_deletes)
            keys = list(raw_keys)
            breaker.pending_deletes.update(keys[: max(room, 0)])
            breaker.dropped_deletes += max(len(keys) - max(room, 0), 0)

    # ------------------------------------------------------------------ cache API

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._call(self._cache.add, True, key, value, self.get_backend_timeout(timeout))

    def get(self, key, default=None, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._call(self._cache.get, default, key, default)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        self._call(self._cache.set, None, key, value, self.get_backend_timeout(timeout))

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._call(self._cache.touch, False, key, self.get_backend_timeout(timeout))

    def delete(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        missed = object()
        result = self._call(self._cache.delete, missed, key)
        if result is missed:
            self._remember_deletes([key])
            return False
        return result

    def get_many(self, keys, version=None):
        key_map = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self._call(self._cache.get_many, {}, key_map.keys())
        return {key_map[k]: v for k, v in found.items()}

    def has_key(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._call(self._cache.has_key, False, key)

    def incr(self, key, delta=1, version=None):
        raw = self.make_and_validate_key(key, version=version)
        missed = object()
        result = self._call(self._cache.incr, missed, raw, delta)
        if result is missed:
            raise ValueError(f"Key '{key}' not found (the cache is unreachable).")
        return result

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        if not data:
            return []
        safe_data = {
            self.make_and_validate_key(key, version=version): value for key, value in data.items()
        }
        missed = object()
        result = self._call(
            self._cache.set_many, missed, safe_data, self.get_backend_timeout(timeout)
        )
        return list(data) if result is missed else []

    def delete_many(self, keys, version=None):
        if not keys:
            return
        safe_keys = [self.make_and_validate_key(key, version=version) for key in keys]
        missed = object()
        if self._call(self._cache.delete_many, missed, safe_keys) is missed:
            self._remember_deletes(safe_keys)

    def clear(self):
        return self._call(self._cache.clear, False)

    def incr_with_expiry(self, key, timeout, version=None):
        """Add one to a counter that expires ``timeout`` seconds after its last hit.

        One round trip (INCR and EXPIRE pipelined) instead of the three that
        ``add`` + ``incr`` may take (Django's ``incr`` checks EXISTS first): the API
        throttles call this on every request. Returns the new count, or None while Redis
        is unavailable (throttles then let the request through).
        """
        raw = self.make_and_validate_key(key, version=version)

        def count():
            pipe = self._cache.get_client(raw, write=True).pipeline(transaction=False)
            pipe.incr(raw)
            pipe.expire(raw, int(timeout))
            return pipe.execute()[0]

        return self._call(count, None)
