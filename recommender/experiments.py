"""Experiments at serving time: which experiment runs in a placement, and a shopper's arm.

The one home of assignment. Serving asks ``running_experiment(placement)`` on every
request (an in-process snapshot re-read every ``VERSION_CHECK_SECONDS``, like the active
version, so a store with nothing running pays no query), then ``arm_for`` the shopper.

A shopper's arm is a salted hash of who they are (``Experiment.salt`` + user id or
anonymous key), weighted by the arms' shares, so every process and every request gives
the same answer without coordination. It is stored as an ``Assignment`` the first time
the shopper is served in the experiment: the row is the truth (it survives a change of
shares, and carries a session's arm over to the user at login), and it is the exposure
the statistics count. A cache key per shopper and experiment spares the row's query.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from django.core.cache import caches
from django.db import IntegrityError, router, transaction

from . import cachekeys
from .conf import recommender_settings
from .models import Arm, Assignment, Experiment

logger = logging.getLogger(__name__)

# A cached assignment only spares a query (the row is the truth, and the key carries the
# experiment): kept a day, about one visit of a shopper.
ASSIGNMENT_CACHE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RunningArm:
    """An arm as serving needs it, read once per refresh (no ORM object held by a process)."""

    id: int
    name: str
    ranker: str
    share: int
    version_id: int | None
    artifact: str = ""
    artifact_sha256: str = ""

    @property
    def serves_popular_items(self):
        return self.ranker == Arm.Ranker.POPULARITY

    @property
    def serves_item_knn(self):
        return self.ranker == Arm.Ranker.ITEMKNN

    @property
    def model_key(self):
        """What a process holds for this arm: (version id, ranker); None for popular items.

        A version arm and an item-kNN arm on the same version are two models."""
        return None if self.serves_popular_items else (self.version_id, self.ranker)


@dataclass(frozen=True)
class RunningExperiment:
    id: int
    name: str
    salt: str
    placements: frozenset  # empty: every placement
    arms: tuple  # RunningArm, by id

    def covers(self, placement):
        return not self.placements or placement in self.placements

    def arm(self, arm_id):
        return next((arm for arm in self.arms if arm.id == arm_id), None)


@dataclass(frozen=True)
class Running:
    """The running experiments, earliest started first (the one that wins an overlap)."""

    experiments: tuple = ()

    def covering(self, placement):
        for experiment in self.experiments:
            if experiment.covers(placement):
                return experiment
        return None

    @property
    def model_keys(self):
        """The (version id, ranker) of every running arm's model (what each process must hold)."""
        return frozenset(
            arm.model_key
            for experiment in self.experiments
            for arm in experiment.arms
            if arm.model_key is not None
        )


NOTHING_RUNS = Running()


class _RunningExperiments:
    """The per-process snapshot of running experiments, re-read every VERSION_CHECK_SECONDS."""

    def __init__(self):
        self._lock = threading.Lock()
        self.snapshot = NOTHING_RUNS
        self.checked_at = float("-inf")

    def get(self):
        if time.monotonic() - self.checked_at >= recommender_settings.VERSION_CHECK_SECONDS:
            with self._lock:
                if time.monotonic() - self.checked_at >= recommender_settings.VERSION_CHECK_SECONDS:
                    fresh = read_running()
                    # The same object while nothing changed: serving compares it by identity.
                    if fresh != self.snapshot:
                        self.snapshot = fresh
                    self.checked_at = time.monotonic()
        return self.snapshot

    def reset(self):
        with self._lock:
            self.snapshot, self.checked_at = NOTHING_RUNS, float("-inf")


def read_running():
    """The running experiments and their arms, in one query."""
    rows = (
        Arm.objects.filter(experiment__status=Experiment.Status.RUNNING)
        .order_by("experiment_id", "id")
        .values_list(
            "experiment_id",
            "experiment__name",
            "experiment__salt",
            "experiment__placements",
            "experiment__started_at",
            "id",
            "name",
            "ranker",
            "share",
            "version_id",
            "version__artifact",
            "version__artifact_sha256",
        )
    )
    experiments, arms, started = {}, {}, {}
    for row in rows:
        experiment_id, name, salt, placements, started_at = row[:5]
        arm_id, arm_name, ranker, share, version_id, artifact, sha256 = row[5:]
        if experiment_id not in experiments:
            experiments[experiment_id] = (name, salt, frozenset(placements or ()))
            started[experiment_id] = started_at
            arms[experiment_id] = []
        arms[experiment_id].append(
            RunningArm(arm_id, arm_name, ranker, share, version_id, artifact or "", sha256 or "")
        )
    # Earliest started first (an experiment never started sorts last), then the older row.
    order = sorted(experiments, key=lambda pk: (started[pk] is None, started[pk] or 0, pk))
    return Running(
        tuple(RunningExperiment(pk, *experiments[pk], arms=tuple(arms[pk])) for pk in order)
    )


running_experiments = _RunningExperiments()


def running_experiment(placement):
    """The experiment running in ``placement`` (its placements name it, or are empty), or None.

    Read from the per-process snapshot: no query while it is fresh. Two experiments that
    overlap by accident do not split a placement's shoppers: the earliest started wins.
    """
    return running_experiments.get().covering(placement)


# --------------------------------------------------------------------------- assignment


def _cache():
    return caches[recommender_settings.CACHE_ALIAS]


