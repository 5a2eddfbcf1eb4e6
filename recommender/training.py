"""Events -> cleaned sequences -> trained model -> verified artifact -> ModelVersion.

The Django half of training: it exports events (pseudonymous shoppers, never personal
data), hands them to ``recommender.ml`` (pure PyTorch), stores the artifact, records the
version with its curve and metrics, and promotes it only if it is at least as good as
the active version. Celery tasks and management commands call ``run_training``.
"""

import hashlib
import hmac
import io
import logging
import threading
import time
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from .conf import recommender_settings
from .models import Event, ModelVersion

logger = logging.getLogger(__name__)

BASELINES = ("popularity", "itemknn")
SAMPLED_METRICS_MIN_ITEMS = 1000


class TrainingError(Exception):
    """A training run cannot go on (too little data, bad settings); the message says why."""


class TrainingInProgress(TrainingError):
    pass


class TrainingAbandoned(TrainingError):
    """The run is no longer ``running`` (the stale-run sweeper failed it): stop, promote nothing."""


# --------------------------------------------------------------------------- queueing


def request_training(
    trigger=ModelVersion.Trigger.COMMAND, *, config=None, enqueue=True, task_id=""
):
    """Create a queued version and send it to the Celery worker after commit.

    Refuses while another run is queued or running, so the admin button and beat can
    never start two trainings; the database constraint on running versions backs this.
    ``task_id`` records the Celery task that creates the run itself (beat's), so that a
    redelivery of that message finds its run instead of starting another.
    """
    fail_stale_runs()
    with transaction.atomic():
        busy = ModelVersion.objects.select_for_update().running().first()
        if busy is not None:
            raise TrainingInProgress(f"Training v{busy.pk} is already {busy.status}.")
        version = ModelVersion.objects.create(
            trigger=trigger,
            model_name=(config or {}).get("MODEL", recommender_settings.MODEL),
            config=config or {},
            task_id=task_id,
        )
        if enqueue:
            from .tasks import train

            transaction.on_commit(lambda: _send(train, version.pk))
    return version


def _send(task, version_id):
    """Queue the run; if the broker cannot take it, fail the run at once (it would hold the lock)."""
    try:
        result = task.apply_async(args=[version_id], queue=recommender_settings.TRAINING_QUEUE)
    except Exception as exc:  # noqa: BLE001 - any broker failure: say so on the run, free the lock
        logger.error("Training v%s could not be queued: %s", version_id, exc)
        ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.QUEUED).update(
            status=ModelVersion.Status.FAILED,
            finished_at=timezone.now(),
            error=f"Could not be queued (is the Celery broker reachable?): {type(exc).__name__}: {exc}"[
                :5000
            ],
        )
        return
    ModelVersion.objects.filter(pk=version_id, task_id="").update(task_id=result.id or "")


def fail_stale_runs():
    """Mark runs that show no sign of life for TRAINING_HEARTBEAT_TIMEOUT as failed.

    Running: the worker stopped sending heartbeats (killed, lost). A live run beats from a
    thread of its own every few seconds (``_Heartbeat``), however long an epoch or an
    evaluation takes, so only a dead or unreachable worker goes stale. If its worker was
    merely cut off and comes back, it finds the run no longer ``running`` and stops
    without promoting anything.

    Queued: no worker claimed the run (its message was lost, e.g. with a Redis broker that
    restarted without persistence, or no worker serves the training queue). Left alone it
    would hold the training lock for ever; if the message does arrive later, the claim
    finds the run failed and does nothing.

    Failing a run frees the lock, so the next one can start.
    """
    now = timezone.now()
    limit = now - timedelta(seconds=recommender_settings.TRAINING_HEARTBEAT_TIMEOUT)
    dead = ModelVersion.objects.filter(
        status=ModelVersion.Status.RUNNING, heartbeat_at__lt=limit
    ).update(
        status=ModelVersion.Status.FAILED,
        finished_at=now,
        error="The worker stopped reporting (killed or lost); the run was abandoned.",
    )
    lost = ModelVersion.objects.filter(
        status=ModelVersion.Status.QUEUED, created_at__lt=limit
    ).update(
        status=ModelVersion.Status.FAILED,
        finished_at=now,
        error=(
            f"No worker started the run within {recommender_settings.TRAINING_HEARTBEAT_TIMEOUT:g} s "
            "(its message was lost, or no worker serves the training queue); the run was abandoned."
        ),
    )
    return dead + lost


# --------------------------------------------------------------------------- export


