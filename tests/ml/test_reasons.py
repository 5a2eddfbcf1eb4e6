"""Reasons: the history item named for a candidate is the one whose removal lowers its
served score most (the deletion test), and only the shopper's own items are ever named."""

import random

import numpy as np
import pytest
import torch

from recommender.ml import baselines, data, hybrid, inference, reasons, train

from .conftest import small_net, uncleaned_sequences

N_CLUSTERS, PER_CLUSTER = 8, 10


def clustered_split(n_users=300, seed=0):
    """Shoppers who each walk through 2-3 of 8 product clusters (10 items each), mixing
    views, carts and purchases: different candidates owe their score to different items."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        interests = rng.sample(range(N_CLUSTERS), rng.randint(2, 3))
        for t in range(rng.randint(6, 12)):
            cluster = rng.choice(interests)
            item = f"c{cluster}-{rng.randrange(PER_CLUSTER)}"
            kind = rng.choices(["view", "add_to_cart", "purchase"], [0.8, 0.15, 0.05])[0]
            rows.append((f"u{u}", item, kind, None, 1000.0 * u + t))
    torch.manual_seed(0)
    return data.leave_one_out(uncleaned_sequences(rows))


@pytest.fixture(scope="module")
def fitted():
    split = clustered_split()
    net = small_net(split)
    cfg = train.TrainConfig(epochs=6, batch_size=32, lr=2e-2, patience=8, max_len=8)
    train.fit(net, split, cfg)
    knn = baselines.ItemKNN(split.n_items, max_len=8, k=15).fit_sequences(split.train_items)
    return split, net.eval(), knn


def predictor_of(model, split):
    return inference.Predictor(model, split.item_map.to_list(), split.kind_names)


def shoppers_events(split, part, limit=60, window=8):
    """Validation shoppers' latest ``window`` events (all the model reads, as serving reads
    them) as store (item id, kind name) events."""
    ids = split.item_map
    for seq, kinds in list(zip(part.items, part.kinds, strict=True))[:limit]:
        pairs = list(zip(seq[-window:], kinds[-window:], strict=True))
        yield [(ids.id(int(i)), split.kind_names[int(k)]) for i, k in pairs]


def rescored_drops(predictor, events, candidates):
    """{history item: [drop per candidate]}: each history item's events removed and the
    shopper scored again through the served path (``full_sort_predict``), one at a time.

    The net alone's scores are standardised over the catalogue (densely, here), as the
    blend standardises them: the same ranking, without what moves every item alike.
    """
    model = predictor.model

    def score(evs):
        item_seq, kind_seq, _ = predictor.encode(evs)
        with torch.no_grad():
            scores = model.full_sort_predict(item_seq, kind_seq)[0]
        if isinstance(model, hybrid.HybridRanker) and not model.weight:
            real = scores[1:].double()
            scores = ((scores.double() - real.mean()) / real.std()).float()
        return scores

    index = [predictor.item_map.index(c) for c in candidates]
    full = score(events)[index]
    history = sorted({item for item, _ in events}, key=predictor.item_map.index)
    return {h: (full - score([e for e in events if e[0] != h])[index]).tolist() for h in history}


def models(split, net, knn):
    return {
        "net alone": hybrid.HybridRanker.of(net, knn, 0.0),
        "net + item-kNN": hybrid.HybridRanker.of(net, knn, 1.0),
        "item-kNN": knn,
    }


def test_contributions_are_the_drops_of_rescoring_without_each_item(fitted):
    split, net, knn = fitted
    for name, model in models(split, net, knn).items():
        predictor = predictor_of(model, split)
        for events in shoppers_events(split, split.validation, limit=15):
            top = [i for i, _ in predictor.top(events, 12, exclude=[e[0] for e in events])]
            item_seq, kind_seq, _ = predictor.encode(events)
            index = [predictor.item_map.index(c) for c in top]
            history, drops = reasons.contributions(predictor.model, item_seq, kind_seq, index)
            expected = rescored_drops(predictor, events, top)
            assert [predictor.item_map.id(int(h)) for h in history] == list(expected), name
            assert torch.allclose(
                drops, torch.tensor(list(expected.values())), atol=2e-4, rtol=1e-4
            ), name


def dot_product_reason(predictor, events, candidate):
    """The cheap alternative: the history item whose embedding has the largest dot product
    with the candidate's (what the module docstring compares leave-one-out with)."""
    items = predictor.model.item_embeddings().detach()
    history = sorted({item for item, _ in events}, key=predictor.item_map.index)
    target = items[predictor.item_map.index(candidate)]
    return max(history, key=lambda h: float(items[predictor.item_map.index(h)] @ target))


