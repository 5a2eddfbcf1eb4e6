"""The one way out for recommendations: endpoints, template tags and tasks call this.

Each web process loads the active model version once, lazily (torch is imported on the
first recommendation, not when views, the admin or template tags are imported), and
checks at most every ``VERSION_CHECK_SECONDS`` which version is active, so a promotion
or rollback reaches every process within seconds without a restart. A version that fails
to load (corrupt artifact) is refused and the previously loaded one keeps serving.

A shopper's recommendations are computed from their latest events at request time,
filtered by the store's business rules, cached, and dropped from the cache as soon as
the shopper records a new event. Popular and trending items are the answer for shoppers
with no history and while no model is active.

Where an experiment runs (``recommender.experiments``), each shopper's lists in its
placements come from their arm: the arm's model version, that version's item-kNN lists
alone (every process holds the running arms' models beside the active one, in
``arm_models``) or the popular items. The arm
travels with the list: its cache keys, its Recommendation row and ``RecommendationList.arm_id``.
"""

import functools
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.db import connections, router, transaction
from django.db.models import Case, Count, FloatField, Sum, Value, When
from django.utils import timezone

from . import artifacts, cachekeys, experiments, itemkeys
from .artifacts import ArtifactRefused
from .conf import event_kind_weights, get_item_model, recommender_settings
from .models import Arm, Event, ModelVersion, Recommendation, shopper_q
from .pseudonyms import list_owner

logger = logging.getLogger(__name__)

# Candidates kept per item a list may hold (MAX_LIMIT), before business rules filter.
OVERFETCH = 3
# Start of ModelVersion.error when a web process refused to load the version.
REFUSED = "Refused by a web process: "


class BadRequest(ValueError):
    """A parameter the caller got wrong (the API answers 400 with this message)."""


@dataclass(frozen=True)
class Reason:
    """Why an item is recommended: ``item``, from the shopper's own latest events, added
    most to its score; ``kind`` is the shopper's weightiest kind of event on it."""

    item: object
    kind: str


@dataclass
class RecommendationList:
    """An ordered list of items with the id that attributes clicks on it."""

    items: list
    recommendation_id: uuid.UUID | None = None
    version_id: int | None = None
    source: str = Recommendation.Source.POPULAR
    placement: str = ""
    scores: list = field(default_factory=list)
    # The experiment arm the list was served for; None outside experiments.
    arm_id: int | None = None
    # Gives the reasons of the items on first use (``reasons``); None: a list without any.
    reasons_of: Callable | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def reasons(self):
        """Parallel to ``items``: a Reason, or None (popular items, lists of a page's item,
        a reason no longer visible). Computed the first time they are read, so a list
        shown without reasons (most carousels, the API unless asked) never pays for them."""
        found = list(self.reasons_of(self.items)) if self.reasons_of else []
        return found[: len(self.items)] + [None] * (len(self.items) - len(found))

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)

    def __bool__(self):
        return bool(self.items)


# --------------------------------------------------------------------------- the model


class LoadedModel:
    """An active version in memory: predictor, item vocabulary, categories, ANN index."""

    def __init__(self, version_id, predictor, categories=None, index=None):
        self.version_id = version_id
        self.predictor = predictor
        self.categories = categories  # {item pk: category}, or None
        self.index = index  # approximate nearest-neighbour index, or None (exact)

    def top_candidates(self, history, k, *, exclude_pks=(), category=None):
        """The k best (item pk, score) for a history of (item pk, kind), best first.

        The score is the one training measured (``Predictor.top``: the net blended with
        item-kNN as validation chose); candidates come from the IVF index when there is
        one and no category narrows the catalogue, else from every item.
        """
        wanted = self._category_mask(category) if category is not None else None
        return self.predictor.top(history, k, exclude=exclude_pks, allowed=wanted, index=self.index)

    @property
    def history_length(self):
        """Latest events the model reads: the length it was trained with (in its artifact)."""
        return self.predictor.max_len

    def similar(self, pk, k):
        return self.predictor.similar(pk, k)

    def reasons(self, history, pks, *, eligible):
        """{pk: the item of ``history`` (among ``eligible``) that added most to it, or None}."""
        return self.predictor.reasons(history, pks, eligible=eligible)

    def _category_mask(self, category):
        import torch

        # One mask per category that exists: client-chosen strings cannot grow the cache.
        masks = self.__dict__.get("_masks")
        if masks is None:
            by_category = {}
            for i, pk in enumerate(self.predictor.item_map.to_list(), start=1):
                by_category.setdefault(str((self.categories or {}).get(pk)), []).append(i)
            masks = {}
            for name, ids in by_category.items():
                masks[name] = torch.zeros(self.predictor.n_items + 1, dtype=torch.bool)
                masks[name][torch.tensor(ids)] = True
            self._masks = masks
        mask = masks.get(str(category))
        return (
            mask if mask is not None else torch.zeros(self.predictor.n_items + 1, dtype=torch.bool)
        )


