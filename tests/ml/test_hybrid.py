"""The hybrid ranker: the blend the pipeline measures is the score a store is served."""

import io
import math

import numpy as np
import pytest
import torch

from recommender.ml import (
    artifact,
    baselines,
    data,
    hybrid,
    inference,
    metrics,
    nets,
    pipeline,
    train,
)
from recommender.ml.ann import IVFIndex

from .conftest import small_net


def fitted(split, epochs=4):
    net = small_net(split)
    cfg = train.TrainConfig(epochs=epochs, batch_size=32, lr=2e-2, patience=8, max_len=8)
    train.fit(net, split, cfg)
    knn = baselines.ItemKNN(split.n_items, max_len=8, k=10).fit_sequences(split.train_items)
    return net.eval(), knn


def histories(part, max_len=8):
    item_seq = metrics.pad_left(list(part.items), max_len)
    return item_seq, metrics.pad_left(list(part.kinds), max_len)


def dense_standardised(scores):
    """The benchmark's former blend scorer: standardise each row over the real items."""
    real = scores[:, 1:]
    return (scores - real.mean(1, keepdim=True)) / real.std(1, keepdim=True)


def test_weight_zero_is_the_net_alone_and_a_weight_adds_standardised_knn(chain_split):
    net, knn = fitted(chain_split)
    item_seq, kind_seq = histories(chain_split.validation)
    with torch.no_grad():
        alone = hybrid.HybridRanker.of(net, knn, 0.0).full_sort_predict(item_seq, kind_seq)
        assert torch.equal(alone, net.full_sort_predict(item_seq, kind_seq))
        blended = hybrid.HybridRanker.of(net, knn, 2.0).full_sort_predict(item_seq, kind_seq)
        expected = dense_standardised(net.full_sort_predict(item_seq, kind_seq))
        expected += 2.0 * dense_standardised(knn.full_sort_predict(item_seq))
    # Moments from the Gram matrix and kNN's non-zero scores equal the dense ones.
    assert torch.allclose(blended[:, 1:], expected[:, 1:], atol=1e-4)


def test_candidate_scores_are_the_full_scores_of_those_candidates(chain_split):
    net, knn = fitted(chain_split, epochs=1)
    ranker = hybrid.HybridRanker.of(net, knn, 1.0)
    item_seq, kind_seq = histories(chain_split.validation)
    with torch.no_grad():
        full = ranker.full_sort_predict(item_seq[:5], kind_seq[:5])
        for row in range(5):
            one, kinds = item_seq[row : row + 1], kind_seq[row : row + 1]
            vector = ranker.shopper_vector(one, kinds)[0]
            candidates, got = ranker.candidate_scores(one, kinds, vector, torch.tensor([1, 4, 7]))
            assert {1, 4, 7} <= set(candidates.tolist())
            # Every item kNN scores for this history is a candidate.
            knn = ranker.knn_scores(one)[0]
            assert set(torch.nonzero(knn).flatten().tolist()) <= set(candidates.tolist())
            assert torch.allclose(got, full[row, candidates], atol=1e-5)


