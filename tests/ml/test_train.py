import time

import pytest
import torch

from recommender.ml import baselines, data, metrics, nets, pipeline, train

from .conftest import small_net


def small_config(**kw):
    base = dict(epochs=8, batch_size=32, lr=2e-2, patience=8, max_seconds=60, seed=0, max_len=8)
    return train.TrainConfig(**{**base, **kw})


def test_fit_learns_a_predictable_sequence_and_reports_progress(chain_split):
    seen = []
    result = train.fit(small_net(chain_split), chain_split, small_config(), progress=seen.append)
    assert seen and all(
        {"stage", "epoch", "epochs", "loss", "val_ndcg10", "val_hr10", "elapsed", "eta"} <= set(p)
        for p in seen
    )
    assert len(result.curve) == len(seen) and 1 <= result.best_epoch <= len(result.curve)
    assert result.best_metrics["val_ndcg10"] == max(r["val_ndcg10"] for r in result.curve)
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]
    pop = baselines.Popularity(chain_split.n_items).fit_sequences(chain_split.train_items)
    net = metrics.evaluate(result.model, chain_split.test, 10)
    base = metrics.evaluate(pop, chain_split.test, 10)
    assert net["hr@10"] > 0.8 > base["hr@10"]


def test_model_holds_best_weights_and_training_is_deterministic(chain_split):
    a = train.fit(small_net(chain_split), chain_split, small_config(epochs=4, patience=1))
    b = train.fit(small_net(chain_split), chain_split, small_config(epochs=4, patience=1))
    assert [r["loss"] for r in a.curve] == [r["loss"] for r in b.curve]
    val = metrics.evaluate(a.model, chain_split.validation, 10, max_len=8)
    assert val["ndcg@10"] == a.best_metrics["val_ndcg10"]


def test_max_seconds_stops_cleanly(chain_split):
    t0 = time.perf_counter()
    result = train.fit(
        small_net(chain_split),
        chain_split,
        small_config(epochs=10_000, patience=10_000, max_seconds=1.0),
    )
    assert result.stopped == "max_seconds"
    assert time.perf_counter() - t0 < 10
    assert result.best_epoch >= 1


def test_sampled_softmax_path_and_caser_encoder_train(chain_split):
    model = nets.build_model(
        "cnn",
        chain_split.n_items,
        chain_split.n_kinds,
        dim=16,
        max_len=8,
        encoder="caser",
        window=4,
    )
    result = train.fit(
        model, chain_split, small_config(epochs=3, sampled_softmax_above=5, n_negatives=10)
    )
    assert len(result.curve) == 3 and all(r["loss"] > 0 for r in result.curve)


def test_baselines_fit_through_the_same_entry_point(chain_split):
    seen = []
    result = train.fit(
        baselines.ItemKNN(chain_split.n_items, k=10), chain_split, progress=seen.append
    )
    assert result.stopped == "fitted" and seen[0]["stage"] == "fitted"
    assert result.best_metrics["val_hr10"] > 0.5


def test_training_windows_cover_every_position_once():
    import numpy as np

    items = [np.arange(1, 12), np.array([5, 6])]
    kinds = [np.ones(11, np.int64), np.ones(2, np.int64)]
    weights = [np.ones(11, np.float32), np.ones(2, np.float32)]
    x, k, y, tw, lengths = train.training_windows(items, kinds, weights, max_len=4)
    targets = sorted(y[y > 0].tolist())
    assert targets == sorted(list(range(2, 12)) + [6])
    for row in range(len(x)):  # each target is the item right after its input
        real = x[row] > 0
        assert np.array_equal(y[row][real][:-1], x[row][real][1:])


