"""Shopper pseudonyms: stable ids that do not say who a shopper is without the key.

One key, ``RECOMMENDER["PSEUDONYM_KEY"]`` (else a salted HMAC of SECRET_KEY), and one
function per use, salted apart so that two uses can never be joined: the shopper column
of the training export, and the owner of a personal recommendation list.
"""

import hashlib
import hmac

from django.conf import settings

from .conf import recommender_settings


def key():
    """The HMAC key: RECOMMENDER["PSEUDONYM_KEY"], else one derived from SECRET_KEY.

    Never SECRET_KEY itself: whoever knows the key can re-compute every registered
    shopper's pseudonym from user ids 1, 2, 3..., so a store whose SECRET_KEY is weak or
    public (a demo default) must not hand it out this way. The derived key is a salted
    HMAC of SECRET_KEY (secret when SECRET_KEY is); ``check --deploy`` asks for a key of
    its own (recommender.W002).
    """
    configured = recommender_settings.PSEUDONYM_KEY
    if configured:
        return configured.encode() if isinstance(configured, str) else bytes(configured)
    return hmac.new(
        settings.SECRET_KEY.encode(), b"recommender.shopper_pseudonym", hashlib.sha256
    ).digest()


def _hmac(purpose, identity, length):
    return hmac.new(key(), f"{purpose}:{identity}".encode(), hashlib.sha256).hexdigest()[:length]


def export_shopper(user_id=None, session_key=""):
    """The shopper of an exported or trained-on event: a user id or an anonymous key."""
    identity = f"u{user_id}" if user_id is not None else f"s{session_key}"
    return _hmac("export", identity, 20)


def list_owner(*, user=None, session_key=""):
    """The owner of a personal recommendation list ("" for no shopper).

    A click is credited to a personal list only by the shopper it was shown to, and the
    list does not name them.
    """
    if user is not None and getattr(user, "is_authenticated", False):
        identity = f"user:{user.pk}"
    elif session_key:
        identity = f"session:{session_key}"
    else:
        return ""
    return _hmac("list-owner", identity, 32)
