"""The one way out for recommendations (being built: see issue 4)."""

from django.core.cache import caches

from .conf import recommender_settings


def _cache():
    return caches[recommender_settings.CACHE_ALIAS]


def shopper_cache_key(user=None, session_key=""):
    return f"recommender:gen:{'u%s' % user.pk if user is not None else 's' + session_key}"


def invalidate_shopper(user=None, session_key=""):
    """Forget every cached recommendation of this shopper (new event, privacy request)."""
    _cache().delete(shopper_cache_key(user, session_key))
