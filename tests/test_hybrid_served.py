"""What the benchmark measures is what a store is served: the trained hybrid ranker's top-10.

The app trains a version (net + item-kNN, blend weight chosen on validation); for every
shopper, the list ``serving.recommend`` serves (exact scoring, no business rule beyond
leaving out what was seen) is the top-10 of the score ``pipeline.measure`` ranks by:
the artifact's ranker's ``full_sort_predict`` over the shopper's history, seen items out.
"""

import io

import numpy as np
import pytest
import torch

from recommender import artifacts, itemkeys, serving, training
from recommender.ml import artifact, baselines, hybrid, metrics
from recommender.models import Event

from .serving_fixtures import save_version
from .store_data import FAST_CONFIG, make_catalogue, make_history

pytestmark = pytest.mark.django_db


def measured_top10(ranker, item_ids, kind_names, events):
    """The pipeline's scorer, read as ``metrics.evaluate`` reads it (left-padded window)."""
    index = {key: i for i, key in enumerate(item_ids, start=1)}
    kinds = {name: i for i, name in enumerate(kind_names)}
    items = [index[itemkeys.to_json(pk)] for pk, _ in events]
    item_seq = metrics.pad_left([torch.tensor(items).numpy()], ranker.max_len)
    kind_seq = metrics.pad_left(
        [torch.tensor([kinds[k] for _, k in events]).numpy()], ranker.max_len
    )
    with torch.no_grad():
        scores = ranker.full_sort_predict(item_seq, kind_seq)[0]
    scores[0] = -torch.inf
    scores[torch.tensor(items)] = -torch.inf  # seen items are out, as in full ranking
    return [itemkeys.from_json(item_ids[i - 1]) for i in torch.topk(scores, 10).indices.tolist()]


def shoppers():
    """Each shopper's (user, session) and their events oldest first."""
    found = {}
    for user_id, session, pk, kind in Event.objects.order_by("occurred_at", "id").values_list(
        "user_id", "session_key", "item_id", "kind"
    ):
        found.setdefault((user_id, session), []).append((pk, kind))
    return found


def install(ranker, art):
    """A version serving ``ranker`` over the trained artifact's vocabulary."""
    version = save_version(
        ranker, art.item_ids, art.kind_names, "hybrid-forced", model_name="cnn_dnn"
    )
    version.activate()
    serving.active_model.reset()


def test_the_served_top10_is_the_measured_top10_for_every_shopper(django_user_model):
    products = make_catalogue(n_items=60)
    make_history(products, n_shoppers=300, length=8)
    version = training.run_training(training.request_training(config=FAST_CONFIG).pk)
    assert version.status == "ready" and version.is_active, version.error
    art = artifact.load_artifact(io.BytesIO(artifacts.read_verified(version.artifact)))
    trained = art.build_model()
    assert art.model_name == "hybrid" and trained.weight == version.metrics["blend"]["weight"]
    # The trained ranker as validation chose it, and its net with a kNN term forced on (the
    # lists fitted here when validation chose the net alone and the version kept none).
    index = {pk: i + 1 for i, pk in enumerate(art.item_ids)}
    sequences = [
        np.array([index[pk] for pk, _ in evs if pk in index]) for evs in shoppers().values()
    ]
    knn = baselines.ItemKNN(art.n_items, k=20).fit_sequences(sequences)
    forced = hybrid.HybridRanker.of(trained.net, knn, weight=2.0, similar="blend")
    assert forced.k > 0
    for ranker in (trained, forced.eval()):
        if ranker is forced:
            install(forced, art)
        users = {u.pk: u for u in django_user_model.objects.all()}
        checked = 0
        for (user_id, session), events in shoppers().items():
            served = serving.recommend(
                user=users.get(user_id), session_key=session if user_id is None else "", limit=10
            )
            assert served.source == "model"
            expected = measured_top10(ranker, art.item_ids, art.kind_names, events)
            assert [item.pk for item in served.items] == expected
            checked += 1
        assert checked == 300