def test_the_pipeline_serves_the_weight_validation_chose_and_the_artifact_holds_it(chain_split):
    # Two epochs: the net alone is not perfect yet (NDCG@10 0.99), so the blend can help.
    cfg = train.TrainConfig(epochs=2, batch_size=32, lr=2e-2, patience=8, max_len=8)
    out = pipeline.run(chain_split, "cnn_dnn", dict(dim=16, max_len=8, tower_hidden=32), cfg)
    ranker, blend = out.model, out.metrics()["blend"]
    assert isinstance(ranker, hybrid.HybridRanker) and ranker.weight == blend["weight"]
    assert {str(w) for w in hybrid.BLEND_WEIGHTS} < set(blend["tried"])  # grid, then refined
    assert blend["tried"][str(blend["weight"])] == max(blend["tried"].values())
    # The version's metrics are the served ranker's; the net alone is kept for comparison.
    assert out.scores["cnn_dnn"].valid["ndcg@10"] == pytest.approx(max(blend["tried"].values()))
    assert blend["net_alone"]["valid"]["ndcg@10"] == pytest.approx(blend["tried"]["0.0"])
    # On these chains co-occurrence knows the next item: the blend beats the net alone.
    assert blend["weight"] > 0 and ranker.k > 0
    assert blend["similar"] == max(blend["similar_tried"], key=blend["similar_tried"].get)

    buffer = io.BytesIO()
    artifact.save_artifact(
        buffer,
        model_name=ranker.name,
        model_config=ranker.config,
        state_dict=ranker.state_dict(),
        item_ids=chain_split.item_map.to_list(),
        kind_names=chain_split.kind_names,
        metrics={},
    )
    buffer.seek(0)
    predictor = inference.Predictor.from_artifact(buffer)  # tensors-only loader
    assert predictor.model.config == ranker.config
    # Served top-10 == measured top-10 for every validation shopper.
    item_seq, kind_seq = histories(chain_split.validation)
    with torch.no_grad():
        measured = ranker.full_sort_predict(item_seq, kind_seq)
    ids = chain_split.item_map
    for row, (seq, kinds) in enumerate(
        zip(chain_split.validation.items, chain_split.validation.kinds, strict=True)
    ):
        events = [
            (ids.id(int(i)), chain_split.kind_names[int(k)])
            for i, k in zip(seq, kinds, strict=True)
        ]
        scores = measured[row].clone()
        scores[0] = -torch.inf
        scores[torch.as_tensor(seq)] = -torch.inf
        expected = [ids.id(i) for i in torch.topk(scores, 10).indices.tolist()]
        served = predictor.top(events, 10, exclude=[e[0] for e in events])
        assert [i for i, _ in served] == expected


def clustered_ranker(n_items=2000, d=16, weight=1.0, seed=0):
    """A net whose item vectors form clusters, and kNN lists from shoppers within clusters."""
    g = torch.Generator().manual_seed(seed)
    clusters = 30
    of = torch.randint(clusters, (n_items,), generator=g)
    centres = torch.randn(clusters, d, generator=g)
    vectors = centres[of] + 0.4 * torch.randn(n_items, d, generator=g)
    net = nets.build_model("cnn", n_items, 3, dim=d, max_len=8)
    with torch.no_grad():
        net.item_emb.weight[1:] = vectors
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(of.numpy() == c) + 1 for c in range(clusters)]
    shoppers = [rng.choice(members[rng.integers(clusters)], 6) for _ in range(2500)]
    knn = baselines.ItemKNN(n_items, k=20, max_len=8).fit_sequences(shoppers)
    return hybrid.HybridRanker.of(net.eval(), knn, weight, "blend"), shoppers


def test_ivf_candidates_with_history_neighbours_recall_the_exhaustive_hybrid_top10():
    ranker, shoppers = clustered_ranker()
    ids = list(range(1, ranker.n_items + 1))
    predictor = inference.Predictor(ranker, ids, ["<pad>", "view", "purchase"])
    index = IVFIndex.build(predictor.item_vectors, target_recall=0.95, tune_queries=100)
    hits = total = 0
    for history in shoppers[:200]:
        events = [(int(i), "view") for i in history[:4]]
        exact = predictor.top(events, 10, exclude=[i for i, _ in events])
        approx = predictor.top(events, 10, exclude=[i for i, _ in events], index=index)
        hits += len({i for i, _ in exact} & {i for i, _ in approx})
        total += len(exact)
    assert hits / total >= 0.95
    # Probing every list, the candidates hold the exact top-10: kNN scores are never
    # negative, so no item outside the net's top and the neighbours can outrank them.
    index.nprobe = len(index.centroids)
    for history in shoppers[:50]:
        events = [(int(i), "view") for i in history[:4]]
        exact = predictor.top(events, 10, exclude=[i for i, _ in events])
        approx = predictor.top(events, 10, exclude=[i for i, _ in events], index=index)
        assert [i for i, _ in approx] == [i for i, _ in exact]


