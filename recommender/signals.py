"""Signals the app sends; ``RecommenderConfig.ready`` connects the app's receivers."""

from django.dispatch import Signal

# Sent after a shopper's events changed (new events stored, anonymous events attached to
# the user at login): kwargs ``user``, ``session_key``.
events_recorded = Signal()