def pseudonym_key():
    """The HMAC key of shopper pseudonyms: RECOMMENDER["PSEUDONYM_KEY"], else one derived.

    Never SECRET_KEY itself: whoever knows the key can re-compute every registered
    shopper's pseudonym from user ids 1, 2, 3..., so a store whose SECRET_KEY is weak or
    public (a demo default) must not hand it to the export. The derived key is a salted
    HMAC of SECRET_KEY (secret when SECRET_KEY is); ``check --deploy`` asks for a key of
    its own (recommender.W002).
    """
    key = recommender_settings.PSEUDONYM_KEY
    if key:
        return key.encode() if isinstance(key, str) else bytes(key)
    return hmac.new(
        settings.SECRET_KEY.encode(), b"recommender.shopper_pseudonym", hashlib.sha256
    ).digest()


def shopper_pseudonym(user_id=None, session_key=""):
    """A stable id for a shopper that does not reveal who they are without the pseudonym key."""
    raw = f"u{user_id}" if user_id is not None else f"s{session_key}"
    return hmac.new(pseudonym_key(), raw.encode(), hashlib.sha256).hexdigest()[:20]


def export_interactions(since=None, chunk_size=None):
    """Yield ``(shopper, item, kind, value, ts)`` rows for training, in bounded memory.

    Only pseudonymous shoppers, item ids, kinds, values and times leave the database.
    """
    chunk_size = chunk_size or recommender_settings.EXPORT_CHUNK_SIZE
    events = Event.objects.order_by()
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    pseudonyms = {}
    rows = events.values_list("user_id", "session_key", "item_id", "kind", "value", "occurred_at")
    for user_id, session_key, item_id, kind, value, occurred_at in rows.iterator(
        chunk_size=chunk_size
    ):
        key = (user_id, session_key if user_id is None else "")
        shopper = pseudonyms.get(key)
        if shopper is None:
            shopper = pseudonyms[key] = shopper_pseudonym(*key)
        yield (shopper, item_id, kind, value, occurred_at.timestamp())


# --------------------------------------------------------------------------- running


def heartbeat_interval():
    """Seconds between heartbeats: a fifth of the timeout, between 0.2 s and 30 s."""
    return max(0.2, min(30.0, recommender_settings.TRAINING_HEARTBEAT_TIMEOUT / 5))


class _Heartbeat:
    """Refreshes ``heartbeat_at`` from a daemon thread while the run is alive.

    Progress reports come once per epoch, and an epoch, the evaluation or the export can
    take longer than TRAINING_HEARTBEAT_TIMEOUT on a large store: the thread keeps a live
    run from looking dead. It dies with the worker process, which is what makes a killed
    run go stale. It stops by itself when the row is no longer ``running``, and never runs
    inside a caller's transaction (its own connection could not see, or would wait on, the
    claimed row).
    """

    def __init__(self, version_id):
        self.version_id = version_id
        self.interval = heartbeat_interval()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        from django.db import connection

        if connection.in_atomic_block:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"recommender-heartbeat-v{self.version_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self):
        from django.db import connection

        try:
            while not self._stop.wait(self.interval):
                try:
                    alive = ModelVersion.objects.filter(
                        pk=self.version_id, status=ModelVersion.Status.RUNNING
                    ).update(heartbeat_at=timezone.now())
                except Exception:  # noqa: BLE001 - a database hiccup: beat again next time
                    logger.warning(
                        "Heartbeat of training v%s failed; retrying", self.version_id, exc_info=True
                    )
                    connection.close()
                    continue
                if not alive:
                    return
        finally:
            connection.close()


class _Progress:
    """Writes the run's live progress and heartbeat to its row, at most once a second.

    Raises TrainingAbandoned when the row is no longer ``running``, which stops a run
    that the stale-run sweeper has already failed at its next progress report.
    """

    def __init__(self, version, echo=None):
        self.version = version
        self.echo = echo
        self.last = 0.0
        self.started = time.monotonic()

    def __call__(self, info, force=False):
        info = {**info, "elapsed": round(time.monotonic() - self.started, 1)}
        if self.echo:
            self.echo(info)
        now = time.monotonic()
        if force or now - self.last >= 1.0:
            self.last = now
            alive = ModelVersion.objects.filter(
                pk=self.version.pk, status=ModelVersion.Status.RUNNING
            ).update(progress=_jsonable(info), heartbeat_at=timezone.now())
            if not alive:
                raise TrainingAbandoned(
                    f"Training v{self.version.pk} is no longer running (failed as stale?)."
                )

    def stage(self, name, **extra):
        self({"stage": name, **extra}, force=True)


