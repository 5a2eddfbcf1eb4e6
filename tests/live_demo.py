"""The demo served for real, for tests that send simulated shoppers to it.

A seeded demo in the test database, gunicorn serving it (``served``), and an item-kNN
version fitted on the seeded history through training's own steps (``itemknn_version``).
"""

import contextlib
import io

from django.core.management import call_command

from recommender import artifacts, training
from recommender.ml import artifact, nets, pipeline
from recommender.models import ModelVersion

from .faults.processes import Gunicorn

DEMO = {"products": 240, "shoppers": 150, "days": 30, "seed": 42}


def seed_small_demo(**sizes):
    """``seed_demo`` at the tests' size (``DEMO``; ``sizes`` override it)."""
    call_command("seed_demo", stdout=io.StringIO(), verbosity=0, **{**DEMO, **sizes})


@contextlib.contextmanager
def served():
    """gunicorn serving the test database's demo: one process with four threads.

    One process: the server's cache is per process (sessions are cached there), as a
    store's shared Redis would not be.
    """
    server = Gunicorn(workers=1, args=["--worker-class", "gthread", "--threads", "4"])
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def itemknn_version():
    """A ready (not active) version serving item-kNN fitted on every stored event.

    Training's own steps with the model forced: the store's events exported and cleaned
    as training does, item-kNN fitted on all of them as training's refit does, its
    artifact written and verified. Training itself (``recommender_train --model itemknn``)
    serves whichever of item-kNN and popularity validates better, which on a small demo
    can be popularity; an arm meant to be item-kNN must be item-kNN.
    """
    cfg = training._settings_for(ModelVersion(config={"MODEL": "itemknn"}))  # the store's settings
    train_config = training.train_config_for(cfg)
    sequences, split = training.store_split(cfg, train_config.seed)
    # Measured as training measures every candidate: on the held-out days, beside popularity.
    scores = pipeline.fit_baselines(split, train_config)
    template = nets.build_model(
        "itemknn", sequences.n_items, sequences.n_kinds, max_len=cfg["HISTORY_LENGTH"]
    )
    fitted = pipeline.refit("itemknn", template, sequences, train_config, epochs=1)
    model = fitted.model
    metrics = training._jsonable(
        {**scores["itemknn"].to_dict(), "baselines": {"popularity": scores["popularity"].to_dict()}}
    )
    version = ModelVersion.objects.create(status=ModelVersion.Status.QUEUED, model_name="itemknn")
    payload = artifact.artifact_bytes(
        model_name=model.name,
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=sequences.item_map.to_list(),
        kind_names=list(sequences.kind_names),
        metrics=metrics,
        extra={"version": version.pk},
    )
    name, digest = artifacts.write_verified(version.pk, payload)
    ModelVersion.objects.filter(pk=version.pk).update(
        status=ModelVersion.Status.READY,
        artifact=name,
        artifact_sha256=digest,
        metrics=metrics,
        data_stats={"events": sequences.n_events, "items": sequences.n_items},
        decision=fitted.reason,
    )
    version.refresh_from_db()
    return version