def test_the_reason_is_the_item_whose_removal_lowers_the_score_most(fitted):
    """The deletion test, on the blend a store is served: the named item is the one whose
    removal costs the candidate most far more often than a random history item is (and
    than the embedding dot product's choice is)."""
    split, net, knn = fitted
    predictor = predictor_of(hybrid.HybridRanker.of(net, knn, 1.0), split)
    named = random_hits = dot_hits = cases = 0
    for events in shoppers_events(split, split.validation):
        top = [i for i, _ in predictor.top(events, 10, exclude=[e[0] for e in events])]
        chosen = predictor.reasons(events, top)
        drops = rescored_drops(predictor, events, top)
        for column, candidate in enumerate(top):
            worst = max(drops, key=lambda h: drops[h][column])
            if drops[worst][column] <= 0:
                assert chosen[candidate] is None
                continue
            cases += 1
            named += chosen[candidate] == worst
            random_hits += 1 / len(drops)  # the expected hit rate of a random history item
            dot_hits += dot_product_reason(predictor, events, candidate) == worst
    assert cases >= 300
    assert named / cases >= 0.97, (named, cases)
    assert named / cases > 2 * random_hits / cases
    assert named / cases > dot_hits / cases


def test_only_the_shoppers_own_items_are_named_even_where_knn_points_elsewhere():
    """Item-kNN's strongest link to the candidate comes from other shoppers' items; the
    reason is still an item of this shopper's history."""
    rows = []
    for u in range(20):  # others: "x" and "y" always together
        rows += [(f"other{u}", "x", "view", None, 1.0), (f"other{u}", "y", "view", None, 2.0)]
    for u in range(3):  # a weaker link between "mine" and "y"
        rows += [(f"some{u}", "mine", "view", None, 1.0), (f"some{u}", "y", "view", None, 2.0)]
    seqs = uncleaned_sequences(rows)
    knn = baselines.ItemKNN(seqs.n_items, k=5).fit_sequences(seqs.items)
    predictor = inference.Predictor(knn, seqs.item_map.to_list(), seqs.kind_names)
    x, y = predictor.item_map.index("x"), predictor.item_map.index("y")
    neighbours = knn.neighbours[y][knn.similarity[y] > 0].tolist()
    assert neighbours[0] == x  # y's strongest neighbour is the others' item
    mine = [("mine", "view")]
    assert [i for i, _ in predictor.top(mine, 1, exclude=["mine"])] == ["y"]
    assert predictor.reasons(mine, ["y", "x"]) == {"y": "mine", "x": None}


def test_eligible_items_popularity_and_unknown_ids():
    split = clustered_split(n_users=40)
    net = small_net(split).eval()
    knn = baselines.ItemKNN(split.n_items, max_len=8, k=15).fit_sequences(split.train_items)
    predictor = predictor_of(hybrid.HybridRanker.of(net, knn, 1.0), split)
    events = [("c0-1", "view"), ("c0-2", "purchase"), ("c1-3", "view")]
    candidates = ["c0-4", "c1-5", "c0-1", "unknown"]
    everything = predictor.reasons(events, candidates)
    assert set(everything) == set(candidates) and everything["unknown"] is None
    assert {r for r in everything.values() if r} <= {"c0-1", "c0-2", "c1-3"}
    assert everything["c0-1"] != "c0-1"  # a history item is never its own reason
    only = predictor.reasons(events, candidates, eligible=["c1-3"])
    assert {r for r in only.values() if r} <= {"c1-3"}
    assert all(r is None for r in predictor.reasons(events, candidates, eligible=[]).values())
    assert all(r is None for r in predictor.reasons([], candidates).values())

    popularity = baselines.Popularity(split.n_items).fit_sequences(split.train_items)
    popular = predictor_of(popularity, split)
    assert popular.reasons(events, candidates) == dict.fromkeys(candidates)


def test_removal_keeps_later_events_in_place():
    item_seq = torch.tensor([0, 5, 7, 5, 9])
    kind_seq = torch.tensor([0, 1, 2, 3, 1])
    items, kinds = reasons._without_each(item_seq, kind_seq, torch.tensor([5, 7, 9]))
    assert items.tolist() == [[0, 0, 0, 7, 9], [0, 0, 5, 5, 9], [0, 0, 5, 7, 5]]
    assert kinds.tolist() == [[0, 0, 0, 2, 1], [0, 0, 1, 3, 1], [0, 0, 1, 2, 3]]
    assert np.all(items.numpy() >= 0)