class _ActiveModel:
    """The per-process holder of the active version, re-checked every few seconds."""

    def __init__(self):
        self._lock = threading.Lock()
        self.loaded = None
        self.checked_at = float("-inf")
        self.refused = set()  # versions that failed to load: not retried by this process

    def get(self):
        if time.monotonic() - self.checked_at >= recommender_settings.VERSION_CHECK_SECONDS:
            with self._lock:
                if time.monotonic() - self.checked_at >= recommender_settings.VERSION_CHECK_SECONDS:
                    self._refresh()
                    self.checked_at = time.monotonic()
        return self.loaded

    def reset(self):
        with self._lock:
            self.loaded, self.checked_at, self.refused = None, float("-inf"), set()

    def _refresh(self):
        active = (
            ModelVersion.objects.filter(is_active=True)
            .values_list("pk", "artifact", "artifact_sha256")
            .first()
        )
        if active is None:
            self.loaded = None
            return
        pk = active[0]
        if self.loaded is not None and self.loaded.version_id == pk:
            return
        if pk in self.refused or not self._load(*active):
            if self.loaded is None:
                # Retried at every check: each try loads versions not yet refused here.
                self._fall_back(pk)

    def _load(self, pk, artifact_name, sha256):
        """Load a version in place of the current one; a refused version is logged, recorded, skipped."""
        try:
            self.loaded = load_version(pk, artifact_name, sha256=sha256)
            # A refusal recorded earlier (say, while the file was damaged) no longer holds.
            ModelVersion.objects.filter(pk=pk, error__startswith=REFUSED).update(error="")
            _freeze_long_lived()
        except Exception as exc:
            serving = self.loaded.version_id if self.loaded else None
            _record_refusal(
                pk,
                exc,
                f"v{serving} keeps serving." if serving else "looking for the last good version.",
            )
            self.refused.add(pk)
            return False
        logger.info("Serving model version v%s", pk)
        return True

    def _fall_back(self, refused_pk, attempts=3):
        """A process that starts while the active version is broken serves the last good one.

        Processes that were running keep the version they had; a new one (a restart, a
        recycled worker) would otherwise have none and serve popular items only. Every
        version that once served is a candidate until this process has refused it: one
        that another process refused earlier (its file may have been restored since) is
        only tried after those with no refusal recorded.
        """
        candidates = (
            ModelVersion.objects.filter(
                status=ModelVersion.Status.READY, activated_at__isnull=False
            )
            .exclude(pk__in=self.refused | {refused_pk})
            .exclude(artifact="")
            .order_by(Case(When(error="", then=0), default=1), "-activated_at")
            .values_list("pk", "artifact", "artifact_sha256")[:attempts]
        )
        for candidate in candidates:
            if self._load(*candidate):
                logger.warning(
                    "Active version v%s cannot be served; serving v%s, the last good version, instead.",
                    refused_pk,
                    candidate[0],
                )
                return


def _freeze_long_lived():
    """After a model loads: its many long-lived objects would otherwise be re-scanned by
    every full garbage collection, pausing the requests it interrupts."""
    gc.collect()
    gc.freeze()


def _record_refusal(pk, exc, consequence):
    """Log why a version did not load, and record it on the version (the admin shows it)."""
    from .ml.artifact import ArtifactError

    reason = f"{type(exc).__name__}: {exc}"[:1000].rstrip(". ")
    logger.error(
        "Model version v%s refused: %s; %s",
        pk,
        reason,
        consequence,
        exc_info=not isinstance(exc, (ArtifactRefused, ArtifactError)),
    )
    ModelVersion.objects.filter(pk=pk, error="").update(error=f"{REFUSED}{reason}")


def load_version(version_id, artifact_name, sha256=""):
    """Read a version's artifact from storage into a LoadedModel (imports torch).

    ``artifacts.read_predictor`` refuses bytes that do not hash to ``sha256`` (recorded
    when training verified the artifact) before they are unpickled, and ``load_artifact``
    then refuses anything that is not a well-formed artifact, without running code from
    it (tensors-only unpickler).
    """
    import torch

    torch.set_num_threads(recommender_settings.SERVING_TORCH_THREADS)
    # The artifact holds item keys as JSON; requests look items up by the ORM's keys.
    # Kinds training dropped (weight 0) are left out of the histories the model reads.
    dropped = [kind for kind, weight in event_kind_weights().items() if weight <= 0]
    predictor = artifacts.read_predictor(
        artifact_name, sha256, item_key=itemkeys.from_json, drop_kinds=dropped
    )
    if not hasattr(predictor.model, "full_sort_predict"):
        raise ValueError(f"Model {type(predictor.model).__name__} cannot score items.")
    categories = None
    field_name = recommender_settings.ITEM_CATEGORY_FIELD
    if field_name:
        categories = dict(
            get_item_model()
            ._default_manager.values_list("pk", field_name)
            .iterator(chunk_size=10_000)
        )
    index = None
    if (
        predictor.n_items > recommender_settings.ANN_MIN_ITEMS
        and predictor.item_vectors is not None
    ):
        from .ml.ann import IVFIndex

        index = artifacts.read_index(artifact_name)
        if index is None:  # versions promoted before the catalogue grew past the threshold
            index = IVFIndex.build(predictor.item_vectors)
    return LoadedModel(version_id, predictor, categories, index)


active_model = _ActiveModel()


