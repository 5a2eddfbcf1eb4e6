"""Events shoppers produce, the model versions trained on them, and experiments between them."""

import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from .conf import BUILTIN_EVENT_KINDS

# The store's item model, like AUTH_USER_MODEL. When it is not set the relation points at
# a model that cannot exist, so `manage.py check` reports recommender.E001 instead of
# the import failing before any check can run.
ITEM_MODEL = (
    getattr(settings, "RECOMMENDER_ITEM_MODEL", None) or "recommender.ItemModelNotConfigured"
)


def shopper_q(*, user_id=None, session_key=""):
    """Which events are a shopper's: the user's, else those of the anonymous key with no user.

    The one statement of the rule: ``for_shopper`` filters with it, and serving compiles
    its hand-written SQL from it.
    """
    if user_id is not None:
        return Q(user_id=user_id)
    return Q(session_key=session_key, user__isnull=True)


class EventQuerySet(models.QuerySet):
    def for_shopper(self, *, user=None, session_key=None):
        """A shopper's events: the user's if logged in, else the anonymous session's."""
        if user is not None and user.is_authenticated:
            return self.filter(shopper_q(user_id=user.pk))
        if session_key:
            return self.filter(shopper_q(session_key=session_key))
        return self.none()


class Event(models.Model):
    """One thing a shopper did with one item.

    ``session_key`` is the recommender's anonymous shopper key kept in the Django
    session (see ``recommender.shoppers``); unlike Django's own session key it survives
    the key rotation at login, which is how anonymous events are attached to the user.
    """

    # Names for the built-in kinds (Event.Kind.CLICK); a store may record more (EVENT_KINDS).
    Kind = models.TextChoices("Kind", [(kind.upper(), kind) for kind in BUILTIN_EVENT_KINDS])

    id = models.BigAutoField(primary_key=True)
    # Unique per shopper (see Meta.constraints), never across shoppers: one shopper's ids
    # can neither suppress another's events nor tell whether another's id exists.
    event_id = models.UUIDField(
        default=uuid.uuid4,
        editable=False,
        help_text="Client-supplied id: a retried submission with the same id is stored once per shopper.",
    )
    # No index of its own: rec_event_user_latest starts with user_id and serves its lookups.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="recommender_events",
        db_index=False,
    )
    session_key = models.CharField(max_length=40, blank=True, default="")
    # History outlives the catalogue: deleting a product keeps its events (training data,
    # reports, purchase history), so no cascade and no database constraint. Readers cope
    # with an item that is gone: serving and reports look items up and skip missing ones.
    item = models.ForeignKey(
        ITEM_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="recommender_events",
    )
    # Not limited to Kind's choices: stores extend the list with RECOMMENDER["EVENT_KINDS"].
    kind = models.CharField(max_length=32)
    value = models.FloatField(null=True, blank=True, help_text="Quantity, price or rating.")
    occurred_at = models.DateTimeField(default=timezone.now)
    received_at = models.DateTimeField(auto_now_add=True)
    placement = models.CharField(max_length=64, blank=True, default="")
    page = models.CharField(max_length=200, blank=True, default="")
    recommendation_id = models.UUIDField(
        null=True, blank=True, help_text="The recommendation list the event came from, if any."
    )

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-occurred_at"], name="rec_event_user_latest"),
            models.Index(fields=["session_key", "-occurred_at"], name="rec_event_session_latest"),
            models.Index(fields=["occurred_at", "id"], name="rec_event_time_order"),
            # Only events that came from a recommendation list (a small share) are indexed.
            models.Index(
                fields=["recommendation_id"],
                name="rec_event_recommendation",
                condition=Q(recommendation_id__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(user__isnull=True, session_key=""), name="rec_event_has_shopper"
            ),
            # Each row enters exactly one of the two (as it entered the one global index before).
            models.UniqueConstraint(
                fields=["event_id", "user"],
                condition=Q(user__isnull=False),
                name="rec_event_id_per_user",
            ),
            models.UniqueConstraint(
                fields=["event_id", "session_key"],
                condition=Q(user__isnull=True),
                name="rec_event_id_per_session",
            ),
        ]

    def __str__(self):
        who = f"user {self.user_id}" if self.user_id else f"session {self.session_key[:8]}"
        return f"{who} {self.kind} item {self.item_id}"


class ModelVersionQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_active=True).first()

    def running(self):
        return self.filter(status__in=[ModelVersion.Status.QUEUED, ModelVersion.Status.RUNNING])


class ModelVersion(models.Model):
    """One training run: its data, curve, metrics, artifact and whether it serves.

    At most one version is active, enforced by a partial unique constraint so that
    concurrent promotions and rollbacks cannot leave two (or, with ``promote``'s
    row locks, zero) active versions.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        READY = "ready", "ready (trained, evaluated)"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        ADMIN = "admin"
        COMMAND = "command"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    is_active = models.BooleanField(default=False)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.COMMAND)
    model_name = models.CharField(max_length=32, blank=True, default="")
    config = models.JSONField(
        default=dict, blank=True, help_text="Cleaning and training settings used."
    )
    data_stats = models.JSONField(
        default=dict, blank=True, help_text="Shoppers, items, events trained on."
    )
    metrics = models.JSONField(
        default=dict, blank=True, help_text="Offline validation/test metrics, with baselines."
    )
    curve = models.JSONField(
        default=list, blank=True, help_text="Per-epoch loss and validation metrics."
    )
    progress = models.JSONField(
        default=dict, blank=True, help_text="Live stage/epoch/ETA while running."
    )
    decision = models.TextField(blank=True, default="", help_text="Why it was or was not promoted.")
    error = models.TextField(blank=True, default="")
    artifact = models.CharField(
        max_length=255, blank=True, default="", help_text="Name in artifact storage."
    )
    artifact_sha256 = models.CharField(max_length=64, blank=True, default="")
    task_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        get_latest_by = "created_at"
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="rec_one_active_version"
            ),
            models.CheckConstraint(
                condition=Q(is_active=False) | Q(status="ready"), name="rec_only_ready_is_active"
            ),
            # The training lock: two runs can never be running at once.
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="running"), name="rec_one_running_training"
            ),
        ]

    def __str__(self):
        return f"v{self.pk} {self.model_name or 'model'} ({'active' if self.is_active else self.status})"

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    def metric(self, name, split="valid"):
        return (self.metrics.get(split) or {}).get(name)

    def activate(self, attempts=5):
        """Make this version the one that serves, atomically (an admin's activation or rollback).

        Concurrent activations serialise on the active row's lock; when three or more
        overlap, one may still find that another activated a version after its statement
        began, and the one-active constraint refuses it. It then tries again at once: a
        new statement sees the other's commit and switches that version off instead.
        """
        self._retry_on_race(lambda: self._switch_on(self._lock_ready()), attempts)
        self.refresh_from_db()
        return self

    def promote(self, tolerance=0.0, attempts=5):
        """Serve this version if its validation NDCG@10 >= the active one's - ``tolerance``.

        Decided and switched in one transaction under the row locks (this version's, then
        the active one's: ``activate``'s order, so the two cannot deadlock), against the
        version active once the locks are held, not one switched away while waiting. A
        switch refused by the one-active constraint (another activation committed after
        this statement began) is decided again at once. The decision is stored in words,
        followed by the run's own choice of model (``metrics["choice"]``). Returns whether
        this version serves.
        """
        served = self._retry_on_race(lambda: self._decide(tolerance), attempts)
        self.refresh_from_db()
        return served

    def _retry_on_race(self, switch, attempts):
        """``switch()`` in a transaction, tried again when the one-active constraint refuses it.

        No sleep: the losing transaction has already waited on the winner's row lock, and
        a new statement sees its commit.
        """
        for attempt in range(attempts):
            try:
                with transaction.atomic():
                    return switch()
            except IntegrityError:
                if attempt == attempts - 1:
                    raise

    def _lock_ready(self):
        me = ModelVersion.objects.select_for_update().get(pk=self.pk)
        if me.status != self.Status.READY:
            raise ValueError(f"Only a ready version can be activated (v{me.pk} is {me.status}).")
        return me

    @staticmethod
    def _lock_active():
        """The active version, row-locked; None only if none is active once the lock is held."""
        for _ in range(20):
            active = ModelVersion.objects.select_for_update().filter(is_active=True).first()
            # Waiting for the lock, the row may have been switched off: then look again.
            if active is not None or not ModelVersion.objects.filter(is_active=True).exists():
                return active
        return None

    @staticmethod
    def _switch_on(me, **fields):
        """Inside a transaction holding ``me``'s lock: ``me`` serves, every other stops."""
        list(ModelVersion.objects.select_for_update().filter(is_active=True))
        ModelVersion.objects.filter(is_active=True).exclude(pk=me.pk).update(is_active=False)
        ModelVersion.objects.filter(pk=me.pk).update(
            is_active=True, activated_at=timezone.now(), **fields
        )

    def _decide(self, tolerance):
        me = self._lock_ready()
        active = self._lock_active()
        if active is not None and active.pk == me.pk:
            return True
        mine = me.metric("ndcg@10")
        chosen = (me.metrics or {}).get("choice") or {}
        if active is None:
            verdict = "Promoted: no version was active."
        else:
            theirs = active.metric("ndcg@10") or 0.0
            if mine is None or mine < theirs - tolerance:
                shown = "none" if mine is None else f"{mine:.4f}"
                decision = (
                    f"Kept as a candidate: validation NDCG@10 {shown} is below the active "
                    f"v{active.pk}'s {theirs:.4f} (tolerance {tolerance:g}); v{active.pk} "
                    "serves on."
                )
                if chosen.get("reason"):
                    decision += f" This run's best was {chosen['reason']}."
                ModelVersion.objects.filter(pk=me.pk).update(decision=decision)
                return False
            verdict = (
                f"Promoted: validation NDCG@10 {mine:.4f} >= active v{active.pk}'s "
                f"{theirs:.4f} (tolerance {tolerance:g})."
            )
        if chosen.get("reason"):
            verdict += f" Serving {chosen['reason']}."
        self._switch_on(me, decision=verdict)
        return True


class RecommendationQuerySet(models.QuerySet):
    def clicks(self):
        """Click events attributed to these recommendation lists (repeats included: see
        ``reports.distinct_clicks`` for the count the dashboards show)."""
        return Event.objects.filter(kind=Event.Kind.CLICK, recommendation_id__in=self.values("id"))


class Recommendation(models.Model):
    """One list of items shown to a shopper: which model version made it, and where.

    Its id travels with the rendered items (``data-rec-recommendation``), so the
    tracker's impressions and the shopper's clicks are attributed to the version and
    placement, and click-through rate per version can be computed.
    """

    class Source(models.TextChoices):
        MODEL = "model"
        SIMILAR = "similar"
        BOUGHT_TOGETHER = "bought_together"
        POPULAR = "popular"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="recommendations",
    )
    placement = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices)
    arm = models.ForeignKey(
        "Arm",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="recommendations",
        help_text="The experiment arm the list was served for; empty outside experiments.",
    )
    items = models.JSONField(default=list, help_text="Item ids in the order shown.")
    owner = models.CharField(
        max_length=32,
        blank=True,
        default="",
        help_text="Pseudonym of the shopper a personal list was made for; empty for shared lists.",
    )
    impressions = models.PositiveIntegerField(
        default=0, help_text="Times the tracker saw the list on screen."
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = RecommendationQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(
                fields=["version", "placement", "created_at"], name="rec_recommendation_version"
            )
        ]

    def __str__(self):
        return f"{self.source} list for {self.placement or 'api'} ({self.pk})"