def _shopper(user, session_key):
    """(user or None, session key): a user, else the anonymous key; None if neither."""
    if user is not None and not user.is_authenticated:
        user = None
    if user is None and not session_key:
        return None
    return user, (session_key or "")


def assignment_key(experiment, user=None, session_key=""):
    """The cache key of the shopper's arm in ``experiment`` (serving reads it with its lists)."""
    shopper = _shopper(user, session_key)
    if shopper is None:
        return None
    return cachekeys.assignment(experiment.id, shopper[0], shopper[1])


def hashed_arm(experiment, identity):
    """The arm a salted hash of ``identity`` ("u<id>" or "s<key>") falls in, by shares.

    SHA-256 of salt and identity, the same in every process and on every machine; the
    first 8 bytes pick a point in the total of the shares, and the arms (by id) divide it.
    """
    arms = experiment.arms
    total = sum(arm.share for arm in arms)
    digest = hashlib.sha256(f"{experiment.salt}:{identity}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for arm in arms:
        point -= arm.share
        if point < 0:
            return arm
    return arms[-1]


# ``arm_for``'s cached_arm_id when the caller has not read the cache (None: read, absent).
NOT_READ = object()


def arm_for(experiment, user=None, session_key="", *, cached_arm_id=NOT_READ, expose=True):
    """The shopper's arm in ``experiment``: stored, else chosen by the hash and stored now.

    The stored Assignment wins (the user's, else the session's, which then becomes the
    user's), so a change of shares or a login never moves a shopper. ``cached_arm_id`` is
    the value serving read under ``assignment_key`` with its own lists (one round trip;
    None when absent); without it the key is read here. Returns None for a request with no shopper (no user,
    no anonymous key), which is served outside the experiment and not counted.
    ``expose=False`` (staff looking at a user's list) stores nothing: the arm the shopper
    has or would get, without counting them as served.
    """
    shopper = _shopper(user, session_key)
    if shopper is None or not experiment.arms:
        return None
    user, session_key = shopper
    key = cachekeys.assignment(experiment.id, user, session_key)
    if cached_arm_id is NOT_READ:
        cached_arm_id = _cache().get(key)
    arm = experiment.arm(cached_arm_id) if cached_arm_id is not None else None
    if arm is not None:
        return arm
    if not expose:
        stored = Assignment.objects.filter(
            experiment_id=experiment.id,
            **({"user": user} if user is not None else {"user": None, "session_key": session_key}),
        ).values_list("arm_id", flat=True)
        return experiment.arm(stored.first()) or hashed_arm(
            experiment, _identity(user, session_key)
        )
    arm = experiment.arm(_stored_or_new_arm_id(experiment, user, session_key))
    if arm is None:  # an arm deleted from a running experiment: its shoppers are hashed again
        arm = hashed_arm(experiment, _identity(user, session_key))
    _cache().set(key, arm.id, ASSIGNMENT_CACHE_SECONDS)
    return arm


def _identity(user, session_key):
    return f"u{user.pk}" if user is not None else f"s{session_key}"


def _stored_or_new_arm_id(experiment, user, session_key):
    if user is not None:
        if session_key:
            # An assignment the session got before logging in (login moves it; this covers
            # a store that does not connect the receiver, or a request racing the login).
            carry_over_assignments(user, session_key, experiment_ids=[experiment.id])
        lookup = {"experiment_id": experiment.id, "user": user}
    else:
        lookup = {"experiment_id": experiment.id, "user": None, "session_key": session_key}
    chosen = hashed_arm(experiment, _identity(user, session_key))
    # get_or_create catches the unique constraint's refusal when a concurrent request
    # stored the shopper's row first, and returns that row: one row, one arm.
    assignment, _ = Assignment.objects.get_or_create(**lookup, defaults={"arm_id": chosen.id})
    return assignment.arm_id


# --------------------------------------------------------------------------- login, forgetting


def carry_over_assignments(user, session_key, experiment_ids=None, attempts=3):
    """At login: the session's assignments become the user's where the user has none.

    Where the user already has an arm in an experiment (from another device), theirs wins
    and the session's row is dropped: one shopper, one arm. Returns the experiment ids
    whose rows changed (their cached arms are deleted).
    """
    if not session_key:
        return []
    for attempt in range(attempts):
        try:
            with transaction.atomic(using=router.db_for_write(Assignment)):
                sessions = Assignment.objects.filter(session_key=session_key, user__isnull=True)
                if experiment_ids is not None:
                    sessions = sessions.filter(experiment_id__in=experiment_ids)
                touched = sorted(set(sessions.values_list("experiment_id", flat=True)))
                if not touched:
                    return []
                users = Assignment.objects.filter(user=user, experiment_id__in=touched)
                sessions.filter(experiment_id__in=users.values("experiment_id")).delete()
                sessions.update(user=user)
            break
        except IntegrityError:
            # The user's row for one of these experiments was stored meanwhile: theirs wins.
            if attempt == attempts - 1:
                raise
    _cache().delete_many(
        [cachekeys.assignment(pk, None, session_key) for pk in touched]
        + [cachekeys.assignment(pk, user, "") for pk in touched]
    )
    return touched


def shopper_assignments(user=None, session_keys=()):
    """The Assignment rows of a user and of anonymous keys (what forgetting deletes)."""
    from django.db.models import Q

    who = Q(user__isnull=True, session_key__in=list(session_keys))
    if user is not None:
        who |= Q(user=user)
    return Assignment.objects.filter(who)