class _ArmModels:
    """Per process: the models running experiments' arms serve, besides the active one.

    Held by (version id, ranker): a version arm's model is its version as it would serve
    when active; an item-kNN arm's is that version's kNN lists alone (``item_knn_model``),
    so "the model against its item-kNN" holds one artifact's tensors once. A model is
    loaded on its arm's first request in this process (or by ``warm_up``) and dropped once
    no running experiment has an arm on it; a version arm on the active version shares the
    active model. One that fails to load is refused once per process, logged (and a
    broken artifact recorded on the version); that arm's shoppers are then served by the
    active version (their lists still carry the arm, beside the version that made them).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.loaded = {}  # (version id, ranker) -> LoadedModel
        self.refused = set()
        self.following = None  # the experiments snapshot the held models were chosen by

    def follow(self, running):
        """Hold only the models the running experiments (``running``) serve."""
        with self._lock:
            if running is self.following:
                return
            wanted = running.model_keys
            dropped = sorted(key for key in self.loaded if key not in wanted)
            for key in dropped:
                del self.loaded[key]
            self.refused &= wanted
            self.following = running
        if dropped:
            logger.info(
                "No experiment serves %s any more: dropped.",
                ", ".join(f"v{pk} ({ranker})" for pk, ranker in dropped),
            )

    def model_for(self, arm, active):
        """The LoadedModel serving ``arm`` (a version or item-kNN arm); the active one if
        it cannot load."""
        key = arm.model_key
        if not arm.serves_item_knn and active is not None and active.version_id == arm.version_id:
            self.loaded.pop(key, None)  # promoted meanwhile: one copy is enough
            return active
        model = self.loaded.get(key)
        if model is not None or key in self.refused:
            return model or active
        with self._lock:
            model = self.loaded.get(key)
            if model is None and key not in self.refused:
                model = self._load(arm, active)
        return model or active

    def _version(self, arm, active):
        """The arm's version as it serves (loaded, or shared with what holds it already)."""
        if active is not None and active.version_id == arm.version_id:
            return active
        version_key = (arm.version_id, Arm.Ranker.VERSION)
        held = self.loaded.get(version_key)
        if held is None:
            held = load_version(arm.version_id, arm.artifact, sha256=arm.artifact_sha256)
            if arm.serves_item_knn and self.following and version_key in self.following.model_keys:
                self.loaded[version_key] = held  # its version arm shares this load
        return held

    def _wanted(self, key):
        return self.following is None or key in self.following.model_keys

    def _load(self, arm, active):
        key = arm.model_key
        serving = f"v{active.version_id}, the active version," if active else "popular items"
        consequence = f"arm {arm.name!r} is served by {serving} in this process."
        try:
            model = self._version(arm, active)
        except Exception as exc:
            _record_refusal(arm.version_id, exc, consequence)
            self.refused.add(key)
            return None
        if arm.serves_item_knn:
            try:
                model = item_knn_model(model)
            except ValueError as exc:  # the version is fine; this arm cannot be served from it
                logger.error("Arm %r: v%s %s; %s", arm.name, arm.version_id, exc, consequence)
                self.refused.add(key)
                return None
        if self._wanted(key):
            self.loaded[key] = model
        _freeze_long_lived()
        logger.info("Serving v%s (%s) for experiment arm %r", arm.version_id, key[1], arm.name)
        return model

    def reset(self):
        with self._lock:
            self.loaded, self.refused, self.following = {}, set(), None


def item_knn_model(loaded):
    """A LoadedModel serving only the item-kNN inside ``loaded`` (``hybrid.item_knn_of``):
    the kNN score training measured for item-kNN, and its lists as similar items. Shares
    the version's tensors and vocabulary; raises ValueError if it has no kNN lists."""
    from .ml.hybrid import item_knn_of

    knn = item_knn_of(loaded.predictor.model)
    return LoadedModel(loaded.version_id, loaded.predictor.over(knn), loaded.categories)


arm_models = _ArmModels()


def _experiment_in(placement):
    """The experiment running in ``placement`` (from the per-process snapshot), or None.

    When the snapshot changed (an experiment started or stopped), the arm versions no
    running experiment serves are dropped first.
    """
    running = experiments.running_experiments.get()
    if running is not arm_models.following:
        arm_models.follow(running)
    return running.covering(placement)


def _model_of(arm, active):
    """The model that serves ``arm`` (None: a popularity arm; a version or item-kNN arm's
    from ``arm_models``); outside experiments, ``active``."""
    if arm is None:
        return active
    if arm.serves_popular_items:
        return None
    return arm_models.model_for(arm, active)


# --------------------------------------------------------------------------- caching


def _cache():
    return caches[recommender_settings.CACHE_ALIAS]


def invalidate_shopper(user=None, session_key="", **kwargs):
    """Forget every cached recommendation of this shopper (new event, privacy request)."""
    _cache().delete(cachekeys.generation(user, session_key))


# --------------------------------------------------------------------------- rules


def placement_rules(placement):
    rules = {"exclude_purchased": True, "exclude_seen": True, "diversity": None}
    rules.update(recommender_settings.PLACEMENTS.get(placement, {}))
    return rules


def clean_limit(limit):
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise BadRequest("limit must be a whole number.") from None
    if not 1 <= limit <= recommender_settings.MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {recommender_settings.MAX_LIMIT}.")
    return limit


def accepted_placements():
    """Placement names lists may be served for: "" (none), PLACEMENT_NAMES, PLACEMENTS' keys.

    Every list served is stored with its placement (click-through per placement), and its
    caches are keyed by it, so the names are the store's, never a client's invention.
    """
    return {"", *recommender_settings.PLACEMENT_NAMES, *recommender_settings.PLACEMENTS}


