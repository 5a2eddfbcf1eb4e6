import numpy as np
import pytest
import torch

from recommender.ml import baselines, nets


def seqs(*xs):
    return [np.asarray(x, dtype=np.int64) for x in xs]


def test_popularity_counts_weighted_events():
    items = seqs([1, 2, 2], [2, 3])
    weights = [np.array([1, 1, 3], np.float32), np.array([1, 1], np.float32)]
    pop = baselines.Popularity(4).fit_sequences(items, None, weights)
    assert pop.counts.tolist() == [0.0, 1.0, 5.0, 1.0, 0.0]
    scores = pop.full_sort_predict(torch.zeros(2, 3, dtype=torch.long))
    assert scores.shape == (2, 5) and pop.top_items(2).tolist() == [2, 1]


def test_itemknn_cosine_of_cooccurrence_hand_computed():
    # shoppers: {1,2}, {1,2}, {1,3}
    knn = baselines.ItemKNN(3, k=2, shrink=0.0).fit_sequences(seqs([1, 2], [2, 1], [1, 3]))
    ids, sims = knn.similar(1, 2)
    # cos(1,2) = 2 / sqrt(3*2); cos(1,3) = 1 / sqrt(3*1)
    assert ids.tolist() == [2, 3]
    assert sims.tolist() == pytest.approx([2 / np.sqrt(6), 1 / np.sqrt(3)], rel=1e-5)
    assert knn.similar(1, 2, exclude=[2])[0].tolist() == [3]
    scores = knn.full_sort_predict(torch.tensor([[0, 2, 3]]))
    # history {2,3}: item 1 gets cos(2,1)+cos(3,1); items 2/3 are not neighbours of each other
    assert scores[0, 1].item() == pytest.approx(2 / np.sqrt(6) + 1 / np.sqrt(3), rel=1e-5)
    assert scores[0, 2].item() == 0.0 and scores[0, 0].item() == 0.0


def test_baselines_roundtrip_through_state_dict_and_build_model():
    knn = baselines.ItemKNN(3, k=2).fit_sequences(seqs([1, 2], [2, 1], [1, 3]))
    again = nets.build_model("itemknn", 3, 2, **knn.config)
    again.load_state_dict(knn.state_dict())
    x = torch.tensor([[1, 3]])
    assert torch.equal(again.full_sort_predict(x, x), knn.full_sort_predict(x, x))
    pop = baselines.Popularity(3).fit_sequences(seqs([1, 1, 2]))
    pop2 = nets.build_model("popularity", 3, 2, **pop.config)
    pop2.load_state_dict(pop.state_dict())
    assert torch.equal(pop2.counts, pop.counts)
