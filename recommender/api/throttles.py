"""Throttles for the public endpoints, with rates from RECOMMENDER settings."""

from rest_framework.throttling import SimpleRateThrottle

from ..conf import recommender_settings
from ..shoppers import anonymous_key


class ShopperRateThrottle(SimpleRateThrottle):
    """Limits each shopper (user, else anonymous session, else IP address)."""

    rate_setting = "API_THROTTLE_RATE"
    scope = "recommender"

    def get_rate(self):
        return getattr(recommender_settings, self.rate_setting)

    def allow_request(self, request, view):
        # The rate is read per request so that settings overrides apply at once.
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = f"u{request.user.pk}"
        else:
            ident = anonymous_key(request) or self.get_ident(request)
        return f"throttle_{self.scope}_{ident}"


class EventsRateThrottle(ShopperRateThrottle):
    rate_setting = "EVENTS_THROTTLE_RATE"
    scope = "recommender_events"
