"""Forgetting a shopper: one piece of logic behind the admin page and the command.

A shopper's data in the app is their events and their cached recommendations. Model
artifacts hold only item ids and weights, and training reads events afresh each run, so
once the events are gone the next trained version knows nothing of the shopper.
"""

from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count

from . import serving
from .models import Event


@dataclass
class ForgetResult:
    events: int = 0
    by_kind: dict = field(default_factory=dict)
    sessions: list = field(default_factory=list)

    def describe(self):
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.by_kind.items()))
        return f"{self.events} event(s)" + (f" ({kinds})" if kinds else "")


def shopper_events(*, user=None, session_key=""):
    """The events that belong to a user, or that carry an anonymous session key.

    A session key identifies a browser, so every event recorded under it goes, including
    ones later attached to a user at login.
    """
    if user is not None:
        return Event.objects.filter(user=user)
    if session_key:
        return Event.objects.filter(session_key=session_key)
    return Event.objects.none()


def preview_forget(*, user=None, session_key=""):
    """What ``forget_shopper`` would delete, without deleting it."""
    events = shopper_events(user=user, session_key=session_key).order_by()
    by_kind = dict(events.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    return ForgetResult(events=sum(by_kind.values()), by_kind=by_kind)


def forget_shopper(*, user=None, session_key=""):
    """Delete a shopper's events and cached recommendations; return what went."""
    if user is None and not session_key:
        raise ValueError("Name a user or a session key to forget.")
    with transaction.atomic():
        events = shopper_events(user=user, session_key=session_key).order_by()
        by_kind = dict(events.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
        sessions = sorted(set(events.exclude(session_key="").values_list("session_key", flat=True)))
        users = set(events.exclude(user__isnull=True).values_list("user", flat=True))
        deleted, _ = events.delete()
    _forget_cached(user, users, sessions)
    return ForgetResult(events=deleted, by_kind=by_kind, sessions=sessions)


def _forget_cached(user, user_ids, sessions):
    if user is not None:
        serving.invalidate_shopper(user=user)
    for other in get_user_model()._default_manager.filter(pk__in=user_ids - ({user.pk} if user else set())):
        serving.invalidate_shopper(user=other)
    for key in sessions:
        serving.invalidate_shopper(session_key=key)

