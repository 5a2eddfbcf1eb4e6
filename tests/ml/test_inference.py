import io

from recommender.ml import artifact, baselines, data, inference, train

from .conftest import small_net


def test_predictor_from_artifact_recommends_store_ids(chain_split):
    model = small_net(chain_split)
    cfg = train.TrainConfig(epochs=8, batch_size=32, lr=2e-2, patience=8, max_len=8)
    train.fit(model, chain_split, cfg)
    buf = io.BytesIO()
    artifact.save_artifact(
        buf,
        model_name="cnn_dnn",
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=chain_split.item_map.to_list(),
        kind_names=chain_split.kind_names,
        metrics={},
    )
    buf.seek(0)
    pred = inference.Predictor.from_artifact(buf)
    events = [
        ("p3", "view"),
        ("p4", "view"),
        ("p5", "purchase"),
        ("unknown", "view"),
        ("p6", "remove_from_cart"),
    ]
    seen = ["p3", "p4", "p5"]
    top = pred.top(events, 3, exclude=seen)
    assert len(top) == 3 and top[0][0] == "p6"  # the chain continues; removal ignored
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert all(i not in seen for i, _ in top)
    assert pred.top(events, 3, exclude=[*seen, "p6"])[0][0] != "p6"
    assert [i for i, _ in pred.top(events, 5, allowed=pred.mask(["p1", "p2"]))] in (
        ["p1", "p2"],
        ["p2", "p1"],
    )
    assert pred.top([("unknown", "view")], 4) == []  # nothing known: the caller falls back
    sim = pred.similar("p3", k=2, exclude=["p9"])
    assert len(sim) == 2 and all(i not in {"p3", "p9"} for i, _ in sim)


def test_predictor_with_itemknn_fallback():
    seqs = data.build_sequences(
        [
            ("a", "x", "view", None, 1.0),
            ("a", "y", "view", None, 2.0),
            ("b", "x", "view", None, 1.0),
            ("b", "y", "view", None, 2.0),
            ("c", "y", "view", None, 1.0),
            ("c", "z", "view", None, 2.0),
        ],
        data.CleaningConfig(min_item_count=None, min_shopper_count=None),
    )
    knn = baselines.ItemKNN(seqs.n_items, k=5).fit_sequences(seqs.items)
    pred = inference.Predictor(knn, seqs.item_map.to_list(), seqs.kind_names)
    assert pred.top([("x", "view")], 1, exclude=["x"])[0][0] == "y"
    assert pred.similar("y", k=2)[0][0] == "x"
