"""Events -> cleaned sequences -> trained model -> verified artifact -> ModelVersion.

The Django half of training: it claims the run and keeps its heartbeat, exports events
(pseudonymous shoppers, never personal data), hands them to ``ml.pipeline.run`` (pure
PyTorch: fit the model and the baselines, measure them alike), stores the artifact
through ``artifacts``, records the version with its curve and metrics, and promotes it
only if it is at least as good as the active version. Celery tasks and management
commands call ``run_training``.
"""

import dataclasses
import logging
import threading
import time
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import artifacts, itemkeys
from .conf import merged, recommender_settings
from .models import Event, ModelVersion
from .pseudonyms import export_shopper

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """A training run cannot go on (too little data, bad settings); the message says why."""


class TrainingInProgress(TrainingError):
    pass


class TrainingAbandoned(TrainingError):
    """The run is no longer ``running`` (the stale-run sweeper failed it): stop, promote nothing."""


# --------------------------------------------------------------------------- queueing


def request_training(trigger=ModelVersion.Trigger.COMMAND, *, config=None, task_id=""):
    """Create a queued version; ``tasks.queue_training`` also sends it to a worker.

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
        return ModelVersion.objects.create(
            trigger=trigger,
            model_name=(config or {}).get("MODEL", recommender_settings.MODEL),
            config=config or {},
            task_id=task_id,
        )


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


def export_interactions(since=None, chunk_size=None):
    """Yield ``(shopper, item, kind, value, ts)`` rows for training, in bounded memory.

    Only pseudonymous shoppers, item ids, kinds, values and times leave the database.
    Item ids are in their JSON form (``itemkeys.to_json``): the artifact stores them as JSON.
    """
    chunk_size = chunk_size or recommender_settings.EXPORT_CHUNK_SIZE
    events = Event.objects.order_by()
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    pseudonyms = {}
    item_key = itemkeys.to_json
    rows = events.values_list("user_id", "session_key", "item_id", "kind", "value", "occurred_at")
    for user_id, session_key, item_id, kind, value, occurred_at in rows.iterator(
        chunk_size=chunk_size
    ):
        key = (user_id, session_key if user_id is None else "")
        shopper = pseudonyms.get(key)
        if shopper is None:
            shopper = pseudonyms[key] = export_shopper(*key)
        yield (shopper, item_key(item_id), kind, value, occurred_at.timestamp())


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
    """The run's settings: the store's RECOMMENDER values, the version's merged over them."""
    names = (
        "MODEL",
        "MODEL_CONFIG",
        "TRAINING",
        "CLEANING",
        "HOLDOUT_DAYS",
        "MIN_TRAINING_EVENTS",
        "HISTORY_LENGTH",
        "MIN_VALIDATION_SHOPPERS",
        "REFIT",
    )
    cfg = {name: getattr(recommender_settings, name) for name in names}
    for name, value in (version.config or {}).items():
        if name in names:
            both_dicts = isinstance(cfg[name], dict) and isinstance(value, dict)
            cfg[name] = merged(cfg[name], value) if both_dicts else value
    return cfg


def train_config_for(cfg):
    """The run's ml.train.TrainConfig: TRAINING, with the window HISTORY_LENGTH decides."""
    from .ml import train

    _refuse_own_max_len(cfg)
    return train.TrainConfig.from_dict({**cfg["TRAINING"], "max_len": cfg["HISTORY_LENGTH"]})


def model_config_for(cfg):
    """The run's model hyper-parameters: MODEL_CONFIG, with the max_len HISTORY_LENGTH decides.

    The model keeps it in its artifact, and serving reads that many events for it.
    """
    _refuse_own_max_len(cfg)
    return {**cfg["MODEL_CONFIG"], "max_len": cfg["HISTORY_LENGTH"]}


def _refuse_own_max_len(cfg):
    for name in ("TRAINING", "MODEL_CONFIG"):
        if "max_len" in cfg[name]:
            raise TrainingError(
                f"RECOMMENDER[{name!r}]['max_len'] is not a setting: HISTORY_LENGTH decides "
                "the history length for training and serving alike."
            )