def test_batches_mix_window_lengths_and_cover_every_window_once_per_epoch():
    """Not bucketed by length: every batch holds short and long windows alike, so no
    batch of a few short windows moves the weights as far as one of many long ones."""
    import numpy as np

    lengths = np.tile(np.arange(1, 51), 64)  # 3,200 windows, every length 1..50
    rng = np.random.default_rng(0)
    for _ in range(2):
        batches = train._batches(lengths, 128, rng)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
        full = [lengths[b] for b in batches if len(b) == 128]
        assert all(b.max() - b.min() >= 40 for b in full)
        assert max(b.mean() for b in full) - min(b.mean() for b in full) < 10


def test_config_from_dict():
    c = train.TrainConfig.from_dict({"epochs": 3, "lr": 0.01})
    assert c.epochs == 3 and c.to_dict()["lr"] == 0.01
    try:
        train.TrainConfig.from_dict({"epoch": 3})
    except ValueError:
        pass
    else:
        raise AssertionError("unknown key accepted")


def test_device_auto_takes_cuda_only_when_the_worker_has_it():
    assert train.choose_device("auto", cuda_available=lambda: True).type == "cuda"
    assert train.choose_device("auto", cuda_available=lambda: False).type == "cpu"
    assert str(train.choose_device("cuda:1", cuda_available=lambda: False)) == "cuda:1"
    assert train.choose_device("cpu", cuda_available=lambda: True).type == "cpu"
    assert train.TrainConfig().device == "auto"


def test_fit_trains_on_cpu_when_no_cuda(chain_split, monkeypatch):
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    result = train.fit(small_net(chain_split), chain_split, small_config(epochs=1))
    assert result.device == "cpu"


def test_loss_chooser_measures_large_catalogues_and_keeps_explicit_choices():
    timed = []

    def timer(costs):
        def time_one(name):
            timed.append(name)
            return costs[name]

        return time_one

    cfg = train.TrainConfig(
        loss_probe_above=1000, sampled_speedup=2.0, max_seconds=100.0, exact_loss_epochs=10
    )
    # small catalogue: full softmax, nothing timed
    assert train.choose_loss(cfg, 500, timer({}))[0] == "full" and not timed
    # over budget (3 s x 10 positions x 10 epochs > 100 s), the faster exact loss wins
    # unless sampled is more than 2x faster
    costs = {"full": 3, "chunked": 2, "sampled": 1.5}
    assert train.choose_loss(cfg, 5000, timer(costs), positions=10)[0] == "chunked"
    costs = {"full": 3, "chunked": 4, "sampled": 1}
    name, measured = train.choose_loss(cfg, 5000, timer(costs), positions=10)
    assert name == "sampled" and measured == costs
    assert set(timed) == {"full", "chunked", "sampled"}
    # ... but when the budget pays for the exact loss's epochs it is kept, however slow
    assert train.choose_loss(cfg, 5000, timer(costs), positions=3)[0] == "full"
    unlimited = train.TrainConfig(loss_probe_above=1000, max_seconds=None)
    assert train.choose_loss(unlimited, 5000, timer(costs), positions=10**6)[0] == "full"
    # explicit choices and the former fixed threshold are obeyed without timing
    timed.clear()
    assert train.choose_loss(train.TrainConfig(loss="chunked"), 10**6, timer({}))[0] == "chunked"
    old = train.TrainConfig(sampled_softmax_above=50_000)
    assert train.choose_loss(old, 60_000, timer({}))[0] == "sampled" and not timed
    with pytest.raises(ValueError, match="unknown loss"):
        train.choose_loss(train.TrainConfig(loss="hinge"), 10, timer({}))


