"""Throttles for the public endpoints, with rates from RECOMMENDER settings.

A fixed-window counter: one cache increment per request (DRF's SimpleRateThrottle reads
and rewrites a list of timestamps, two round trips and a pickle on every request). With
``ResilientRedisCache`` the increment and its expiry are one pipelined round trip.
"""

import time

from django.core.cache import caches
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from ..conf import recommender_settings
from ..shoppers import anonymous_key


class ShopperRateThrottle(BaseThrottle):
    """Limits each shopper (user, else anonymous session, else IP address)."""

    rate_setting = "API_THROTTLE_RATE"
    scope = "recommender"

    def allow_request(self, request, view):
        rate = getattr(recommender_settings, self.rate_setting)
        if rate is None:
            return True
        self.limit, self.window = SimpleRateThrottle.parse_rate(None, rate)
        now = time.time()
        window_index = int(now // self.window)
        self.window_ends = (window_index + 1) * self.window
        key = f"throttle:{self.scope}:{self.ident(request)}:{window_index}"
        cache = caches[recommender_settings.CACHE_ALIAS]
        if hasattr(cache, "incr_with_expiry"):  # ResilientRedisCache: one round trip
            count = cache.incr_with_expiry(key, self.window + 1)
            return count is None or count <= self.limit
        try:
            count = cache.incr(key)
        except ValueError:  # first request of this window
            if cache.add(key, 1, self.window + 1):
                count = 1
            else:
                count = cache.incr(key)
        return count <= self.limit

    def wait(self):
        return max(0.0, self.window_ends - time.time())

    def ident(self, request):
        """The user, else the anonymous key the session already holds, else the address.

        Never a key minted for this request: a client that drops its cookies would get a new
        key, and a new allowance, on every request.
        """
        if request.user and request.user.is_authenticated:
            return f"u{request.user.pk}"
        return anonymous_key(request, create=False) or self.get_ident(request)

    def get_ident(self, request):
        """The client address; X-Forwarded-For only when NUM_PROXIES says how many to trust.

        DRF's default (NUM_PROXIES None) takes X-Forwarded-For as sent, so a client could name
        a new address on every request and never be throttled.
        """
        if api_settings.NUM_PROXIES is None:
            return request.META.get("REMOTE_ADDR") or ""
        return super().get_ident(request)


class EventsRateThrottle(ShopperRateThrottle):
    rate_setting = "EVENTS_THROTTLE_RATE"
    scope = "recommender_events"
