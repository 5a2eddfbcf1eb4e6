"""Non-neural baselines with the nets' scoring interface.

They are the yardstick in benchmarks and the app's fallbacks (no trained model yet,
cold shoppers), so they are ``nn.Module``s whose whole state is tensor buffers: saved
and loaded through the same artifact path as the nets, no pickling.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


def _training_pairs(items: list[np.ndarray], weights: list[np.ndarray] | None):
    """Flatten per-shopper sequences into (row, item, weight) arrays."""
    lengths = np.asarray([len(s) for s in items], dtype=np.int64)
    rows = np.repeat(np.arange(len(items)), lengths)
    cols = np.concatenate(items).astype(np.int64) if len(items) else np.zeros(0, np.int64)
    if weights is None:
        w = np.ones(len(cols), dtype=np.float32)
    else:
        w = np.concatenate(weights).astype(np.float32) if len(weights) else np.zeros(0, np.float32)
    return rows, cols, w


class Popularity(nn.Module):
    """Most (kind-weighted) interacted items first, the same list for everybody."""

    name = "popularity"

    def __init__(self, n_items: int, n_kinds: int = 2, *, max_len: int = 50):
        super().__init__()
        self.n_items, self.n_kinds, self.max_len = int(n_items), int(n_kinds), int(max_len)
        self.register_buffer("counts", torch.zeros(n_items + 1))

    @property
    def config(self) -> dict:
        return {"max_len": self.max_len}

    def fit_sequences(self, items, kinds=None, weights=None) -> Popularity:
        _, cols, w = _training_pairs(items, weights)
        counts = np.bincount(cols, weights=w, minlength=self.n_items + 1)[: self.n_items + 1]
        counts[0] = 0.0
        self.counts = torch.as_tensor(counts, dtype=torch.float32)
        return self

    def full_sort_predict(self, item_seq, kind_seq=None) -> torch.Tensor:
        return self.counts.expand(item_seq.shape[0], -1).clone()  # [B, N+1]

    def top_items(self, k: int) -> torch.Tensor:
        """Indices of the k most popular items (padding excluded)."""
        scores = self.counts.clone()
        scores[0] = -1.0
        return torch.topk(scores, min(k, self.n_items)).indices


class ItemKNN(nn.Module):
    """Item-to-item cosine similarity of shopper co-occurrence, top-``k`` neighbours kept.

    A shopper's score for item j is the sum of similarities between j and the items in
    their history (the latest ``max_len``). ``shrink`` is added to the cosine denominator
    so pairs of rarely seen items do not look perfectly similar; on Amazon Beauty it took
    validation NDCG@10 from 0.017 (0) to 0.033 (30-100). Neighbour lists are two [N+1, k] buffers, so
    scoring is a gather + scatter-add and the model stays small.
    """

    name = "itemknn"

    def __init__(
        self,
        n_items: int,
        n_kinds: int = 2,
        *,
        k: int = 100,
        max_len: int = 50,
        shrink: float = 50.0,
    ):
        super().__init__()
        self.n_items, self.n_kinds, self.max_len = int(n_items), int(n_kinds), int(max_len)
        self.k, self.shrink = int(k), float(shrink)
        self.register_buffer("neighbours", torch.zeros(n_items + 1, k, dtype=torch.long))
        self.register_buffer("similarity", torch.zeros(n_items + 1, k))

    @property
    def config(self) -> dict:
        return {"k": self.k, "max_len": self.max_len, "shrink": self.shrink}

    def fit_sequences(self, items, kinds=None, weights=None) -> ItemKNN:
        rows, cols, _ = _training_pairs(items, None)
        # Binary shopper x item matrix (repeat events count once).
        key = np.unique(rows * (self.n_items + 1) + cols)
        rows, cols = key // (self.n_items + 1), key % (self.n_items + 1)
        n_rows = int(rows.max()) + 1 if len(rows) else 1
        x = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([rows, cols])),
            torch.ones(len(rows)),
            (n_rows, self.n_items + 1),
            check_invariants=True,
        ).coalesce()
        with warnings.catch_warnings():  # "sparse support is in beta" is noise here
            warnings.simplefilter("ignore", UserWarning)
            co = torch.sparse.mm(x.t().coalesce(), x).coalesce()  # [N+1, N+1] co-occurrence
        i, j = co.indices().numpy()
        v = co.values().numpy().astype(np.float64)
        diag = np.zeros(self.n_items + 1)
        on_diag = i == j
        diag[i[on_diag]] = v[on_diag]
        off = ~on_diag
        i, j, v = i[off], j[off], v[off]
        sim = v / (np.sqrt(diag[i] * diag[j]) + self.shrink + 1e-12)
        # Keep the k most similar per row: sort by (row, -sim, col) for determinism.
        order = np.lexsort((j, -sim, i))
        i, j, sim = i[order], j[order], sim[order]
        starts = np.searchsorted(i, np.arange(self.n_items + 1))
        rank = np.arange(len(i)) - starts[i]
        keep = rank < self.k
        nb = np.zeros((self.n_items + 1, self.k), dtype=np.int64)
        sv = np.zeros((self.n_items + 1, self.k), dtype=np.float32)
        nb[i[keep], rank[keep]] = j[keep]
        sv[i[keep], rank[keep]] = sim[keep]
        self.neighbours = torch.from_numpy(nb)
        self.similarity = torch.from_numpy(sv)
        return self

    def full_sort_predict(self, item_seq, kind_seq=None) -> torch.Tensor:
        item_seq = item_seq[:, -self.max_len :]  # [B, L]
        b = item_seq.shape[0]
        # long(): a hybrid's lists served as item-kNN (``hybrid.item_knn_of``) are int32.
        idx = self.neighbours[item_seq].reshape(b, -1).long()  # [B, L*k]
        val = self.similarity[item_seq].reshape(b, -1)  # [B, L*k]
        scores = torch.zeros(b, self.n_items + 1)
        scores.scatter_add_(1, idx, val)
        return scores  # [B, N+1]

    def similar(self, index: int, k: int = 10, exclude=()) -> tuple[torch.Tensor, torch.Tensor]:
        """(item indices, similarities) of the stored neighbours of one item, best first."""
        idx, sim = self.neighbours[index], self.similarity[index]
        keep = (sim > 0) & ~torch.isin(idx, torch.as_tensor(list(exclude), dtype=torch.long))
        return idx[keep][:k], sim[keep][:k]