def run_training(version_id, *, echo=None):
    """Run a queued version to the end: ready (and maybe active) or failed.

    Idempotent: the run is claimed with a conditional UPDATE, so a redelivered task finds
    nothing to claim and returns. Any error marks the run failed and leaves the active
    version untouched.
    """
    now = timezone.now()
    try:
        claimed = ModelVersion.objects.filter(
            pk=version_id, status=ModelVersion.Status.QUEUED
        ).update(
            status=ModelVersion.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            progress={"stage": "starting"},
        )
    except IntegrityError:
        ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.QUEUED).update(
            status=ModelVersion.Status.FAILED,
            finished_at=now,
            error="Another training was running.",
        )
        return ModelVersion.objects.get(pk=version_id)
    if not claimed:
        logger.info("Training v%s was already claimed; nothing to do.", version_id)
        return ModelVersion.objects.get(pk=version_id)
    version = ModelVersion.objects.get(pk=version_id)
    progress = _Progress(version, echo)
    heartbeat = _Heartbeat(version_id).start()
    try:
        _train(version, progress)
    except TrainingAbandoned:
        logger.warning(
            "Training v%s was abandoned (marked failed while it ran); nothing promoted.", version_id
        )
        raise
    except Exception as exc:
        logger.exception("Training v%s failed", version_id)
        ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.RUNNING).update(
            status=ModelVersion.Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:5000],
            progress={**ModelVersion.objects.get(pk=version_id).progress, "stage": "failed"},
        )
        raise
    finally:
        heartbeat.stop()
    return ModelVersion.objects.get(pk=version_id)


def _settings_for(version):
    """The run's settings: the store's RECOMMENDER values, overridden by the version's."""
    names = ("MODEL", "MODEL_CONFIG", "TRAINING", "CLEANING", "HOLDOUT_DAYS", "MIN_TRAINING_EVENTS")
    merged = {name: getattr(recommender_settings, name) for name in names}
    merged.update({k: v for k, v in (version.config or {}).items() if k in names})
    return merged


def _train(version, progress):
    from .ml import artifact, metrics, nets, train

    cfg = _settings_for(version)
    train_config = train.TrainConfig.from_dict(cfg["TRAINING"])

    progress.stage("export")
    sequences, split = store_split(cfg, train_config.seed, on_stage=progress.stage)
    stats = {
        "shoppers": len(sequences),
        "items": sequences.n_items,
        "events": sequences.n_events,
        "train_events": int(sum(len(s) for s in split.train_items)),
        "validation_shoppers": len(split.validation),
        "test_shoppers": len(split.test),
        "cleaning": sequences.report.to_dict() if sequences.report else {},
    }
    ModelVersion.objects.filter(pk=version.pk).update(data_stats=stats, model_name=cfg["MODEL"])

    progress.stage("train", epoch=0, epochs=train_config.epochs)
    import torch

    torch.manual_seed(train_config.seed)  # the initial weights too: a run is reproducible
    model = nets.build_model(cfg["MODEL"], split.n_items, split.n_kinds, **cfg["MODEL_CONFIG"])
    fitted = train.fit(model, split, train_config, progress=progress)
    curve = _jsonable(fitted.curve)
    ModelVersion.objects.filter(pk=version.pk).update(curve=curve)

    progress.stage("evaluate")
    results = {
        "valid": _evaluate(fitted.model, split.validation, split, train_config, metrics),
        "test": _evaluate(fitted.model, split.test, split, train_config, metrics),
        "baselines": {},
    }
    for name in BASELINES:
        if name == cfg["MODEL"]:
            continue
        baseline = train.fit(
            nets.build_model(name, split.n_items, split.n_kinds), split, train_config
        ).model
        results["baselines"][name] = {
            "valid": _evaluate(baseline, split.validation, split, train_config, metrics),
            "test": _evaluate(baseline, split.test, split, train_config, metrics),
        }
    results["best_epoch"] = fitted.best_epoch
    results["stopped"] = fitted.stopped
    results["train_seconds"] = round(fitted.train_seconds, 1)

    progress.stage("save")
    buffer = io.BytesIO()
    artifact.save_artifact(
        buffer,
        model_name=cfg["MODEL"],
        model_config=fitted.model.config,
        state_dict=fitted.model.state_dict(),
        item_ids=split.item_map.to_list(),
        kind_names=list(split.kind_names),
        metrics=_jsonable(results),
        extra={"version": version.pk, "trained_until": split.cut_ts},
    )
    payload = buffer.getvalue()
    storage = storages[recommender_settings.ARTIFACT_STORAGE]
    name = storage.save(
        f"{recommender_settings.ARTIFACT_PATH}/v{version.pk}.pt", ContentFile(payload)
    )
    # Verify what storage holds before it may serve: read back, hash, load.
    with storage.open(name, "rb") as stored:
        stored_bytes = stored.read()
    digest = hashlib.sha256(stored_bytes).hexdigest()
    if digest != hashlib.sha256(payload).hexdigest():
        raise TrainingError("The artifact read back from storage differs from what was written.")
    verified = artifact.load_artifact(io.BytesIO(stored_bytes)).build_model()
    if split.n_items > recommender_settings.ANN_MIN_ITEMS and hasattr(verified, "item_embeddings"):
        progress.stage("index")
        save_ann_index(storage, name, verified, split.validation, train_config.max_len)

    finished = timezone.now()
    # Ready and the promotion decision in one transaction: nobody sees a ready run undecided.
    with transaction.atomic():
        ready = ModelVersion.objects.filter(
            pk=version.pk, status=ModelVersion.Status.RUNNING
        ).update(
            status=ModelVersion.Status.READY,
            metrics=_jsonable(results),
            artifact=name,
            artifact_sha256=digest,
            finished_at=finished,
            heartbeat_at=finished,
            progress={
                "stage": "done",
                "epoch": fitted.epochs_run,
                "epochs": train_config.epochs,
                "elapsed": round(time.monotonic() - progress.started, 1),
            },
        )
        if not ready:  # failed as stale while it ran: the lock may be another run's by now
            raise TrainingAbandoned(
                f"Training v{version.pk} was marked failed before it finished; not promoted."
            )
        version.refresh_from_db()
        promote_if_better(version)