def test_loss_chooser_is_not_flipped_by_one_slow_moment():
    """The candidates are timed in interleaved rounds and the median kept: one round on a
    busy machine (full softmax timed 3x slower) does not make the budget look too small."""
    calls = []

    def timer(name):
        calls.append(name)
        slow = 3.0 if len(calls) <= 3 else 1.0  # the whole first round ran on a busy machine
        return {"full": 1.0, "chunked": 1.2, "sampled": 0.2}[name] * slow

    cfg = train.TrainConfig(loss_probe_above=1000, max_seconds=100.0, exact_loss_epochs=10)
    name, cost = train.choose_loss(cfg, 5000, timer, positions=5)  # 1 x 5 x 10 = 50 s fits
    assert name == "full" and cost["full"] == 1.0
    assert calls == ["full", "chunked", "sampled"] * cfg.loss_probe_rounds
    one_round = train.TrainConfig(
        loss_probe_above=1000, max_seconds=100.0, exact_loss_epochs=10, loss_probe_rounds=1
    )
    calls.clear()
    assert train.choose_loss(one_round, 5000, timer, positions=5)[0] == "sampled"


def test_fit_times_the_candidates_on_a_large_enough_catalogue(chain_split):
    """With the probe threshold below the catalogue size, fit measures each candidate on
    real batches and records what it chose; the model itself is not trained by the probe."""
    cfg = small_config(epochs=1, loss_probe_above=5, n_negatives=8, softmax_chunk=7)
    result = train.fit(small_net(chain_split), chain_split, cfg)
    assert set(result.loss_costs) == {"full", "chunked", "sampled"}
    assert all(c > 0 for c in result.loss_costs.values())
    assert result.loss in ("full", "chunked", "sampled")


@pytest.mark.parametrize("loss", ["chunked", "sampled"])
@pytest.mark.parametrize("name", ["sasrec", "cnn_dnn"])
def test_every_loss_lowers_the_training_loss(chain_split, loss, name):
    cfg = small_config(
        epochs=6, patience=10, loss=loss, n_negatives=30, softmax_chunk=7,
        negative_sampling="popularity",
    )  # fmt: skip
    torch.manual_seed(0)
    model = nets.build_model(
        name, chain_split.n_items, chain_split.n_kinds, dim=16, max_len=8, summary="transformer"
    )
    result = train.fit(model, chain_split, cfg)
    assert result.loss == loss
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]
    assert all(r["positions"] > 0 and r["train_seconds"] > 0 for r in result.curve)


def _clocked_sequences():
    """Two shoppers with two visits each: the third event of each comes an hour later."""
    rows = []
    for shopper in ("a", "b"):
        for n, (item, ts) in enumerate([(1, 0), (2, 60), (3, 3660), (4, 3720), (5, 3780)]):
            rows.append((shopper, item + n % 2, "purchase" if n == 2 else "view", None, ts))
    return data.build_sequences(rows, data.CleaningConfig(min_item_count=None))


def test_visit_starts_carry_the_configured_share_of_the_training_loss():
    assert data.leave_one_out(_clocked_sequences()).train_times is not None
    config = train.TrainConfig(visit_start_share=0.75)
    # every event: per shopper 3 targets within a visit (views, weight 1) and 1 visit
    # start (a purchase, weight 3), so the start must weigh 3x more to carry 3/4
    full = pipeline.everything(_clocked_sequences())
    weights, scale = train.visit_weights(full, config)
    start_weight = sum(float(w[2]) for w in weights)
    within_weight = sum(float(w[[1, 3, 4]].sum()) for w in weights)
    assert start_weight / (start_weight + within_weight) == pytest.approx(0.75)
    assert scale == pytest.approx(0.75 / 0.25 * 3 / 3)
    off, one = train.visit_weights(full, train.TrainConfig(visit_start_share=None))
    assert one == 1.0 and off is full.train_weights
    with pytest.raises(ValueError, match="visit_start_share"):
        train.TrainConfig(visit_start_share=1.5)


def test_events_without_a_clock_have_no_visits(tmp_path):
    """A user-item file's line numbers only order events: no target is reweighted."""
    path = tmp_path / "events.txt"
    path.write_text("".join(f"{u} {i}\n" for u in (1, 2) for i in (1, 2, 3, 4)))
    split = data.leave_one_out(data.read_user_item_file(path))
    assert split.train_times is None
    weights, scale = train.visit_weights(split, train.TrainConfig())
    assert scale == 1.0 and weights is split.train_weights