def clean_placement(placement):
    placement = placement or ""
    if not isinstance(placement, str) or len(placement) > recommender_settings.MAX_PLACEMENT_LENGTH:
        raise BadRequest(
            f"placement must be at most {recommender_settings.MAX_PLACEMENT_LENGTH} characters."
        )
    if "\x00" in placement:
        raise BadRequest("placement must not contain NUL characters.")
    accepted = accepted_placements()
    if placement not in accepted:
        names = ", ".join(repr(name) for name in sorted(accepted - {""}))
        raise BadRequest(
            f"Unknown placement {placement[:40]!r}: use one of {names}, or none "
            '(the store lists its own in RECOMMENDER["PLACEMENT_NAMES"] or "PLACEMENTS").'
        )
    return placement


def _item_key(value):
    """An item key as the ORM gives it (a URL's or template's text may name the item)."""
    try:
        return itemkeys.from_json(value)
    except ValidationError:
        raise BadRequest(f"{str(value)[:40]!r} is not a valid item id.") from None


def allowed_items(pks):
    """The store's items among ``pks`` that its rules allow to be shown, by pk."""
    queryset = get_item_model()._default_manager.filter(pk__in=list(pks))
    item_filter = recommender_settings.ITEM_FILTER
    if item_filter is not None:
        queryset = item_filter(queryset)
    return {item.pk: item for item in queryset}


def visible_item(pk):
    """The item ``pk`` if shoppers may look at it, else None (unknown or hidden alike).

    Its lists are asked for by id, so an inactive item must answer like a missing one.
    Shoppers may look at what RECORDABLE_ITEMS allows (a sold-out item's page, say), or,
    where the store has not set it, at what ITEM_FILTER allows to be shown.
    """
    return _shopper_visible(get_item_model()._default_manager.filter(pk=pk)).first()


def visible_items(pks):
    """The items among ``pks`` that shoppers may look at (``visible_item``'s rule), by pk."""
    queryset = get_item_model()._default_manager.filter(pk__in=list(pks))
    return {item.pk: item for item in _shopper_visible(queryset)}


def _shopper_visible(queryset):
    rule = recommender_settings.RECORDABLE_ITEMS or recommender_settings.ITEM_FILTER
    return queryset if rule is None else rule(queryset)


def _apply_rules(candidates, limit, *, diversity=None, category=None, exclude=()):
    """Keep allowed items in order; at most ``diversity`` per category; cut to limit.

    Candidates are checked against the store's rules in growing chunks, so a long cached
    list (150 similar items) costs a query for about twice the items shown, not all.
    """
    exclude = {_item_key(pk) for pk in exclude}
    field_name = recommender_settings.ITEM_CATEGORY_FIELD
    per_category, kept, scores = {}, [], []
    candidates = [(pk, score) for pk, score in candidates if pk not in exclude]
    start, chunk = 0, max(2 * limit, 10)
    while start < len(candidates) and len(kept) < limit:
        batch = candidates[start : start + chunk]
        start, chunk = start + chunk, chunk * 2
        items = allowed_items(pk for pk, _ in batch)
        for pk, score in batch:
            item = items.get(pk)
            if item is None:
                continue
            if field_name and (category is not None or diversity):
                item_category = getattr(item, field_name, None)
                if category is not None and str(item_category) != str(category):
                    continue
                if diversity:
                    if per_category.get(item_category, 0) >= diversity:
                        continue
                    per_category[item_category] = per_category.get(item_category, 0) + 1
            kept.append(item)
            scores.append(score)
            if len(kept) == limit:
                break
    return kept, scores


def _save_list(source, placement, version_id, pks, owner="", arm_id=None):
    """Store a list shown; ``owner`` (a shopper pseudonym) marks a personal one, ``arm_id``
    the experiment arm it was served for."""
    rec = Recommendation.objects.create(
        source=source,
        placement=placement,
        version_id=version_id,
        items=[itemkeys.to_json(pk) for pk in pks],
        owner=owner,
        arm_id=arm_id,
    )
    return rec.pk


def _cached_candidates(key, compute, timeout, *, source, placement, version_id, arm_id=None):
    """A list's cached candidates, with the Recommendation row of this placement.

    The candidates (the costly part) are cached once under ``key`` for every placement
    and limit; each placement gets its own row (clicks are counted per placement), made
    the first time the placement is served these candidates. ``compute() -> [(pk, score)]``.
    Candidates another model version made are a miss. An empty list is neither cached nor
    stored: a store's first events (or a new model) must show up on the next page, not
    after the cache expires. In an experiment, ``arm_id`` is the arm the row is made for.
    """
    row_key = cachekeys.list_row(key, placement, arm_id)
    found = _cache().get_many([key, row_key])
    entry, row = found.get(key), found.get(row_key)
    if entry is None or entry.get("version") != version_id:
        candidates = compute()
        entry = {
            "pks": [pk for pk, _ in candidates],
            "scores": [score for _, score in candidates],
            "stamp": uuid.uuid4().hex[:12],
            "version": version_id,
        }
        if not entry["pks"]:
            return {**entry, "rid": None, "source": source, "placement": placement, "arm": arm_id}
        _cache().set(key, entry, timeout)
    if row is None or row["stamp"] != entry["stamp"]:
        row = {
            "stamp": entry["stamp"],
            "rid": _save_list(source, placement, version_id, entry["pks"], arm_id=arm_id),
        }
        _cache().set(row_key, row, timeout)
    return {
        **entry,
        "rid": row["rid"],
        "version": version_id,
        "source": source,
        "placement": placement,
        "arm": arm_id,
    }