def ann_index_name(artifact_name):
    return f"{artifact_name}.ivf"


def save_ann_index(storage, artifact_name, model, part, max_len, n_queries=500):
    """Build the approximate index for a large catalogue once, at promotion time.

    Its probe count is tuned on real shopper vectors: the validation shoppers' histories
    through the trained model.
    """
    import torch

    from .ml.ann import IVFIndex
    from .ml.metrics import pad_left

    rows = list(range(min(n_queries, len(part))))
    with torch.no_grad():
        queries = (
            model.shopper_vector(
                pad_left([part.items[i] for i in rows], max_len),
                pad_left([part.kinds[i] for i in rows], max_len),
            )
            if rows
            else None
        )
        index = IVFIndex.build(model.item_embeddings().detach(), queries=queries)
    buffer = io.BytesIO()
    index.save(buffer)
    storage.save(ann_index_name(artifact_name), ContentFile(buffer.getvalue()))


def store_split(cfg, seed, on_stage=None):
    """The store's events as cleaned sequences and a time split (last HOLDOUT_DAYS held out)."""
    from .ml import data

    rows = list(export_interactions())
    if len(rows) < cfg["MIN_TRAINING_EVENTS"]:
        raise TrainingError(
            f"Only {len(rows)} events; at least {cfg['MIN_TRAINING_EVENTS']} are needed to train."
        )
    if on_stage:
        on_stage("clean", events=len(rows))
    sequences = data.build_sequences(rows, data.CleaningConfig.from_dict(cfg["CLEANING"]))
    del rows
    split = data.time_split(sequences, cfg["HOLDOUT_DAYS"] * 86400, seed=seed)
    if len(split.validation) == 0 or len(split.test) == 0:
        raise TrainingError(
            f"No shopper has events both before and in the last {cfg['HOLDOUT_DAYS']} days; "
            "there is nothing to validate on (lower HOLDOUT_DAYS or wait for more events)."
        )
    return sequences, split


def evaluate_version(version, *, on_stage=None):
    """Measure a stored version on today's held-out events, beside freshly fitted baselines.

    The version's item vocabulary is the one it was trained with: histories and targets
    are mapped to it by store id, and targets it has never seen count as misses.
    """
    from django.core.files.storage import storages

    from .ml import data, metrics, nets, train
    from .ml.inference import Predictor

    cfg = _settings_for(version)
    train_config = train.TrainConfig.from_dict(cfg["TRAINING"])
    storage = storages[recommender_settings.ARTIFACT_STORAGE]
    with storage.open(version.artifact, "rb") as stored:
        predictor = Predictor.from_artifact(stored)
    _, split = store_split(cfg, train_config.seed, on_stage=on_stage)
    if on_stage:
        on_stage("evaluate")
    results = {}
    for part_name in ("valid", "test"):
        part = split.validation if part_name == "valid" else split.test
        mapped = _remap(part, split, predictor, data)
        results[part_name] = _evaluate(predictor.model, mapped, predictor, train_config, metrics)
    results["baselines"] = {}
    for name in BASELINES:
        baseline = train.fit(
            nets.build_model(name, split.n_items, split.n_kinds), split, train_config
        ).model
        results["baselines"][name] = {
            "valid": _evaluate(baseline, split.validation, split, train_config, metrics),
            "test": _evaluate(baseline, split.test, split, train_config, metrics),
        }
    return _jsonable(results)


