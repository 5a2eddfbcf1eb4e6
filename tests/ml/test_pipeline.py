"""The experiment entry point: one call fits the model and the baselines and measures all alike."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from recommender.ml import ann, data, metrics, pipeline, train

from .conftest import chain_sequences, uncleaned_sequences

NET_CONFIG = dict(dim=16, max_len=8, tower_hidden=32, dropout=0.1, emb_dropout=0.1)


def small_config(**kw):
    base = dict(epochs=6, batch_size=32, lr=2e-2, patience=6, max_seconds=60, seed=0, max_len=8)
    return train.TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def result():
    split = data.leave_one_out(chain_sequences())
    stages, rows = [], []
    out = pipeline.run(
        split,
        "cnn_dnn",
        NET_CONFIG,
        small_config(),
        progress=rows.append,
        on_stage=lambda name, **info: stages.append(name),
    )
    return split, out, stages, rows


def test_the_pipeline_runs_without_django():
    code = (
        "import sys; import recommender.ml.pipeline; "
        "sys.exit(any(m.split('.')[0] == 'django' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_model_and_every_baseline_are_measured_on_the_same_shoppers(result):
    split, out, _, _ = result
    assert list(out.scores) == ["cnn_dnn", "popularity", "itemknn"]
    for scored in out.scores.values():
        assert scored.valid["users"] == len(split.validation)
        assert scored.test["users"] == len(split.test)
        assert {"hr@10", "ndcg@10", "mrr", "coverage@10"} <= set(scored.valid)
        assert scored.fit_seconds > 0
    # A chain is predictable: the net learns it, popularity cannot.
    assert out.scores["cnn_dnn"].test["hr@10"] > 0.8 > out.scores["popularity"].test["hr@10"]


def test_every_candidate_is_measured_by_the_one_function(result):
    split, out, _, _ = result
    for scored in out.scores.values():
        again = pipeline.measure(scored.model, split.test, n_items=split.n_items, max_len=8)
        assert again == scored.test
    direct = metrics.evaluate(out.model, split.test, 10, "full", n_items=split.n_items, max_len=8)
    assert out.scores["cnn_dnn"].test["ndcg@10"] == direct["ndcg@10"]


def test_the_result_carries_the_curve_and_the_metrics_a_version_stores(result):
    _, out, stages, rows = result
    assert out.curve == out.fitted.curve and len(rows) == len(out.curve) >= 1
    stored = out.metrics()
    assert stored["valid"] == out.scores["cnn_dnn"].valid
    assert set(stored["baselines"]) == {"popularity", "itemknn"}
    assert stored["baselines"]["itemknn"]["test"] == out.scores["itemknn"].test
    assert stored["best_epoch"] == out.fitted.best_epoch and stored["stopped"] in (
        "epochs",
        "patience",
    )
    assert stages == ["train", "evaluate", "blend"] and out.index is None


def test_a_baseline_as_the_model_is_not_fitted_twice():
    split = data.leave_one_out(chain_sequences(n_users=40))
    out = pipeline.run(split, "itemknn", {"k": 10}, small_config())
    assert list(out.scores) == ["itemknn", "popularity"]
    assert out.model.k == 10 and set(out.metrics()["baselines"]) == {"popularity"}


def test_a_large_catalogue_gets_its_index_tuned_on_validation_shoppers(result):
    split, _, _, _ = result
    stages = []
    out = pipeline.run(
        split,
        "cnn",
        dict(dim=16, max_len=8),
        small_config(epochs=1),
        baselines=(),
        index_above=10,
        on_stage=lambda name, **info: stages.append(name),
    )
    assert stages == ["train", "evaluate", "blend", "index"]
    assert isinstance(out.index, ann.IVFIndex) and out.index.build_info["items"] == split.n_items
    assert list(out.scores) == ["cnn"]


def test_a_trained_model_is_measured_in_its_own_vocabulary_beside_fresh_baselines(result):
    split, out, _, _ = result
    # The same model over a vocabulary that has lost one item: its targets become misses.
    lost = split.item_map.id(1)
    vocabulary = data.IdMap.from_list([i for i in split.item_map.to_list() if i != lost])
    full = data.IdMap.from_list(split.item_map.to_list())
    same = pipeline.measure_trained(out.model, full, split.kind_names, split, small_config())
    assert same["test"] == out.scores["cnn_dnn"].test
    assert set(same["baselines"]) == {"popularity", "itemknn"}
    assert same["baselines"]["popularity"]["test"] == out.scores["popularity"].test
    remapped = pipeline.remap(split.test, split, vocabulary, split.kind_names)
    assert len(remapped) == len(split.test)
    missing = split.test.targets == 1
    assert np.all(remapped.targets[missing] == 0) and np.all(remapped.targets[~missing] > 0)
    assert all(lost not in [vocabulary.id(int(i)) for i in seq] for seq in remapped.items)


# --------------------------------------------------------------------------- the served model


def _scored(ndcg, users=500):
    return pipeline.Scored(None, {"ndcg@10": ndcg, "users": users}, {"ndcg@10": ndcg})


def _result(**ndcg):
    """A run whose candidates scored ``ndcg`` (the first one is the trained model)."""
    name = next(iter(ndcg))
    fitted = train.FitResult(None, best_epoch=3, stopped="patience", train_seconds=2.0)
    return pipeline.PipelineResult(name, fitted, {n: _scored(v) for n, v in ndcg.items()})


def test_the_trained_model_serves_when_it_beats_or_equals_every_baseline(result):
    _, out, _, _ = result
    choice = pipeline.choose(out, min_shoppers=10)
    assert choice.name == "cnn_dnn" and not choice.too_few_shoppers
    assert choice.reason.startswith("the CNN+DNN: validation NDCG@10 ")
    assert "beats item-kNN's" in choice.reason and "and popularity's" in choice.reason
    tied = pipeline.choose(_result(cnn_dnn=0.05, popularity=0.01, itemknn=0.05))
    assert tied.name == "cnn_dnn" and "equals item-kNN's 0.0500" in tied.reason


def test_a_baseline_serves_when_it_beats_the_trained_model():
    out = _result(cnn_dnn=0.0314, popularity=0.0327, itemknn=0.0682)
    choice = pipeline.choose(out)
    assert choice.name == "itemknn"
    assert choice.reason == (
        "item-kNN: validation NDCG@10 0.0682 beats the CNN+DNN's 0.0314 and popularity's 0.0327"
    )
    stored = pipeline.served_metrics(out, choice)
    assert stored["valid"]["ndcg@10"] == 0.0682 and stored["choice"]["model"] == "itemknn"
    assert set(stored["baselines"]) == {"cnn_dnn", "popularity"}
    assert pipeline.choose(_result(cnn_dnn=0.0, popularity=0.02, itemknn=0.01)).name == "popularity"


def test_too_few_validation_shoppers_give_a_baseline_with_the_reason():
    out = _result(cnn_dnn=0.30, popularity=0.01, itemknn=0.02)
    out.scores["cnn_dnn"].valid["users"] = 37
    choice = pipeline.choose(out, min_shoppers=200)
    assert choice.name == "itemknn" and choice.too_few_shoppers
    assert "only 37 validation shoppers (fewer than 200)" in choice.reason
    assert "the CNN+DNN scored 0.3000" in choice.reason
    assert pipeline.choose(out, min_shoppers=37).name == "cnn_dnn"


def _launch_sequences():
    """Shoppers walk a chain; after the cut, 30 of them view a new item A, then a new item N
    (the others walk on, so validation still measures something)."""
    rows = []
    for u in range(80):
        for t in range(8):
            rows.append((f"u{u}", f"p{(u + t) % 20}", "view", None, 100.0 * t))
        if u < 30:
            rows.append((f"u{u}", "A", "view", None, 1000.0 + u))
            rows.append((f"u{u}", "N", "view", None, 1100.0 + u))
        else:
            rows.append((f"u{u}", f"p{(u + 8) % 20}", "view", None, 1000.0 + u))
    return uncleaned_sequences(rows)


@pytest.mark.parametrize("name", ["cnn_dnn", "itemknn"])
def test_the_refit_model_knows_items_seen_only_after_the_cut(name):
    sequences = _launch_sequences()
    split = data.time_split(sequences, 500.0)  # the cut falls between the chain and A, N
    a, n = sequences.item_map.index("A"), sequences.item_map.index("N")
    assert not any(n in items for items in split.train_items)
    assert len(split.validation) == 40
    config = small_config(epochs=12, patience=12)
    out = pipeline.run(split, name, NET_CONFIG if name == "cnn_dnn" else None, config)

    def rank_of_n_after_a(model):
        with torch.no_grad():
            scores = model.full_sort_predict(torch.tensor([[a]]), torch.tensor([[1]]))[0]
        others = [i for i in range(1, sequences.n_items + 1) if i not in (a, n)]
        return int((scores[others] >= scores[n]).sum())  # 0: N comes first, ties count against

    before = rank_of_n_after_a(out.model)  # the validated model never saw N
    epochs = out.fitted.best_epoch
    refit = pipeline.refit(name, out.model, sequences, config, epochs=epochs, max_seconds=60)
    assert refit.model is not None and refit.to_dict()["done"], refit.reason
    after = rank_of_n_after_a(refit.model)
    assert after < before and after <= 2, (before, after)  # among the first three now
    assert refit.model.config == out.model.config


def test_a_refit_that_cannot_finish_its_epochs_in_time_serves_nothing_half_trained():
    sequences = _launch_sequences()
    split = data.time_split(sequences, 500.0)
    out = pipeline.run(split, "cnn_dnn", NET_CONFIG, small_config(epochs=2), baselines=())
    refit = pipeline.refit(
        "cnn_dnn", out.model, sequences, small_config(), epochs=50, max_seconds=0.01
    )
    assert refit.model is None and "ran out of time" in refit.reason
