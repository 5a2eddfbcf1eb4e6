"""Forgetting a shopper: one piece of logic behind the admin page and the command.

A shopper's data in the app is their events, their experiment assignments (which arm
they were served from), and what is cached from them: their recommendation lists, their
cached arms, and the bought-together lists of the items they bought (outside experiments
and per arm), which may show their purchases to anyone until they expire. ``cachekeys`` lists every key these
may sit under, so they are deleted by name on any cache backend.
Model artifacts hold only item ids and weights, and training reads events afresh each run,
so once the events are gone the next trained version knows nothing of the shopper.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from . import cachekeys, experiments, serving
from .conf import recommender_settings
from .models import Arm, Event, Experiment, Recommendation
from .pseudonyms import list_owner

# The owner of a forgotten shopper's lists: not a pseudonym (those are hex), never shared ("").
FORGOTTEN_OWNER = "forgotten"


@dataclass
class ForgetResult:
    events: int = 0
    by_kind: dict = field(default_factory=dict)
    sessions: list = field(default_factory=list)
    assignments: int = 0

    def describe(self):
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.by_kind.items()))
        described = f"{self.events} event(s)" + (f" ({kinds})" if kinds else "")
        if self.assignments:
            described += f" and {self.assignments} experiment assignment(s)"
        return described


def shopper_events(*, user=None, session_key=""):
    """The events that belong to a user, or that carry an anonymous session key.

    A session key identifies a browser, so every event recorded under it goes, including
    ones later attached to a user at login. A user's own anonymous keys (those their events
    carry) go with them: an event recorded anonymously under such a key while the user was
    logging in is theirs too, though login did not attach it.
    """
    if user is not None:
        their_keys = Event.objects.filter(user=user).exclude(session_key="").values("session_key")
        return Event.objects.filter(Q(user=user) | Q(user__isnull=True, session_key__in=their_keys))
    if session_key:
        return Event.objects.filter(session_key=session_key)
    return Event.objects.none()


def preview_forget(*, user=None, session_key=""):
    """What ``forget_shopper`` would delete, without deleting it."""
    events = shopper_events(user=user, session_key=session_key).order_by()
    by_kind = dict(events.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    sessions = set(events.exclude(session_key="").values_list("session_key", flat=True))
    assignments = experiments.shopper_assignments(user, sessions | {session_key} - {""})
    return ForgetResult(
        events=sum(by_kind.values()), by_kind=by_kind, assignments=assignments.count()
    )


def forget_shopper(*, user=None, session_key=""):
    """Delete a shopper's events and cached recommendations; return what went."""
    if user is None and not session_key:
        raise ValueError("Name a user or a session key to forget.")
    with transaction.atomic():
        events = shopper_events(user=user, session_key=session_key).order_by()
        by_kind = dict(events.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
        sessions = sorted(set(events.exclude(session_key="").values_list("session_key", flat=True)))
        users = set(events.exclude(user__isnull=True).values_list("user", flat=True))
        bought = set(
            events.filter(kind__in=recommender_settings.BOUGHT_TOGETHER_KINDS).values_list(
                "item", flat=True
            )
        )
        deleted, _ = events.delete()
        _forget_list_owners(user, sessions)
        assignments = experiments.shopper_assignments(user, set(sessions) | {session_key} - {""})
        assigned = list(assignments.values_list("experiment_id", "user_id", "session_key"))
        assignments.delete()
    _forget_cached(user, users, sessions, bought, assigned)
    return ForgetResult(
        events=deleted, by_kind=by_kind, sessions=sessions, assignments=len(assigned)
    )


def _forget_list_owners(user, sessions):
    """Unlink the shopper's personal recommendation lists from them.

    The lists stay (their version's impressions and clicks are aggregate metrics), but
    their owner becomes a mark no shopper's pseudonym equals: no one, the forgotten
    shopper included, can be credited with a click on them, and nothing links them back.
    """
    owners = {list_owner(session_key=key) for key in sessions}
    if user is not None:
        owners.add(list_owner(user=user))
    Recommendation.objects.filter(owner__in=owners).update(owner=FORGOTTEN_OWNER)


def _forget_cached(user, user_ids, sessions, bought_items, assigned):
    """Delete every cache key of the shopper's lists and arms, and the co-purchase lists of
    their items (``assigned``: the (experiment, user id, session key) rows deleted)."""
    users = list(
        get_user_model()._default_manager.filter(pk__in=user_ids - ({user.pk} if user else set()))
    )
    if user is not None:
        users.append(user)
    shoppers = [{"user": u} for u in users] + [{"session_key": key} for key in sessions]
    keys = [key for shopper in shoppers for key in cachekeys.shopper_keys(**shopper)]
    by_id = {u.pk: u for u in users}
    for experiment_id, user_id, key in assigned:
        keys.append(cachekeys.assignment(experiment_id, by_id.get(user_id), key))
    placements = serving.accepted_placements()
    source = Recommendation.Source.BOUGHT_TOGETHER
    arm_ids = _arms_with_cached_lists()
    keys += [
        key for pk in bought_items for key in cachekeys.item_keys(source, pk, placements, arm_ids)
    ]
    serving._cache().delete_many(keys)


def _arms_with_cached_lists():
    """Arms whose item lists may still be cached: running, or stopped within their lifetime."""
    since = timezone.now() - timedelta(seconds=recommender_settings.ITEM_LISTS_CACHE_SECONDS)
    return list(
        Arm.objects.filter(
            Q(experiment__status=Experiment.Status.RUNNING)
            | Q(experiment__stopped_at__gte=since)
            | Q(experiment__status=Experiment.Status.STOPPED, experiment__stopped_at__isnull=True)
        ).values_list("pk", flat=True)
    )
