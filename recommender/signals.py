"""Signals the app sends, and the receivers it connects in ``AppConfig.ready``."""

from django.dispatch import Signal

# Sent after new events were stored for a shopper: kwargs ``user``, ``session_key``.
events_recorded = Signal()


def connect_signals():
    """Connect the app's receivers; called once from ``RecommenderConfig.ready``."""
    from django.contrib.auth.signals import user_logged_in

    from .serving import connect_cache_invalidation
    from .shoppers import attach_session_events

    user_logged_in.connect(attach_session_events, dispatch_uid="recommender.attach_session_events")
    connect_cache_invalidation()
