"""The experiment entry point: one call fits the model and the baselines and measures all alike."""

import subprocess
import sys

import numpy as np
import pytest

from recommender.ml import ann, data, metrics, pipeline, train

from .conftest import chain_sequences

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
