"""An item-kNN arm: a version's own kNN lists served alone, against the version itself.

The versions are small real artifacts over tests/serving_fixtures.py's shelf: a hybrid
(an untrained net blended with item-kNN lists fitted on a few sequences) and a net served
alone (no lists). The kNN arm's lists are compared with the ItemKNN baseline's own scorer
over the same fitted lists: the score training measured for item-kNN.
"""

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from recommender import experiment_lifecycle as lifecycle
from recommender import serving
from recommender.ml import data, nets
from recommender.ml.hybrid import HybridRanker
from recommender.ml.inference import Predictor
from recommender.models import Arm, Assignment, Experiment, ModelVersion

from .serving_fixtures import install_version, save_version, views
from .test_experiment_serving import arm_id, shopper_in

pytestmark = pytest.mark.django_db
SALT = "a-fixed-salt-for-the-tests"
PLACEMENT = "product"


@pytest.fixture(autouse=True)
def check_at_every_request(settings):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "VERSION_CHECK_SECONDS": 0}


def fitted_knn(n_items, n_kinds):
    """Item-kNN lists over the 30 sellable items: chains of neighbours, some stronger."""
    rng = np.random.default_rng(0)
    sequences = [np.arange(i, i + 4) % 30 + 1 for i in range(30)]
    sequences += [rng.choice(np.arange(1, 31), 5, replace=False) for _ in range(40)]
    knn = nets.build_model("itemknn", n_items, n_kinds, k=6, max_len=50, shrink=1.0)
    return knn.fit_sequences(sequences).eval()


def install_hybrid(shelf, *, seed=7):
    """A ready hybrid version whose artifact carries the kNN lists (k > 0), and its ItemKNN."""
    import torch

    torch.manual_seed(seed)
    kinds = data.kind_vocabulary(data.KNOWN_KINDS)
    net = nets.build_model(
        "cnn_dnn", len(shelf), len(kinds), dim=16, tower_hidden=32, max_len=50, summary="attention"
    )
    knn = fitted_knn(len(shelf), len(kinds))
    ranker = HybridRanker.of(net.eval(), knn, 1.0, "blend")
    assert ranker.k == 6
    version = save_version(
        ranker, [p.pk for p in shelf], kinds, f"hybrid-{seed}", model_name="cnn_dnn"
    )
    return version, knn, ranker, kinds


def experiment_with(arms, *, running=True):
    """``arms``: [(name, ranker, version or None, share)]."""
    # "product": no diversity rule (the demo's "home" keeps 3 per category), so the served
    # list is the ranking itself.
    experiment = Experiment.objects.create(name="knn", placements=[PLACEMENT], salt=SALT)
    for name, ranker, version, share in arms:
        Arm.objects.create(
            experiment=experiment, name=name, ranker=ranker, version=version, share=share
        )
    if running:
        lifecycle.start(experiment)
    return experiment


def test_an_item_knn_arm_serves_the_versions_knn_lists_as_item_knn_scores_them(shelf):
    version, knn, ranker, kinds = install_hybrid(shelf)
    install_version(shelf, seed=3)  # the active version: neither arm's
    experiment = experiment_with([("model", "version", version, 1), ("knn", "itemknn", version, 1)])
    in_knn, in_model = (
        shopper_in("knn", placement=PLACEMENT),
        shopper_in("model", placement=PLACEMENT),
    )
    history = shelf[3:6]
    for key in (in_knn, in_model):
        views(key, history)

    knn_list = serving.recommend(session_key=in_knn, placement=PLACEMENT, limit=10)
    model_list = serving.recommend(session_key=in_model, placement=PLACEMENT, limit=10)
    assert (knn_list.source, knn_list.version_id) == ("model", version.pk)
    assert knn_list.arm_id == arm_id(experiment, "knn")
    assert model_list.arm_id == arm_id(experiment, "model")

    # What the ItemKNN baseline, fitted once and scoring the same history, ranks first.
    baseline = Predictor(knn, [p.pk for p in shelf], kinds)
    events = [(p.pk, "view") for p in history]
    seen = {p.pk for p in history}
    expected = [(pk, s) for pk, s in baseline.top(events, 30, exclude=seen) if s > 0]
    assert len(expected) >= 5
    served = list(zip([p.pk for p in knn_list.items], knn_list.scores, strict=True))
    scored = [(pk, s) for pk, s in served if s > 0]
    assert [pk for pk, _ in scored] == [pk for pk, _ in expected][: len(scored)]
    assert [s for _, s in scored] == pytest.approx([s for _, s in expected][: len(scored)])
    assert len(scored) == min(len(expected), 10)

    # The version arm serves the hybrid (net blended with kNN), not the kNN ranking.
    hidden = {shelf[30].pk, shelf[31].pk}  # inactive, sold out: never shown
    hybrid = Predictor(ranker, [p.pk for p in shelf], kinds).top(events, 10, exclude=seen | hidden)
    assert [p.pk for p in model_list.items] == [pk for pk, _ in hybrid]
    assert [p.pk for p in model_list.items] != [p.pk for p in knn_list.items]


