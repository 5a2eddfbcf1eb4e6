import numpy as np
import pytest

from recommender.ml import data

OFF = dict(
    burst_window_seconds=None,
    max_events_per_minute=None,
    min_item_count=None,
    min_shopper_count=None,
    max_seq_len=None,
)


def cfg(**kw):
    return data.CleaningConfig(**{**OFF, **kw})


def clean(rows, config):
    """Cleaned rows (shopper, item, kind, None, ts) per shopper in time order, and the report."""
    seqs = data.build_sequences(rows, config)
    out = [
        (shopper, seqs.item_map.id(int(i)), seqs.kind_names[int(k)], None, float(t))
        for shopper, items, kinds, times in zip(
            seqs.shopper_ids, seqs.items, seqs.kinds, seqs.times, strict=True
        )
        for i, k, t in zip(items, kinds, times, strict=True)
    ]
    return out, seqs.report


def test_idmap_reserves_zero_and_roundtrips_as_list():
    m = data.IdMap(["a", 7, "c"])
    assert [m.index("a"), m.index(7), m.index("c")] == [1, 2, 3]
    assert m.id(2) == 7 and len(m) == 3
    assert data.IdMap.from_list(m.to_list()) == m
    with pytest.raises(KeyError):
        m.id(0)
    assert m.index("zzz", 0) == 0


def test_rows_from_a_generator_in_any_order_become_chronological():
    rows = [
        ("s", "b", "view", None, 20.0),
        ("s", "a", "view", None, 10.0),
        ("s", "c", "purchase", 9.5, 30.0),
    ]
    seqs = data.build_sequences((r for r in reversed(rows)), cfg())
    assert [seqs.item_map.id(i) for i in seqs.items[0].tolist()] == ["a", "b", "c"]
    assert [seqs.kind_names[k] for k in seqs.kinds[0]] == ["view", "view", "purchase"]
    assert seqs.weights[0].tolist() == [1.0, 1.0, 3.0]
    assert seqs.times[0].tolist() == [10.0, 20.0, 30.0]
    assert seqs.kind_names[0] == data.PAD_KIND


def test_zero_weight_kind_is_dropped_and_counted():
    rows = [
        ("s", "a", "view", None, 1.0),
        ("s", "a", "add_to_cart", None, 2.0),
        ("s", "a", "remove_from_cart", None, 3.0),
    ]
    out, rep = clean(rows, cfg())
    assert [r[2] for r in out] == ["view", "add_to_cart"]
    assert rep.dropped_kind == 1 and rep.output_events == 2


def test_burst_keeps_first_view_and_measures_from_last_kept():
    ts = [0, 10, 25, 31, 45, 70]  # window 30: keep 0, drop 10 and 25, keep 31, drop 45, keep 70
    rows = [("s", "a", "view", None, float(t)) for t in ts]
    rows += [("s", "a", "click", None, 11.0), ("s", "b", "view", None, 12.0)]
    out, rep = clean(rows, cfg(burst_window_seconds=30))
    kept_views = [r[4] for r in out if r[1] == "a" and r[2] == "view"]
    assert kept_views == [0.0, 31.0, 70.0]
    assert rep.dropped_burst == 3
    assert any(r[2] == "click" for r in out) and any(r[1] == "b" for r in out)
    # disabled: nothing dropped
    assert clean(rows, cfg())[1].dropped_burst == 0


def test_bots_are_dropped_by_sustained_rate():
    human = [("h", f"i{k}", "view", None, 60.0 * k) for k in range(20)]
    bot = [("bot", f"i{k % 20}", "click", None, 0.5 * k) for k in range(400)]  # 120/min
    out, rep = clean(human + bot, cfg(max_events_per_minute=60, bot_window_seconds=120))
    assert {r[0] for r in out} == {"h"}
    assert rep.bot_shoppers == 1 and rep.dropped_bot == 400
    # A short burst below the sustained window rate is not a bot.
    burst = [("b2", f"i{k}", "view", None, 1.0 * k) for k in range(30)]
    out, rep = clean(burst, cfg(max_events_per_minute=60, bot_window_seconds=120))
    assert rep.bot_shoppers == 0


