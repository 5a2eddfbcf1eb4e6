"""Who a request's shopper is: a user, or an anonymous key kept in the session.

Django rotates the session key at login, so the app keeps its own anonymous key inside
the session data (which login preserves). At login, that key's events, and its arms in
experiments, become the user's.
"""

import secrets

from django.db import router, transaction

from .experiments import carry_over_assignments
from .models import Event
from .signals import events_recorded

SESSION_FIELD = "recommender_shopper"


def anonymous_key(request, create=True):
    """The anonymous shopper key stored in ``request.session`` (made on first use)."""
    session = getattr(request, "session", None)
    if session is None:
        return ""
    key = session.get(SESSION_FIELD, "")
    if not key and create:
        key = secrets.token_hex(16)
        session[SESSION_FIELD] = key
    return key


def shopper_of(request, create=True):
    """``{"user": ..., "session_key": ...}`` for ``record``/``record_many`` and queries."""
    user = getattr(request, "user", None)
    if user is not None and not user.is_authenticated:
        user = None
    return {"user": user, "session_key": anonymous_key(request, create=create)}


def attach_session_events(sender, request, user, **kwargs):
    """``user_logged_in`` receiver: the anonymous session's events become the user's.

    Events are moved, not copied, so logging in twice never duplicates them. Event ids
    are unique per shopper: an anonymous event whose id the user already has (the same
    event, sent again around the login) is that duplicate, and is dropped.

    The session's experiment assignments move too, so the shopper keeps seeing the arm
    they saw before logging in, unless the user already has an arm in that experiment
    (from another device): theirs wins (``experiments.carry_over_assignments``).
    """
    key = anonymous_key(request, create=False) if request is not None else ""
    if not key:
        return
    anonymous = Event.objects.filter(session_key=key, user__isnull=True)
    with transaction.atomic(using=router.db_for_write(Event)):
        already = Event.objects.filter(user=user).values("event_id")
        anonymous.filter(event_id__in=already).delete()
        moved = anonymous.update(user=user)
    carry_over_assignments(user, key)
    if moved:
        events_recorded.send(sender=Event, user=user, session_key="")
