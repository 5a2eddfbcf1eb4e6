import math

import numpy as np
import pytest
import torch

from recommender.ml import data, metrics


class FixedScorer:
    """Same score vector for every shopper."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.n_items = len(scores) - 1
        self.max_len = 10

    def full_sort_predict(self, item_seq, kind_seq):
        return self.scores.expand(item_seq.shape[0], -1).clone()


def part(histories, targets):
    return data.SplitPart(
        np.arange(len(targets)),
        [np.asarray(h, dtype=np.int64) for h in histories],
        [np.ones(len(h), dtype=np.int64) for h in histories],
        np.asarray(targets, dtype=np.int64),
        np.ones(len(targets), dtype=np.int64),
    )


SCORES = [0.0, 0.9, 0.5, 0.7, 0.1, 0.3]  # index 0 is padding


def test_full_ranking_excludes_seen_items_hand_computed():
    p = part([[1], [2]], [3, 4])
    out = metrics.evaluate(FixedScorer(SCORES), p, k=10, mode="full")
    # user 0: ranking 3,2,5,4 -> rank 0. user 1: ranking 1,3,5,4 -> rank 3.
    assert out["hr@10"] == pytest.approx(1.0)
    assert out["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(5)) / 2)
    assert out["mrr"] == pytest.approx((1.0 + 0.25) / 2)
    out2 = metrics.evaluate(FixedScorer(SCORES), p, k=2, mode="full")
    assert out2["hr@2"] == pytest.approx(0.5) and out2["ndcg@2"] == pytest.approx(0.5)
    # top-2 lists {3,2} and {1,3}: 3 of 5 items
    assert out2["coverage@2"] == pytest.approx(3 / 5)


def test_full_ranking_without_exclusion():
    out = metrics.evaluate(
        FixedScorer(SCORES), part([[1]], [3]), k=10, mode="full", exclude_seen=False
    )
    assert out["ndcg@10"] == pytest.approx(1.0 / math.log2(3))  # item 1 ranks above


def test_ties_are_broken_by_index_not_in_favour_of_the_target():
    flat = [0.0] + [1.0] * 5
    out = metrics.evaluate(FixedScorer(flat), part([[1]], [3]), k=10, mode="full")
    assert out["mrr"] == pytest.approx(1 / 2)  # only item 2 (lower index) ranks above


def test_target_in_history_is_a_miss_when_seen_items_are_excluded():
    out = metrics.evaluate(FixedScorer(SCORES), part([[3, 1]], [3]), k=10, mode="full")
    assert out["hr@10"] == 0.0


def test_sampled_mode_is_seeded_and_ranks_among_unseen_negatives():
    n_items = 300
    scores = [0.0] + [float(i) for i in range(1, n_items + 1)]  # higher index, higher score
    p = part([[5, 6, 7], [250]], [150, 290])
    negs = metrics.sample_negatives(p, n_items, 100, seed=4)
    assert np.array_equal(negs, metrics.sample_negatives(p, n_items, 100, seed=4))
    for u in range(2):
        assert len(set(negs[u].tolist())) == 100
        assert not set(negs[u].tolist()) & (set(p.items[u].tolist()) | {int(p.targets[u])})
    ranks = np.array([(negs[u] > p.targets[u]).sum() for u in range(2)])
    expected = metrics.metrics_from_ranks(ranks, 10)
    out = metrics.evaluate(FixedScorer(scores), p, k=10, mode="sampled", n_items=n_items, seed=4)
    for key in ("hr@10", "ndcg@10", "mrr"):
        assert out[key] == pytest.approx(expected[key])


def test_metrics_from_ranks_hand_computed():
    out = metrics.metrics_from_ranks(np.array([0, 1, 9, 10]), 10)
    assert out["hr@10"] == pytest.approx(0.75)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4)


def test_pad_left_right_aligns_latest():
    t = metrics.pad_left([np.array([1, 2, 3]), np.array([4])], max_len=2)
    assert t.tolist() == [[2, 3], [0, 4]]


def test_unknown_target_index_zero_is_always_a_miss():
    out = metrics.evaluate(FixedScorer(SCORES), part([[1]], [0]), k=10, mode="full")
    assert out["hr@10"] == 0.0 and out["mrr"] == 0.0
