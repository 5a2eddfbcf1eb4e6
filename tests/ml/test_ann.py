"""The approximate index finds (nearly) the exact top-k, and survives a save/load."""

import io

import torch

from recommender.ml.ann import IVFIndex


def clustered_vectors(n=6000, d=16, clusters=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return torch.cat([torch.zeros(1, d), x])  # row 0 = padding


def test_recall_against_exact_search_reaches_the_tuned_target():
    vectors = clustered_vectors()
    index = IVFIndex.build(vectors, target_recall=0.95, tune_queries=100)
    assert 1 <= index.nprobe < index.build_info["lists"]
    g = torch.Generator().manual_seed(1)
    queries = vectors[torch.randint(1, len(vectors), (100,), generator=g)] + 0.2 * torch.randn(
        100, 16, generator=g
    )
    hits = 0
    for q in queries:
        scores = vectors @ q
        scores[0] = -float("inf")
        exact = set(torch.topk(scores, 10).indices.tolist())
        found, found_scores = index.search(q, 10)
        assert 0 not in found and found_scores == sorted(found_scores, reverse=True)
        hits += len(exact & set(found))
    assert hits / 1000 >= 0.95


def test_an_index_survives_save_and_load():
    index = IVFIndex.build(clustered_vectors(n=500), tune_queries=20)
    buffer = io.BytesIO()
    index.save(buffer)
    buffer.seek(0)
    loaded = IVFIndex.load(buffer)
    q = torch.ones(16)
    assert loaded.search(q, 5) == index.search(q, 5) and loaded.nprobe == index.nprobe
