import pytest
import torch

from recommender.ml import similarity

EMB = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])


def test_similar_items_by_cosine_excludes_self_padding_and_excluded():
    ids, sims = similarity.similar_items(EMB, 1, k=3)
    assert ids.tolist() == [2, 5, 3]
    assert sims[1].item() == pytest.approx(2**-0.5)
    ids, _ = similarity.similar_items(EMB, 1, k=10, exclude=[2])
    assert ids.tolist() == [5, 3, 4]  # padding, self and excluded never returned


def test_batch_matches_single_queries():
    ids, sims = similarity.similar_items_batch(EMB, [1, 3], k=2)
    for row, q in enumerate([1, 3]):
        i, s = similarity.similar_items(EMB, q, k=2)
        assert ids[row].tolist() == i.tolist() and torch.allclose(sims[row], s)
    unit = similarity.normalize(EMB)
    ids2, _ = similarity.similar_items_batch(unit, [1, 3], k=2, normalized=True)
    assert torch.equal(ids, ids2)