def _from_cached(entry, limit, *, diversity=None, category=None, exclude=()):
    """Re-apply the business rules to a cached list (stock may have changed since)."""
    items, scores = _apply_rules(
        list(zip(entry["pks"], entry["scores"], strict=True)),
        limit,
        diversity=diversity,
        category=category,
        exclude=exclude,
    )
    return RecommendationList(
        items,
        entry["rid"],
        entry["version"],
        entry["source"],
        entry["placement"],
        scores,
        arm_id=entry.get("arm"),
    )


# --------------------------------------------------------------------------- shoppers


def shopper_activity(user=None, session_key="", length=None, with_purchases=True):
    """(latest (item pk, kind) events oldest first, set of purchased item pks), in one query.

    ``length`` is the active model's history length; HISTORY_LENGTH while none is loaded.

    The latest events and all purchases come back together (UNION ALL, each branch on the
    shopper's index): one round trip less on every cache miss.
    """
    length = length or recommender_settings.HISTORY_LENGTH
    by_user = user is not None and user.is_authenticated
    if not by_user and not session_key:
        return [], set()
    shopper = user.pk if by_user else session_key
    database = connections[router.db_for_read(Event)]
    sql = _activity_sql(by_user, with_purchases, database.alias)
    params = [shopper, length] + ([shopper, Event.Kind.PURCHASE] if with_purchases else [])
    with database.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    to_pk = itemkeys.from_json  # a UUID key comes back from SQLite's raw SQL as text
    # UNION ALL promises no order: the latest events are put back in time order here.
    recent = sorted((row for row in rows if row[0] == 0), key=lambda row: (row[3], row[4]))
    return [(to_pk(pk), kind) for _, pk, kind, _, _ in recent], {
        to_pk(row[1]) for row in rows if row[0] == 1
    }


@functools.cache
def _activity_sql(by_user, with_purchases, alias):
    """shopper_activity's SQL for the database ``alias``, written once per shape.

    Written once rather than built through the ORM per request, whose compiling cost more
    CPU than the database took to run the query. Params: shopper, length[, shopper, kind].
    """
    quote = connections[alias].ops.quote_name
    meta = Event._meta
    table = quote(meta.db_table)
    column = {
        name: quote(meta.get_field(name).column) for name in ("id", "item", "kind", "occurred_at")
    }
    # The WHERE of Event.objects.for_shopper, with the shopper as its one parameter.
    query = Event.objects.filter(
        shopper_q(user_id=0) if by_user else shopper_q(session_key="-")
    ).query
    who, _ = query.get_compiler(using=alias).compile(query.where)
    fields = f"{column['item']}, {column['kind']}, {column['occurred_at']}, {column['id']}"
    sql = (
        f"SELECT * FROM (SELECT 0 AS part, {fields} FROM {table} WHERE {who} "
        f"ORDER BY {column['occurred_at']} DESC, {column['id']} DESC LIMIT %s) AS latest"
    )
    if with_purchases:
        sql += f" UNION ALL SELECT 1, {fields} FROM {table} WHERE {who} AND {column['kind']} = %s"
    return sql