def new_salt():
    return secrets.token_hex(16)


class ExperimentQuerySet(models.QuerySet):
    def running(self):
        return self.filter(status=Experiment.Status.RUNNING)


class Experiment(models.Model):
    """An online A/B test: shoppers split between two or more arms in some placements.

    Each shopper is assigned one arm for the whole experiment (a salted hash of who they
    are, kept across login by ``Assignment``), and every list served to them in the
    experiment's placements comes from that arm. At most one experiment runs per
    placement; stopping it returns everyone to the active version.
    """

    class Status(models.TextChoices):
        DRAFT = "draft"
        RUNNING = "running"
        STOPPED = "stopped"

    name = models.CharField(max_length=100, unique=True)
    placements = models.JSONField(
        default=list,
        blank=True,
        help_text="Placements it runs in (names from PLACEMENT_NAMES/PLACEMENTS); empty: all.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    salt = models.CharField(
        max_length=32, default=new_salt, editable=False, help_text="Keys the arm assignment."
    )
    primary_metric = models.CharField(
        max_length=32,
        default="purchases_per_shopper",
        help_text="The metric the verdict is about.",
    )
    attribution_hours = models.PositiveIntegerField(
        default=24,
        help_text="Add-to-cart and purchases of a clicked item count this long after the click.",
    )
    confidence = models.FloatField(
        default=0.95, help_text="Confidence of the intervals and of the verdict (0.5-0.999)."
    )
    decision = models.TextField(blank=True, default="", help_text="What was decided, in words.")
    promoted_arm = models.ForeignKey(
        "Arm", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("run_experiment", "Can start, stop and promote experiments")]
        constraints = [
            models.CheckConstraint(
                condition=Q(confidence__gte=0.5, confidence__lte=0.999),
                name="rec_experiment_confidence",
            )
        ]

    def __str__(self):
        return f"{self.name} ({self.status})"

    @property
    def arms_editable(self):
        """Arms (and what the verdict is about) are fixed once the experiment has started."""
        return self.status == self.Status.DRAFT

    def covers(self, placements):
        """Whether this experiment and one in ``placements`` share a placement (empty: all)."""
        return not self.placements or not placements or bool(set(self.placements) & set(placements))