def _train(version, progress):
    """Export, fit and measure every candidate (``ml.pipeline``), choose the one to serve,
    refit it on every event, store the verified artifact, decide promotion."""
    from .ml import artifact, pipeline

    cfg = _settings_for(version)
    train_config = train_config_for(cfg)
    budget = train_config.max_seconds
    if cfg["REFIT"] and budget is not None:
        # Half the budget to train and validate, half to refit the chosen model.
        train_config = dataclasses.replace(train_config, max_seconds=budget / 2)

    progress.stage("export")
    sequences, split = store_split(cfg, train_config.seed, on_stage=progress.stage)
    ModelVersion.objects.filter(pk=version.pk).update(
        data_stats=_data_stats(sequences, split), model_name=cfg["MODEL"]
    )

    result = pipeline.run(
        split,
        cfg["MODEL"],
        model_config_for(cfg),
        train_config,
        progress=progress,
        on_stage=progress.stage,
    )
    ModelVersion.objects.filter(pk=version.pk).update(curve=_jsonable(result.curve))
    choice = pipeline.choose(result, cfg["MIN_VALIDATION_SHOPPERS"])
    results = pipeline.served_metrics(result, choice)
    served = result.scores[choice.name].model
    trained_until = split.cut_ts
    if cfg["REFIT"]:
        served, results["choice"]["refit"] = _refit(
            pipeline, choice, result, sequences, train_config, budget, progress
        )
        if results["choice"]["refit"]["done"]:
            trained_until = max((float(t[-1]) for t in sequences.times if len(t)), default=None)
    results["choice"]["validated_until"] = split.cut_ts
    results["choice"]["trained_until"] = trained_until
    results = _jsonable(results)

    index = None
    if split.n_items > recommender_settings.ANN_MIN_ITEMS and hasattr(served, "item_embeddings"):
        progress.stage("index")
        index = pipeline.build_index(served, split.validation, train_config.max_len)

    progress.stage("save")
    # What serves: a net as its hybrid ranker (net, kNN lists, blend weight, "similar" choice).
    payload = artifact.artifact_bytes(
        model_name=served.name,
        model_config=served.config,
        state_dict=served.state_dict(),
        item_ids=split.item_map.to_list(),
        kind_names=list(split.kind_names),
        metrics=results,
        extra={"version": version.pk, "trained_until": trained_until},
    )
    name, digest = artifacts.write_verified(version.pk, payload)
    if index is not None:
        artifacts.save_index(name, index)

    done = {
        "stage": "done",
        "epoch": result.fitted.epochs_run,
        "epochs": train_config.epochs,
        "elapsed": round(time.monotonic() - progress.started, 1),
    }
    ModelVersion.objects.filter(pk=version.pk).update(model_name=choice.name)
    _finish(version, results, name, digest, done)


def _refit(pipeline, choice, result, sequences, train_config, budget, progress):
    """The chosen model refit on every event within what is left of the budget, or the
    validated one if the refit cannot finish: ``(model to serve, what happened)``."""
    progress.stage("refit", model=choice.name)
    left = None
    if budget is not None:
        left = max(budget - (time.monotonic() - progress.started), 1.0)
    epochs = result.fitted.best_epoch if choice.name == result.name else 1
    refit = pipeline.refit(
        choice.name,
        result.scores[choice.name].model,
        sequences,
        train_config,
        epochs=epochs,
        max_seconds=left,
        progress=lambda row: progress({**row, "stage": "refit"}),
        knn=result.scores["itemknn"].model if "itemknn" in result.scores else None,
    )
    served = refit.model if refit.model is not None else result.scores[choice.name].model
    return served, refit.to_dict()


def _data_stats(sequences, split):
    """What the run trained on, for the version's page: counts only, never who."""
    return {
        "shoppers": len(sequences),
        "items": sequences.n_items,
        "events": sequences.n_events,
        "train_events": int(sum(len(s) for s in split.train_items)),
        "validation_shoppers": len(split.validation),
        "test_shoppers": len(split.test),
        "cleaning": sequences.report.to_dict() if sequences.report else {},
    }


def _finish(version, metrics, artifact_name, sha256, progress):
    """Ready and the promotion decision in one transaction: nobody sees a ready run undecided."""
    finished = timezone.now()
    with transaction.atomic():
        ready = ModelVersion.objects.filter(
            pk=version.pk, status=ModelVersion.Status.RUNNING
        ).update(
            status=ModelVersion.Status.READY,
            metrics=metrics,
            artifact=artifact_name,
            artifact_sha256=sha256,
            finished_at=finished,
            heartbeat_at=finished,
            progress=progress,
        )
        if not ready:  # failed as stale while it ran: the lock may be another run's by now
            raise TrainingAbandoned(
                f"Training v{version.pk} was marked failed before it finished; not promoted."
            )
        version.refresh_from_db()
        version.promote(tolerance=recommender_settings.PROMOTION_TOLERANCE)


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
    """Measure a stored version on today's held-out events, beside freshly fitted baselines."""
    from .ml import pipeline

    cfg = _settings_for(version)
    predictor = artifacts.read_predictor(version.artifact, version.artifact_sha256)
    # Measured with the history length the version was trained with, as it serves.
    train_config = train_config_for({**cfg, "HISTORY_LENGTH": predictor.max_len})
    _, split = store_split(cfg, train_config.seed, on_stage=on_stage)
    if on_stage:
        on_stage("evaluate")
    results = pipeline.measure_trained(
        predictor.model, predictor.item_map, predictor.kind_names, split, train_config
    )
    return _jsonable(results)


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