def test_a_version_arm_and_its_item_knn_arm_coexist_on_one_load(shelf):
    version, knn, _, _ = install_hybrid(shelf)
    install_version(shelf, seed=3)
    experiment_with([("model", "version", version, 1), ("knn", "itemknn", version, 1)])
    in_knn, in_model = (
        shopper_in("knn", placement=PLACEMENT),
        shopper_in("model", placement=PLACEMENT),
    )
    views(in_knn, shelf[:2])
    views(in_model, shelf[:2])
    serving.recommend(session_key=in_knn, placement=PLACEMENT)  # item-kNN first: loads the version
    serving.recommend(session_key=in_model, placement=PLACEMENT)
    loaded = serving.arm_models.loaded
    assert set(loaded) == {(version.pk, "version"), (version.pk, "itemknn")}
    full, alone = loaded[(version.pk, "version")], loaded[(version.pk, "itemknn")]
    # One artifact's tensors and vocabulary, held once.
    assert alone.predictor.model.neighbours.data_ptr() == full.predictor.model.neighbours.data_ptr()
    assert alone.predictor.item_map is full.predictor.item_map

    # Similar items in the kNN arm: the item's stored neighbours, best first.
    similar = serving.similar(shelf[0], placement=PLACEMENT, session_key=in_knn, limit=6)
    ids, sims = knn.similar(1, 6)
    assert similar.arm_id == alone_arm_id(in_knn)
    assert [p.pk for p in similar.items][: len(ids)] == [shelf[int(i) - 1].pk for i in ids]
    assert similar.scores[: len(ids)] == pytest.approx(sims.tolist())
    other = serving.similar(shelf[0], placement=PLACEMENT, session_key=in_model, limit=6)
    assert other.recommendation_id != similar.recommendation_id


def alone_arm_id(session_key):
    return Assignment.objects.get(session_key=session_key).arm_id


def test_start_refuses_an_item_knn_arm_whose_version_has_no_lists(shelf):
    hybrid, *_ = install_hybrid(shelf)
    net_alone = install_version(shelf, seed=1, activate=False)
    experiment = experiment_with(
        [("model", "version", net_alone, 1), ("knn", "itemknn", net_alone, 1)], running=False
    )
    with pytest.raises(ValidationError) as refused:
        lifecycle.start(experiment)
    assert refused.value.messages == [
        f"Arm knn: v{net_alone.pk} (cnn_dnn) has no item-kNN lists to serve: validation "
        "gave item-kNN no part in its ranking or similar items. Choose a version whose page "
        "shows item-kNN in its blend, or one that serves item-kNN."
    ]
    # The same arm on a version with lists starts; a second kNN arm on it does not differ.
    Arm.objects.filter(experiment=experiment, name="knn").update(version=hybrid)
    Arm.objects.create(experiment=experiment, name="again", ranker="itemknn", version=hybrid)
    problems = lifecycle.start_problems(experiment)
    assert problems == [
        f"Arm again: item-kNN of v{hybrid.pk} is already another arm; arms must differ."
    ]
    Arm.objects.filter(experiment=experiment, name="again").delete()
    assert lifecycle.start(experiment).status == Experiment.Status.RUNNING


def test_an_item_knn_arm_names_its_version_in_the_database_and_the_form(shelf):
    experiment = Experiment.objects.create(name="constraint")
    with pytest.raises(ValidationError) as invalid:
        Arm(experiment=experiment, name="knn", ranker="itemknn").full_clean()
    assert "version" in invalid.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Arm.objects.create(experiment=experiment, name="knn", ranker="itemknn", version=None)
    version, *_ = install_hybrid(shelf)
    arm = Arm.objects.create(experiment=experiment, name="knn", ranker="itemknn", version=version)
    assert str(arm) == f"knn: item-kNN of v{version.pk}"


def test_promoting_an_item_knn_arm_activates_only_a_version_that_serves_item_knn(shelf):
    hybrid, *_ = install_hybrid(shelf)
    experiment = experiment_with([("model", "version", hybrid, 1), ("knn", "itemknn", hybrid, 1)])
    with pytest.raises(ValidationError, match="no version serves alone"):
        lifecycle.promote(experiment, experiment.arms.get(name="knn"))
    assert not ModelVersion.objects.filter(pk=hybrid.pk, is_active=True).exists()

    ModelVersion.objects.filter(pk=hybrid.pk).update(model_name="itemknn")
    lifecycle.promote(experiment, experiment.arms.get(name="knn"))
    assert ModelVersion.objects.get(pk=hybrid.pk).is_active