def test_similar_products_serve_the_choice_measured_best(chain_split):
    net, knn = fitted(chain_split, epochs=0)
    rates = {
        choice: hybrid.similar_hit_rate(
            hybrid.HybridRanker.of(net, knn, 0.0, "blend"), chain_split.validation, choice
        )
        for choice in hybrid.SIMILAR_CHOICES
    }
    # An untrained net's embeddings know nothing; co-occurrence knows the chain.
    assert rates["cooccurrence"] > rates["embedding"]
    ranker, info = hybrid.choose(
        net, knn, chain_split.validation, lambda r: {"ndcg@10": 0.0}, seed=0
    )
    assert info["similar_tried"] == rates and ranker.similar_choice == info["similar"]
    assert info["similar"] != "embedding"
    # Served: the query item, padding and excluded items never; only items seen together.
    ids, sims = ranker.similar(3, 5, exclude=[4])
    assert 3 not in ids.tolist() and 4 not in ids.tolist() and 0 not in ids.tolist()
    assert sims.tolist() == sorted(sims.tolist(), reverse=True)
    co = hybrid.HybridRanker.of(net, knn, 0.0, "cooccurrence")
    ids, sims = co.similar(3, 50)
    assert set(ids.tolist()) == set(knn.similar(3, 50)[0].tolist()) and bool((sims > 0).all())


def test_similar_by_embedding_is_cosine_without_the_item_padding_or_excluded():
    net = nets.build_model("cnn", 5, 3, dim=2, max_len=4)
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        net.item_emb.weight.copy_(emb)
    ranker = hybrid.HybridRanker.of(net)
    ids, sims = ranker.similar(1, 3)
    assert ids.tolist() == [2, 5, 3] and sims[1].item() == pytest.approx(2**-0.5)
    assert ranker.similar(1, 10, exclude=[2])[0].tolist() == [5, 3, 4]


def test_a_net_trained_before_the_blend_serves_alone(chain_split):
    net, _ = fitted(chain_split, epochs=1)
    predictor = inference.Predictor(net, chain_split.item_map.to_list(), chain_split.kind_names)
    assert isinstance(predictor.model, hybrid.HybridRanker) and predictor.model.weight == 0.0
    assert predictor.model.k == 0 and predictor.item_vectors.shape == (chain_split.n_items + 1, 16)


def choose_blend(measure):
    """``hybrid.choose`` on a tiny net and kNN, with validation replaced by ``measure``."""
    net = nets.build_model("cnn", 6, 2, dim=8, max_len=4)
    knn = baselines.ItemKNN(6, k=3).fit_sequences([np.array([1, 2, 3])], None, None)
    part = data.SplitPart(
        np.array([0]), [np.array([1, 2])], [np.array([1, 1])], np.array([3]), np.array([1])
    )
    return hybrid.choose(net, knn, part, measure)


def test_the_blend_weight_search_refines_the_grid_around_its_best_weight():
    """The best weight is searched between grid points (halving the log-step each round), so
    a data set whose best weight lies between two grid points still gets it."""
    best_at = 0.14
    tried = []

    def measure(ranker):
        tried.append(ranker.weight)
        return {"ndcg@10": 1.0 - abs(math.log((ranker.weight + 1e-3) / best_at))}

    ranker, info = choose_blend(measure)
    assert (
        len(tried) == len(set(tried)) == len(hybrid.BLEND_WEIGHTS) + 2 * hybrid.BLEND_REFINE_ROUNDS
    )
    # Grid best 0.25 -> 0.125 (halfway to 0) and 0.3536 -> 0.0625 and 0.1768 around 0.125
    # -> 0.0884 and 0.1487 around 0.125.
    assert info["weight"] == ranker.weight == 0.1487
    assert set(info["tried"]) == {str(w) for w in sorted(tried)}


def test_the_blend_weight_search_refines_below_the_grid_when_the_net_alone_wins_on_it():
    """A best grid weight of 0 is refined towards the first non-zero step: a small blend can
    beat both the net alone and the grid's smallest blend."""
    tried = []

    def measure(ranker):
        tried.append(ranker.weight)
        return {"ndcg@10": -abs(ranker.weight - 0.05)}

    ranker, info = choose_blend(measure)
    # Grid best 0 -> 0.125; still 0 -> 0.0625; then 0.0312 and 0.0884 around 0.0625.
    assert tried[len(hybrid.BLEND_WEIGHTS) :] == [0.125, 0.0625, 0.0312, 0.0884]
    assert info["weight"] == ranker.weight == 0.0625