def recommend(
    *,
    user=None,
    session_key="",
    limit=10,
    category=None,
    placement="",
    exclude=(),
    expose=True,
):
    """Personal recommendations from the shopper's latest events, at request time.

    Shoppers with no history, and every shopper while no model is active, get the
    popular items under the same rules. The model's candidates are cached for every
    limit (the rules and the cut to ``limit`` apply on the way out), so a short list
    asked for first never shortens a longer one asked for next.

    Where an experiment runs in ``placement``, the model is the shopper's arm's version;
    a popularity arm is served as if no model were active (popular items, less what the
    shopper saw or bought, as the placement's rules say). ``expose=False`` (staff looking
    at a user's list) shows their arm's list without counting them as served in it.
    """
    if user is not None and not user.is_authenticated:
        user = None
    limit, placement = clean_limit(limit), clean_placement(placement)
    rules = placement_rules(placement)
    exclude = tuple(_item_key(pk) for pk in exclude)
    active = active_model.get()
    if user is None and not session_key:
        return popular(limit=limit, category=category, placement=placement, exclude=exclude)
    experiment = _experiment_in(placement)
    # One round trip reads the shopper's generation, the list and, in an experiment, their
    # arm; a list counts only if it was stamped with the current generation (a new event
    # deletes the generation key), the model that serves and the arm.
    generation_key = cachekeys.generation(user, session_key)
    # The slot follows what the list is for, not the model version: a new version reuses
    # it. An experiment's lists are its own: stopping it leaves them unread.
    wanted = (placement, category, sorted(map(str, exclude)))
    fingerprint = cachekeys.fingerprint(*wanted, *([experiment.id] if experiment else []))
    key = cachekeys.shopper_list(user, session_key, fingerprint)
    arm_key = experiments.assignment_key(experiment, user, session_key) if experiment else None
    found = _cache().get_many([generation_key, key, *([arm_key] if arm_key else [])])
    generation, cached = found.get(generation_key), found.get(key)
    arm = None
    if experiment is not None:
        arm = experiments.arm_for(
            experiment, user, session_key, cached_arm_id=found.get(arm_key), expose=expose
        )
    arm_id = arm.id if arm else None
    model = _model_of(arm, active)
    if (
        generation is not None
        and cached is not None
        and cached.get("generation") == generation
        and cached.get("fingerprint") == fingerprint
        and cached.get("version") == (model.version_id if model else None)
        and cached.get("arm") == arm_id
    ):
        listed = _personal_list(cached, key, limit, rules=rules, category=category)
        listed.reasons_of = _reasons_of(cached, key, model, user, session_key)
        return listed
    if generation is None:
        # Set before computing: an event recorded meanwhile deletes it, so this list is
        # never served for the newer history.
        generation = uuid.uuid4().hex[:12]
        _cache().set(
            generation_key, generation, recommender_settings.RECOMMENDATIONS_CACHE_SECONDS * 2
        )

    history, purchased = shopper_activity(
        user,
        session_key,
        length=model.history_length if model is not None else None,
        with_purchases=rules["exclude_purchased"],
    )
    banned = set(exclude) | purchased
    if rules["exclude_seen"]:
        banned |= {pk for pk, _ in history}
    candidates = []
    if model is not None and history:
        candidates = model.top_candidates(
            history,
            recommender_settings.MAX_LIMIT * OVERFETCH,
            exclude_pks=banned,
            category=category,
        )
    if not candidates:
        return _popular(
            limit=limit, category=category, placement=placement, exclude=banned, arm_id=arm_id
        )
    pks = [pk for pk, _ in candidates]
    entry = {
        "pks": pks,
        "scores": [score for _, score in candidates],
        # Computed when first shown (``_reasons_of``), then cached with the candidates.
        "reasons": None,
        # What popular items filling a short list must leave out, as the model did.
        "banned": list(banned),
        "version": model.version_id,
        "source": Recommendation.Source.MODEL,
        "placement": placement,
        "generation": generation,
        "fingerprint": fingerprint,
        "arm": arm_id,
        "rid": None,  # the row is made once the fill-ins are known
    }
    listed, fill = _filled_list(entry, limit, rules=rules, category=category)
    # One row for the list, fill-ins included: nothing to update on this request.
    candidates_set = set(pks)
    entry["rid"] = _save_list(
        Recommendation.Source.MODEL,
        placement,
        model.version_id,
        pks + [pk for pk in fill if pk not in candidates_set],
        owner=list_owner(user=user, session_key=session_key),
        arm_id=arm_id,
    )
    entry["filled"] = fill
    if listed.source == Recommendation.Source.MODEL:  # not the popular list that stood in
        listed.recommendation_id = entry["rid"]
    _cache().set(key, entry, recommender_settings.RECOMMENDATIONS_CACHE_SECONDS)
    listed.reasons_of = _reasons_of(entry, key, model, user, session_key, history)
    return listed


def _personal_list(entry, key, limit, *, rules, category):
    """A cached personal list under the rules, its popular fill-ins recorded in its row."""
    listed, fill = _filled_list(entry, limit, rules=rules, category=category)
    if fill:
        _record_fill(entry, key, fill)
    return listed


def _filled_list(entry, limit, *, rules, category):
    """The model's candidates under the rules, cut to ``limit``, filled up with popular
    items; returns the list and the fill-ins' keys.

    The candidates already leave out what the shopper saw, bought or excluded ("banned").
    Popular items that fill a short list are shown under the list's id, so they belong in
    its row: a click on one is credited to the list it was shown in. A list the rules
    leave empty is the popular list itself, with its own row (no fill-ins).
    """
    listed = _from_cached(entry, limit, diversity=rules["diversity"], category=category)
    if len(listed) >= limit:
        return listed, []
    fallback = _popular(
        limit=limit,
        category=category,
        placement=entry["placement"],
        exclude=set(entry["banned"]) | {item.pk for item in listed.items},
        arm_id=entry.get("arm"),
    )
    if not listed:
        return fallback, []
    fill = fallback.items[: limit - len(listed)]
    listed.items += fill
    listed.scores += [0.0] * (len(listed.items) - len(listed.scores))
    return listed, [item.pk for item in fill]


def _record_fill(entry, key, pks):
    """Add popular fill-in items to the Recommendation row of a personal list, once each.

    The cached entry remembers what its row already holds, so a cache hit showing the
    same fill-ins writes nothing; the row is locked while it grows, so two requests
    adding different fill-ins both land.
    """
    recorded = set(entry["pks"]) | set(entry.get("filled", ()))
    new = [pk for pk in pks if pk not in recorded]
    if not new:
        return
    with transaction.atomic(using=router.db_for_write(Recommendation)):
        row = Recommendation.objects.select_for_update().filter(pk=entry["rid"]).first()
        if row is not None:
            shown = set(row.items)
            row.items += [item for item in map(itemkeys.to_json, new) if item not in shown]
            row.save(update_fields=["items"])
    entry["filled"] = [*entry.get("filled", ()), *new]
    _cache().set(key, entry, recommender_settings.RECOMMENDATIONS_CACHE_SECONDS)