def _remap(part, split, predictor, data):
    """A split part re-indexed into the predictor's item and kind vocabularies."""
    kind_index = {name: i for i, name in enumerate(predictor.kind_names)}
    items, kinds = [], []
    for seq, kind_seq in zip(part.items, part.kinds, strict=True):
        store_items = [predictor.item_map.index(split.item_map.id(int(i)), 0) for i in seq]
        store_kinds = [kind_index.get(split.kind_names[int(k)], 1) for k in kind_seq]
        keep = [j for j, i in enumerate(store_items) if i]
        items.append(np.asarray([store_items[j] for j in keep], dtype=np.int64))
        kinds.append(np.asarray([store_kinds[j] for j in keep], dtype=np.int64))
    # A target the version never saw maps to index 0, which no model can rank: a miss.
    targets = np.asarray(
        [predictor.item_map.index(split.item_map.id(int(t)), 0) for t in part.targets],
        dtype=np.int64,
    )
    return data.SplitPart(part.shopper_index, items, kinds, targets, part.target_kinds)


def _evaluate(model, part, split, train_config, metrics):
    full = metrics.evaluate(
        model, part, 10, "full", n_items=split.n_items, max_len=train_config.max_len
    )
    result = {
        "hr@10": full["hr@10"],
        "ndcg@10": full["ndcg@10"],
        "mrr": full.get("mrr"),
        "coverage@10": full.get("coverage@10"),
        "users": full.get("n_users", len(part)),
    }
    # Sampled metrics (target among 100 unseen items) only mean something in a catalogue
    # much larger than the sample; they are kept for comparison with published numbers.
    if split.n_items >= SAMPLED_METRICS_MIN_ITEMS:
        sampled = metrics.evaluate(
            model, part, 10, "sampled", n_items=split.n_items, max_len=train_config.max_len
        )
        result.update({"sampled_hr@10": sampled["hr@10"], "sampled_ndcg@10": sampled["ndcg@10"]})
    return result


def promote_if_better(version, attempts=5):
    """Activate ``version`` if its validation NDCG@10 >= the active one's - tolerance.

    Safe beside concurrent promotions and rollbacks: the comparison is made against the
    version that is active when the row lock is held (not one that was switched away while
    waiting for it), and an activation that loses a race to another one (the database's
    one-active constraint refuses it) is decided again, rather than failing the run.
    """
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                return _promote_if_better(version)
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            logger.info("Promotion of v%s raced another activation; deciding again.", version.pk)
            time.sleep(0.02 * (attempt + 1))
    return False


def _lock_active_version():
    """The active version, row-locked; None only if none is active once the lock is held."""
    for _ in range(20):
        active = ModelVersion.objects.select_for_update().filter(is_active=True).first()
        # Waiting for the lock, the row may have been switched off: then look again.
        if active is not None or not ModelVersion.objects.filter(is_active=True).exists():
            return active
    return None


def _promote_if_better(version):
    tolerance = recommender_settings.PROMOTION_TOLERANCE
    # Row locks in ModelVersion.activate()'s order (this version, then the active one), so a
    # promotion and an admin's activation of the same version cannot deadlock.
    list(ModelVersion.objects.select_for_update().filter(pk=version.pk))
    active = _lock_active_version()
    mine = version.metric("ndcg@10")
    if active is None:
        decision = "Promoted: no version was active."
    elif active.pk == version.pk:
        return True
    else:
        theirs = active.metric("ndcg@10") or 0.0
        if mine is None or mine < theirs - tolerance:
            shown = "none" if mine is None else f"{mine:.4f}"
            decision = (
                f"Kept as a candidate: validation NDCG@10 {shown} is below the active "
                f"v{active.pk}'s {theirs:.4f} (tolerance {tolerance:g})."
            )
            ModelVersion.objects.filter(pk=version.pk).update(decision=decision)
            version.refresh_from_db()
            return False
        decision = (
            f"Promoted: validation NDCG@10 {mine:.4f} >= active v{active.pk}'s "
            f"{theirs:.4f} (tolerance {tolerance:g})."
        )
    ModelVersion.objects.filter(pk=version.pk).update(decision=decision)
    version.activate()
    return True


def _jsonable(value):
    """Floats/ints/strings/lists/dicts only, NaN and numpy scalars made plain."""
    import math

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
