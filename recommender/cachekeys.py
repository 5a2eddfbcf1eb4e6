"""Every cache key the app writes, built in one place, and the keys a forgotten shopper leaves.

Serving reads and writes these keys and privacy forgets them, so both build them here
and cannot drift apart. Every key that may hold a shopper's data can be listed from what
is known about the shopper, so forgetting is one ``delete_many`` of known keys, on any
cache backend, without listing or scanning the backend's keys.

- ``generation``: a random stamp per shopper. Their lists count only while it is
  unchanged, so deleting it (a new event) invalidates all of them in one delete.
- ``shopper_list``: one of ``SHOPPER_SLOTS`` slots per shopper, chosen by the list's
  ``fingerprint`` (placement, category, exclusions). The entry keeps its fingerprint and
  model version, so a slot holding another list (or an older version's) is a miss, and a
  shopper never has more than ``SHOPPER_SLOTS`` lists cached.
- ``item_list``: an item's similar or bought-together candidates; ``list_row``: the
  Recommendation row of a cached list per placement; ``popular``: the store-wide lists.
- ``assignment``: a shopper's arm in an experiment. While an experiment runs, the lists
  served from an arm carry it: item lists and rows have the arm in their key, and a
  shopper's list is fingerprinted with the experiment and stamped with its arm, so two
  arms never share a list and a stopped experiment's lists are never read again.
"""

import hashlib

PREFIX = "recommender"
# Lists cached per shopper at most (one per slot; a colliding list replaces the other).
SHOPPER_SLOTS = 16


def fingerprint(*parts):
    """Client-chosen text (placement, category) hashed: safe for every cache backend."""
    return hashlib.sha1(repr(parts).encode(), usedforsecurity=False).hexdigest()[:16]


def _shopper(user, session_key):
    return f"u{user.pk}" if user is not None else f"s{session_key}"


def generation(user=None, session_key=""):
    """The shopper's generation key: deleting it invalidates all their cached lists."""
    return f"{PREFIX}:gen:{_shopper(user, session_key)}"


def shopper_list(user=None, session_key="", list_fingerprint=""):
    """The slot a shopper's list with ``list_fingerprint`` is cached in."""
    slot = int(list_fingerprint, 16) % SHOPPER_SLOTS if list_fingerprint else 0
    return f"{PREFIX}:recs:{_shopper(user, session_key)}:{slot}"


def shopper_keys(user=None, session_key="", experiment_ids=()):
    """Every key that may hold the shopper's data: their generation, all their slots, and
    their arm in each of ``experiment_ids`` (the experiments they have an assignment in)."""
    shopper = _shopper(user, session_key)
    return (
        [generation(user, session_key)]
        + [f"{PREFIX}:recs:{shopper}:{slot}" for slot in range(SHOPPER_SLOTS)]
        + [assignment(pk, user, session_key) for pk in experiment_ids]
    )


def assignment(experiment_id, user=None, session_key=""):
    """The shopper's arm in an experiment (a user's, else the anonymous key's)."""
    return f"{PREFIX}:arm:{experiment_id}:{_shopper(user, session_key)}"


def item_list(source, pk, arm_id=None):
    """An item's cached candidates of ``source`` (similar, bought_together), per arm."""
    return f"{PREFIX}:{source}:{pk}" + (f":arm{arm_id}" if arm_id is not None else "")


def popular(window):
    """The store's popular or trending candidates."""
    return f"{PREFIX}:popular:{window}"


def list_row(list_key, placement, arm_id=None):
    """The Recommendation row made for the cached list ``list_key`` shown in ``placement``
    (to shoppers of arm ``arm_id``: the row carries the arm)."""
    return f"{list_key}:row:{fingerprint(placement)}" + (
        f":arm{arm_id}" if arm_id is not None else ""
    )


def item_keys(source, pk, placements, arm_ids=()):
    """Every key of an item's ``source`` list: its candidates and its rows in ``placements``,
    outside experiments and in each of ``arm_ids``."""
    keys = []
    for arm_id in (None, *arm_ids):
        key = item_list(source, pk, arm_id)
        keys += [key] + [list_row(key, placement, arm_id) for placement in placements]
    return keys