class Arm(models.Model):
    """One side of an experiment: a trained model version, its item-kNN, or the popular items."""

    class Ranker(models.TextChoices):
        VERSION = "version", "a trained model version"
        # The version's own item-kNN lists alone: "the model against its item-kNN".
        ITEMKNN = "itemknn", "item-kNN of a model version"
        POPULARITY = "popularity", "popular items"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.CharField(max_length=40)
    ranker = models.CharField(max_length=16, choices=Ranker.choices, default=Ranker.VERSION)
    # A version in an experiment cannot be deleted from under it.
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="arms"
    )
    share = models.PositiveSmallIntegerField(
        default=50, help_text="Relative share of shoppers (two arms at 50 and 50: half each)."
    )

    class Meta:
        ordering = ["experiment", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="rec_arm_name"),
            models.CheckConstraint(
                condition=Q(ranker__in=["version", "itemknn"], version__isnull=False)
                | Q(ranker="popularity", version__isnull=True),
                name="rec_arm_version_iff_ranker",
            ),
            models.CheckConstraint(condition=Q(share__gte=1), name="rec_arm_share_positive"),
        ]

    def __str__(self):
        what = f"v{self.version_id}" if self.version_id else "popular items"
        if self.ranker == self.Ranker.ITEMKNN:
            what = f"item-kNN of {what}"
        return f"{self.name}: {what}"

    def clean(self):
        """A version or item-kNN arm names its version, a popularity arm none; arms of a
        started one are fixed."""
        if self.ranker == self.Ranker.VERSION and self.version_id is None:
            raise ValidationError({"version": "Choose the model version this arm serves."})
        if self.ranker == self.Ranker.ITEMKNN and self.version_id is None:
            raise ValidationError(
                {"version": "Choose the model version whose item-kNN lists this arm serves."}
            )
        if self.ranker == self.Ranker.POPULARITY and self.version_id is not None:
            raise ValidationError(
                {"version": "The popular items' arm serves no model version: leave it empty."}
            )
        experiment = getattr(self, "experiment", None) if self.experiment_id else None
        if experiment is not None and not experiment.arms_editable:
            raise ValidationError(
                f"{experiment.name!r} is {experiment.status}: its arms are fixed once it started."
            )


class Assignment(models.Model):
    """A shopper's arm in an experiment, stored when they are first served from it.

    Shoppers are named as in ``Event`` (a user, or the anonymous key with no user), so
    forgetting a shopper deletes their assignments, and at login a session's assignment
    becomes the user's: they keep seeing the same arm.
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="assignments")
    arm = models.ForeignKey(Arm, on_delete=models.CASCADE, related_name="assignments")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="recommender_assignments",
    )
    session_key = models.CharField(max_length=40, blank=True, default="")
    assigned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(user__isnull=True, session_key=""), name="rec_assignment_has_shopper"
            ),
            models.UniqueConstraint(
                fields=["experiment", "user"],
                condition=Q(user__isnull=False),
                name="rec_assignment_per_user",
            ),
            models.UniqueConstraint(
                fields=["experiment", "session_key"],
                condition=Q(user__isnull=True),
                name="rec_assignment_per_session",
            ),
        ]

    def __str__(self):
        who = f"user {self.user_id}" if self.user_id else f"session {self.session_key[:8]}"
        return f"{who} in {self.arm}"