def _reasons_of(entry, key, model, user, session_key, history=None):
    """What gives a personal list's reasons when they are first read (``RecommendationList``).

    The reasons of all the cached candidates are computed once, from ``history`` (the
    events the list was computed from) or, on a cache hit, the shopper's latest events read
    again, and cached with the candidates, so every later hit reuses them. None (no
    reasons at all) with REASONS off.
    """
    if not recommender_settings.REASONS:
        return None

    def reasons(items):
        if not set(entry["pks"]).intersection(item.pk for item in items):
            return []  # popular items only (the candidates were all filtered out)
        if entry.get("reasons") is None:
            latest = history
            if latest is None:
                latest, _ = shopper_activity(
                    user, session_key, length=model.history_length, with_purchases=False
                )
            entry["reasons"] = _reasons(model, latest, entry["pks"])
            _cache().set(key, entry, recommender_settings.RECOMMENDATIONS_CACHE_SECONDS)
        return _shown_reasons(entry, items)

    return reasons


def _reasons(model, history, pks):
    """[(pk of the shopper's own item, kind) or None] parallel to ``pks``, cached with them.

    Only items of ``history`` (the shopper's latest events, the model's whole input) that
    shoppers may still look at can be named: the kNN lists built from everyone's behaviour
    weigh the shopper's items, they never supply one. The kind is the shopper's event on
    the item that training weighs most (a purchase before a view).
    """
    if not pks:
        return []
    visible = visible_items({pk for pk, _ in history})
    if not visible:
        return [None] * len(pks)
    found = model.reasons(history, pks, eligible=visible)
    weights = event_kind_weights()
    kind_of = {}
    for pk, kind in history:  # oldest first: of equal weights, the latest kind is kept
        if weights.get(kind, 0) > 0 and weights[kind] >= weights.get(kind_of.get(pk), 0):
            kind_of[pk] = kind
    return [(found[pk], kind_of[found[pk]]) if found.get(pk) in kind_of else None for pk in pks]


def _shown_reasons(entry, items):
    """The cached reasons of ``items`` whose item shoppers may still look at, in one query."""
    cached = dict(zip(entry["pks"], entry.get("reasons") or (), strict=False))
    wanted = [cached.get(item.pk) for item in items]
    visible = visible_items({reason[0] for reason in wanted if reason}) if any(wanted) else {}
    return [
        Reason(visible[reason[0]], reason[1]) if reason and reason[0] in visible else None
        for reason in wanted
    ]


# --------------------------------------------------------------------------- items


def _item_list(source, item, compute, *, limit, placement, exclude, user, session_key):
    """Shared path of similar / bought-together: cached candidates, fresh rules.

    In an experiment's placement the shopper's arm decides: a version arm's lists are
    computed with its version and cached per arm; a popularity arm gets popular items.
    """
    limit, placement = clean_limit(limit), clean_placement(placement)
    active = active_model.get()
    pk = _item_key(getattr(item, "pk", item))
    experiment = _experiment_in(placement)
    arm = experiments.arm_for(experiment, user, session_key) if experiment else None
    if arm is not None and arm.serves_popular_items:
        return _popular(
            limit=limit, placement=placement, exclude=set(exclude) | {pk}, arm_id=arm.id
        )
    model = _model_of(arm, active)
    arm_id = arm.id if arm else None
    cached = _cached_candidates(
        cachekeys.item_list(source, pk, arm_id),
        lambda: compute(pk, model),
        recommender_settings.ITEM_LISTS_CACHE_SECONDS,
        source=source,
        placement=placement,
        version_id=model.version_id if model else None,
        arm_id=arm_id,
    )
    return _from_cached(cached, limit, exclude=set(exclude) | {pk})


def similar(item, *, limit=10, placement="", exclude=(), user=None, session_key=""):
    """Items most like ``item``: embedding cosine, co-occurrence cosine or both, whichever
    training measured best at finding shoppers' next items (``HybridRanker.similar``).

    In an experiment's placement (the shopper is needed to find their arm) a version arm's
    similar items are its own version's, so an arm is one model throughout the placements
    it runs in. A popularity arm gets popular items, not the active version's similar
    items: it stands for the store without a trained model, and a list from the active
    model in that arm would credit the popularity arm with the model's work.
    """

    def compute(pk, model):
        if model is None:
            return []
        return model.similar(pk, recommender_settings.MAX_LIMIT * OVERFETCH)

    return _item_list(
        Recommendation.Source.SIMILAR,
        item,
        compute,
        limit=limit,
        placement=placement,
        exclude=exclude,
        user=user,
        session_key=session_key,
    )


def bought_together(item, *, limit=10, placement="", exclude=(), user=None, session_key=""):
    """Items the signed-in users who bought (or carted) ``item`` also bought: co-occurrence.

    Only signed-in users count. A pair shown once BOUGHT_TOGETHER_MIN_SHOPPERS shoppers
    did it would otherwise disclose one shopper's basket to anyone who opens one anonymous
    session and carts the item with every other item: that session would be the second
    "shopper" of each of the victim's pairs.

    No model computes these, so every version arm of an experiment shows the same pairs
    (the list's row carries the arm); a popularity arm gets popular items, as in ``similar``.
    """

    def compute(pk, model):
        kinds = recommender_settings.BOUGHT_TOGETHER_KINDS
        buyers = Event.objects.filter(item_id=pk, kind__in=kinds, user__isnull=False).order_by()
        rows = (
            Event.objects.filter(kind__in=kinds, user_id__in=buyers.values("user_id"))
            .exclude(item_id=pk)
            .order_by()
            .values("item_id")
            .annotate(shoppers=Count("user_id", distinct=True))
            .filter(shoppers__gte=recommender_settings.BOUGHT_TOGETHER_MIN_SHOPPERS)
            .order_by("-shoppers", "item_id")[: recommender_settings.MAX_LIMIT * OVERFETCH]
        )
        return [(row["item_id"], float(row["shoppers"])) for row in rows]

    return _item_list(
        Recommendation.Source.BOUGHT_TOGETHER,
        item,
        compute,
        limit=limit,
        placement=placement,
        exclude=exclude,
        user=user,
        session_key=session_key,
    )