def test_iterated_count_filter_reaches_fixed_point():
    rows = []
    for s in range(3):  # items a, b seen by 3 shoppers each
        rows += [(f"s{s}", "a", "view", None, 1.0), (f"s{s}", "b", "view", None, 2.0)]
    rows += [("s3", "a", "view", None, 1.0), ("s3", "rare", "view", None, 2.0)]
    out, rep = clean(rows, cfg(min_item_count=2, min_shopper_count=2))
    # 'rare' goes (1 event) -> s3 has 1 event and goes -> fixed point.
    assert {r[0] for r in out} == {"s0", "s1", "s2"}
    assert rep.dropped_rare_item == 1 and rep.dropped_rare_shopper == 1
    for r in out:
        assert sum(x[1] == r[1] for x in out) >= 2


def test_sequence_cap_keeps_most_recent():
    rows = [("s", f"i{k}", "view", None, float(k)) for k in range(10)]
    seqs = data.build_sequences(rows, cfg(max_seq_len=4))
    assert [seqs.item_map.id(i) for i in seqs.items[0].tolist()] == ["i6", "i7", "i8", "i9"]
    assert seqs.report.dropped_seq_cap == 6


def test_config_from_dict_rejects_unknown_keys():
    c = data.CleaningConfig.from_dict({"min_item_count": 5, "burst_kinds": ["view", "click"]})
    assert c.min_item_count == 5 and c.burst_kinds == ("view", "click")
    with pytest.raises(ValueError):
        data.CleaningConfig.from_dict({"min_itme_count": 5})


def test_leave_one_out_protocol():
    rows = [("u", f"i{k}", "view", None, float(k)) for k in range(5)]
    rows += [("short", "i0", "view", None, 1.0), ("short", "i1", "view", None, 2.0)]
    split = data.leave_one_out(data.build_sequences(rows, cfg()))

    def ids(indices):
        return [split.item_map.id(int(i)) for i in indices]

    assert len(split.validation) == len(split.test) == 1
    assert ids(split.validation.items[0].tolist()) == ["i0", "i1", "i2"]
    assert ids([split.validation.targets[0]]) == ["i3"]
    assert ids(split.test.items[0].tolist()) == ["i0", "i1", "i2", "i3"]
    assert ids([split.test.targets[0]]) == ["i4"]
    train = sorted(ids(x.tolist()) for x in split.train_items)
    assert train == [["i0", "i1"], ["i0", "i1", "i2"]]


def test_time_split_never_leaks_future_events_into_training():
    rng = np.random.default_rng(1)
    rows = [
        (f"u{u}", f"i{int(rng.integers(0, 15))}", "view", None, float(rng.uniform(0, 1000)))
        for u in range(40)
        for _ in range(8)
    ]
    seqs = data.build_sequences(rows, cfg())
    split = data.time_split(seqs, holdout_seconds=200, seed=3)
    cut = split.cut_ts
    assert cut == pytest.approx(max(r[4] for r in rows) - 200)
    times = {}
    for s, t in zip(seqs.shopper_ids, seqs.times, strict=True):
        times[s] = t
    # Training inputs: exactly each shopper's events before the cut, nothing after.
    for s, tr in enumerate(split.train_items):
        t = seqs.times[s]
        assert len(tr) == int((t < cut).sum())
        assert np.array_equal(tr, seqs.items[s][t < cut])
    for part in (split.validation, split.test):
        assert len(part) > 0
        for row, s in enumerate(part.shopper_index):
            t = seqs.times[s]
            n_before = int((t < cut).sum())
            assert np.array_equal(part.items[row], seqs.items[s][:n_before])
            assert part.targets[row] == seqs.items[s][n_before]  # first held-out item
            assert t[n_before] >= cut
    assert not set(split.validation.shopper_index) & set(split.test.shopper_index)


def test_read_user_item_file(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("1 10\n1 11\n2 11\n1 12\n2 10\n")
    seqs = data.read_user_item_file(p)
    assert seqs.shopper_ids == [1, 2]
    assert seqs.item_map.to_list() == [10, 11, 12]
    assert seqs.items[0].tolist() == [1, 2, 3] and seqs.items[1].tolist() == [2, 1]
    assert seqs.kind_names == [data.PAD_KIND, "view"]
    assert seqs.times[0].tolist() == [0.0, 1.0, 3.0]
