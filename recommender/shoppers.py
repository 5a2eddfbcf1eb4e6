"""Who a request's shopper is: a user, or an anonymous key kept in the session.

Django rotates the session key at login, so the app keeps its own anonymous key inside
the session data (which login preserves). At login, that key's events become the user's.
"""

import secrets

from .models import Event

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

    Events are moved, not copied, so logging in twice never duplicates them.
    """
    key = anonymous_key(request, create=False) if request is not None else ""
    if key and Event.objects.filter(session_key=key, user__isnull=True).update(user=user):
        from .serving import invalidate_shopper

        invalidate_shopper(user=user)