def popular(
    *,
    limit=10,
    category=None,
    placement="",
    window="popular",
    exclude=(),
    user=None,
    session_key="",
):
    """The store's popular (last POPULAR_DAYS) or trending (rising in TRENDING_HOURS) items.

    Every arm of an experiment gets the same popular items; in an experiment's placement
    the shopper's list row carries their arm, so clicks on it count for that arm.
    """
    limit, placement = clean_limit(limit), clean_placement(placement)
    if window not in ("popular", "trending"):
        raise BadRequest("window must be 'popular' or 'trending'.")
    experiment = _experiment_in(placement)
    arm = experiments.arm_for(experiment, user, session_key) if experiment else None
    return _popular(
        limit=limit,
        category=category,
        placement=placement,
        window=window,
        exclude=exclude,
        arm_id=arm.id if arm else None,
    )


def _popular(*, limit, placement, category=None, window="popular", exclude=(), arm_id=None):
    """``popular`` for a known arm (``limit``, ``placement`` and ``window`` already checked)."""
    cached = _cached_candidates(
        cachekeys.popular(window),
        lambda: popularity_ranking(trending=window == "trending"),
        recommender_settings.POPULAR_CACHE_SECONDS,
        source=Recommendation.Source.POPULAR,
        placement=placement,
        version_id=None,
        arm_id=arm_id,
    )
    if category is not None and not recommender_settings.ITEM_CATEGORY_FIELD:
        raise BadRequest("This store's items have no category (ITEM_CATEGORY_FIELD is not set).")
    return _from_cached(
        cached,
        limit,
        category=category,
        exclude=exclude,
        diversity=placement_rules(placement)["diversity"],
    )


def popularity_ranking(trending=False, size=500):
    """[(item pk, score)] by kind-weighted events; trending favours the last hours."""
    now = timezone.now()
    since = now - timedelta(days=recommender_settings.POPULAR_DAYS)
    # The kind weights training uses (CLEANING), the store's own kinds included.
    weights = {kind: w for kind, w in event_kind_weights().items() if w > 0}
    weight = Case(
        *[When(kind=k, then=Value(w)) for k, w in weights.items()],
        default=Value(0.0),
        output_field=FloatField(),
    )
    events = Event.objects.filter(occurred_at__gte=since, kind__in=list(weights))
    if trending:
        recent = now - timedelta(hours=recommender_settings.TRENDING_HOURS)
        window_share = recommender_settings.TRENDING_HOURS / (
            24 * recommender_settings.POPULAR_DAYS
        )
        rows = (
            events.values("item_id")
            .annotate(
                recent=Sum(
                    Case(
                        When(occurred_at__gte=recent, then=weight),
                        default=Value(0.0),
                        output_field=FloatField(),
                    )
                ),
                total=Sum(weight),
            )
            .filter(recent__gt=0)
        )
        # Rising items: recent weight over what the long window would predict (smoothed).
        ranked = sorted(
            ((r["item_id"], r["recent"] / (r["total"] * window_share + 1.0)) for r in rows),
            key=lambda pair: (-pair[1], pair[0]),
        )
        return ranked[:size]
    rows = events.values("item_id").annotate(score=Sum(weight)).order_by("-score", "item_id")[:size]
    return [(r["item_id"], float(r["score"])) for r in rows]


def record_impressions(recommendation_ids):
    """Count one impression for each list the tracker saw on screen."""
    from django.db.models import F

    ids = {str(rid) for rid in recommendation_ids}
    return Recommendation.objects.filter(pk__in=ids).update(impressions=F("impressions") + 1)


def delete_old_recommendations(batch_size=5_000):
    """Delete Recommendation rows older than RECOMMENDATION_RETENTION_DAYS; return how many.

    One row is stored per list served, so without this the table grows with traffic.
    Batches keep each delete (and its locks) short on a large table. Click events keep
    their ``recommendation_id``; only the lists' rows go.
    """
    since = timezone.now() - timedelta(days=recommender_settings.RECOMMENDATION_RETENTION_DAYS)
    old = Recommendation.objects.filter(created_at__lt=since).order_by()
    deleted = 0
    while True:
        batch = list(old.values_list("pk", flat=True)[:batch_size])
        if not batch:
            return deleted
        deleted += Recommendation.objects.filter(pk__in=batch).delete()[0]


def warm_up():
    """Load the active model version now, before this web process serves its first request.

    Call it from the server's worker-start hook (gunicorn's ``post_worker_init``, as in
    ``shop_demo/gunicorn.conf.py``), never at import: ``manage.py`` commands, migrations and
    the admin stay free of torch. Otherwise the first requests of every new worker wait
    7-10 s for torch and the model. The versions of running experiments' arms are loaded
    too. Returns the version now served (None: no active version, shoppers get popular
    items).
    """
    model = active_model.get()
    running = experiments.running_experiments.get()
    arm_models.follow(running)
    for experiment in running.experiments:
        for arm in experiment.arms:
            if arm.model_key is not None:
                arm_models.model_for(arm, model)
    return model.version_id if model is not None else None
