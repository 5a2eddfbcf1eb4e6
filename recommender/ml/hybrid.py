"""The served ranker: a sequence net blended with item-kNN, the weight chosen on validation.

A shopper's score for item j is the net's score and item-kNN's, each standardised over
the catalogue for that shopper, ``weight`` times kNN added (weight 0: the net alone,
scores untouched). On Amazon data the blend measured 10-25 % above either model alone.
The standardisation needs no full scoring: the net's mean and variance over the items
come from the embeddings' sum and Gram matrix ([d] and [d, d], cached), kNN's from its
few non-zero scores. So an approximate index can serve the blend too: the net's top
candidates (exact or IVF) together with the neighbours of the shopper's recent items hold
every item the exact blend would rank first (kNN similarities are never negative, so an
item outside both sets cannot beat a net candidate).

"Similar products" is measured the same way: embedding cosine, co-occurrence cosine
(kNN's lists) or both standardised and added, whichever finds the next item best on the
validation shoppers (HR@10 from their last item), and the ranker serves that choice.

Every piece the served score needs is a tensor buffer or a JSON-able config, so the
ranker is saved and loaded through the artifact like any model (no pickles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .baselines import ItemKNN

# Blend weights tried on validation, net alone first: a tie keeps the simpler ranker.
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Then this many rounds of halving the step around the best weight (log scale), since the
# best weight depends on the data: on Beauty it was below the grid's first non-zero step
# (0.0625 after two rounds, the lowest those reached).
BLEND_REFINE_ROUNDS = 3
# "Similar products": (embedding cosine weight, co-occurrence cosine weight), standardised.
SIMILAR_CHOICES = {"embedding": (1.0, 0.0), "cooccurrence": (0.0, 1.0), "blend": (1.0, 1.0)}


def _standardise(values: torch.Tensor, total, squares, n: int) -> torch.Tensor:
    """(values - mean) / std per row, from the sum and sum of squares over ``n`` items.

    The moments are taken in float64 (a sum of squares cancels), the scores stay float32.
    """
    mean = total / n
    var = (squares - n * mean * mean) / max(n - 1, 1)
    std = torch.sqrt(torch.clamp(var, min=0.0)).clamp_min(1e-9)
    return (values - mean[:, None].float()) / std[:, None].float()


class HybridRanker(nn.Module):
    """A net's scores plus ``weight`` times item-kNN's, each standardised per shopper."""

    name = "hybrid"

    def __init__(
        self,
        n_items: int,
        n_kinds: int,
        *,
        net: str,
        net_config: dict,
        k: int = 0,
        weight: float = 0.0,
        similar: str = "embedding",
    ):
        super().__init__()
        from .nets import build_model

        if similar not in SIMILAR_CHOICES:
            raise ValueError(f"unknown similar {similar!r}; use one of {sorted(SIMILAR_CHOICES)}")
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"weight must be a finite number >= 0, not {weight!r}")
        self.n_items, self.n_kinds = int(n_items), int(n_kinds)
        self.net = build_model(net, n_items, n_kinds, **net_config)
        self.net_name, self.k = net, int(k)
        self.weight, self.similar_choice = float(weight), similar
        self.max_len = self.net.max_len
        # Item-kNN's neighbour lists (padding row 0 and unused slots: item 0, similarity 0).
        self.register_buffer("neighbours", torch.zeros(n_items + 1, self.k, dtype=torch.int32))
        self.register_buffer("similarity", torch.zeros(n_items + 1, self.k))
        self._moments = None  # (key, item sum [d], Gram [d, d]) of the net's item vectors
        self._unit = None  # (key, unit-norm item vectors) for "similar products"

    @property
    def config(self) -> dict:
        return {
            "net": self.net_name,
            "net_config": self.net.config,
            "k": self.k,
            "weight": self.weight,
            "similar": self.similar_choice,
        }

    @classmethod
    def of(cls, net, knn=None, weight: float = 0.0, similar: str = "embedding") -> HybridRanker:
        """The ranker over a fitted ``net`` and ``knn`` (an ItemKNN), in eval mode.

        kNN's lists are kept only where a weight or "similar products" uses them.
        """
        keep = knn is not None and (weight > 0 or SIMILAR_CHOICES[similar][1] > 0)
        ranker = cls(
            net.n_items,
            net.n_kinds,
            net=net.name,
            net_config=net.config,
            k=knn.k if keep else 0,
            weight=weight if keep else 0.0,
            similar=similar if keep else "embedding",
        )
        ranker.net.load_state_dict(net.state_dict())
        if keep:
            ranker.neighbours = knn.neighbours.to(torch.int32).clone()
            ranker.similarity = knn.similarity.float().clone()
        return ranker.eval()

    # ---- the net's side

    def item_embeddings(self) -> torch.Tensor:
        return self.net.item_embeddings()  # [N+1, d]

    def shopper_vector(self, item_seq, kind_seq) -> torch.Tensor:
        return self.net.shopper_vector(item_seq, kind_seq)  # [B, d]

    def _net_moments(self):
        """Sum [d] and Gram matrix [d, d] of the real items' vectors (float64), cached."""
        items = self.item_embeddings()
        key = (items.data_ptr(), items._version)
        if self._moments is None or self._moments[0] != key:
            real = items.detach()[1:].double()
            self._moments = (key, real.sum(0), real.T @ real)
        return self._moments[1], self._moments[2]

    def _net_standardised(self, vectors, scores):
        """Net scores [B, C] standardised by their mean and std over the whole catalogue."""
        total, gram = self._net_moments()
        v = vectors.double()  # [B, d]
        squares = ((v @ gram) * v).sum(1)  # [B]: sum over items of score^2
        return _standardise(scores, v @ total, squares, self.n_items)

    # ---- item-kNN's side

    def _knn_entries(self, item_seq):
        """Non-zero kNN scores of each history: (rows [E], items [E], values [E]) unsummed."""
        b = item_seq.shape[0]
        idx = self.neighbours[item_seq].reshape(b, -1).long()  # [B, L*k]
        val = self.similarity[item_seq].reshape(b, -1)  # [B, L*k]
        rows = torch.arange(b)[:, None].expand_as(idx)
        keep = idx > 0
        return rows[keep], idx[keep], val[keep]

    def knn_scores(self, item_seq) -> torch.Tensor:
        """Item-kNN's scores [B, N+1]: the summed similarities to the history's items."""
        b = item_seq.shape[0]
        scores = torch.zeros(b, self.n_items + 1)
        idx = self.neighbours[item_seq].reshape(b, -1).long()  # [B, L*k]
        scores.scatter_add_(1, idx, self.similarity[item_seq].reshape(b, -1))
        scores[:, 0] = 0.0  # padding and unused slots
        return scores

    # ---- the blended score

    def _blend(self, vectors, net_scores, knn_scores, knn_total, knn_squares) -> torch.Tensor:
        net = self._net_standardised(vectors, net_scores)
        knn = _standardise(knn_scores, knn_total, knn_squares, self.n_items)
        return net + self.weight * knn

    def _window(self, item_seq, kind_seq):
        return item_seq[:, -self.max_len :], kind_seq[:, -self.max_len :]

    def full_sort_predict(self, item_seq, kind_seq) -> torch.Tensor:
        """The blended score of every item [B, N+1]: what the pipeline measures."""
        item_seq, kind_seq = self._window(item_seq, kind_seq)
        vectors = self.shopper_vector(item_seq, kind_seq)  # [B, d]
        net = vectors @ self.item_embeddings().T  # [B, N+1]
        if not self.weight:
            return net
        knn = self.knn_scores(item_seq)  # [B, N+1], column 0 zero
        total, squares = knn.sum(1, dtype=torch.float64), (knn * knn).sum(1, dtype=torch.float64)
        return self._blend(vectors, net, knn, total, squares)

    def candidate_scores(self, item_seq, kind_seq, vector, net_candidates):
        """(candidates [C], their blended scores [C]) for one history [1, L]: the net's
        ``net_candidates`` together with every item the history's kNN neighbours score,
        with the numbers ``full_sort_predict`` gives them, without scoring the catalogue."""
        item_seq, kind_seq = self._window(item_seq, kind_seq)
        vectors = vector[None, :]  # [1, d]
        if not self.weight:
            candidates = torch.unique(net_candidates)
            return candidates, (vectors @ self.item_embeddings()[candidates].T)[0]
        rows, idx, val = self._knn_entries(item_seq)
        candidates = torch.unique(torch.cat([net_candidates, idx]))  # sorted
        knn = torch.zeros(1, len(candidates), dtype=torch.float64)
        knn.index_put_((rows, torch.searchsorted(candidates, idx)), val.double(), accumulate=True)
        # Every non-zero kNN score is a candidate's: the moments need no other item.
        total, squares = knn.sum(1), (knn * knn).sum(1)
        net = vectors @ self.item_embeddings()[candidates].T  # [1, C]
        return candidates, self._blend(vectors, net, knn.float(), total, squares)[0]

    # ---- similar products

    def _unit_vectors(self):
        items = self.item_embeddings()
        key = (items.data_ptr(), items._version)
        if self._unit is None or self._unit[0] != key:
            self._unit = (key, F.normalize(items.detach().float(), dim=1))
        return self._unit[1]

    def similar_scores(self, indices, choice: str | None = None) -> torch.Tensor:
        """How similar each item is to each query item [Q, N+1], by ``choice`` (default: the
        one measured best). The query items, padding and unrelated items score -inf."""
        emb_weight, knn_weight = SIMILAR_CHOICES[choice or self.similar_choice]
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # [Q]
        q = len(idx)
        rows = torch.arange(q)
        if knn_weight:
            knn = torch.zeros(q, self.n_items + 1)
            knn.index_put_(
                (rows[:, None].expand(q, self.k), self.neighbours[idx].long()),
                self.similarity[idx],
                accumulate=True,
            )
            knn[:, 0] = 0.0
        if emb_weight == 0.0:
            scores = knn.masked_fill(knn <= 0, -math.inf)  # only items seen together
        else:
            unit = self._unit_vectors()
            scores = unit[idx] @ unit.T  # [Q, N+1] cosine
            if knn_weight:
                real = scores[:, 1:].double()
                cos = _standardise(scores, real.sum(1), (real * real).sum(1), self.n_items)
                real = knn[:, 1:].double()
                co = _standardise(knn, real.sum(1), (real * real).sum(1), self.n_items)
                scores = emb_weight * cos + knn_weight * co
        scores[:, 0] = -math.inf
        scores[rows, idx] = -math.inf
        return scores

    @torch.no_grad()
    def similar(self, index: int, k: int, exclude: Sequence[int] = ()):
        """Top-k (item indices, scores) most similar to item ``index``, best first."""
        scores = self.similar_scores([index])[0]
        if len(exclude):
            scores[torch.as_tensor(list(exclude), dtype=torch.long)] = -math.inf
        top = torch.topk(scores, min(k, self.n_items))
        keep = torch.isfinite(top.values)
        return top.indices[keep], top.values[keep]


# --------------------------------------------------------------------------- item-kNN alone


def item_knn_of(model) -> ItemKNN:
    """The item-kNN inside a served ``model``, scoring a history as the ItemKNN baseline
    training measured: an ItemKNN itself, or a hybrid's kNN lists as one (the tensors are
    shared, not copied; the window is the hybrid's). Raises ValueError for a model that
    carries no kNN lists (a net served alone, popularity)."""
    if isinstance(model, ItemKNN):
        return model
    if not isinstance(model, HybridRanker) or not model.k:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no item-kNN lists: validation gave item-kNN no part in it"
        )
    knn = ItemKNN(model.n_items, model.n_kinds, k=0, max_len=model.max_len)
    knn.k, knn.neighbours, knn.similarity = model.k, model.neighbours, model.similarity
    return knn.eval()


def knn_list_length(shapes: dict) -> int:
    """How many neighbours per item a model's kNN lists hold, from its tensors' shapes
    (``artifact.read_header``): 0 when it has none. Hybrids and ItemKNN alike keep them in
    a ``neighbours`` buffer [N+1, k]."""
    shape = shapes.get("neighbours") or ()
    return int(shape[1]) if len(shape) == 2 else 0


# --------------------------------------------------------------------------- choosing


def similar_hit_rate(ranker: HybridRanker, part, choice: str, *, max_users=None, seed=0) -> float:
    """Item-to-next-item HR@10: from each shopper's last item, is their next item among the
    10 most similar? (The shoppers of ``part``, a seeded subset of ``max_users``.)"""
    users = [u for u in range(len(part)) if len(part.items[u])]
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    hits = 0
    with torch.no_grad():
        for start in range(0, len(users), 512):
            batch = users[start : start + 512]
            last = [int(part.items[u][-1]) for u in batch]
            scores = ranker.similar_scores(last, choice)
            top = torch.topk(scores, min(10, ranker.n_items), dim=1)
            found = torch.isfinite(top.values)
            target = torch.as_tensor([int(part.targets[u]) for u in batch])[:, None]
            hits += int(((top.indices == target) & found).any(1).sum())
    return hits / max(len(users), 1)


def _between(best: float, tried: list[float]) -> list[float]:
    """Weights halfway (geometrically) from ``best`` to its nearest tried neighbours.

    Halfway to 0 (the net alone) is half the other weight, so a best of 0 is refined too.
    """
    i = tried.index(best)
    neighbours = tried[max(i - 1, 0) : i] + tried[i + 1 : i + 2]
    halfway = [math.sqrt(w * best) if w * best > 0 else max(w, best) / 2 for w in neighbours]
    return [round(w, 4) for w in halfway]


def choose(
    net, knn, part, measure: Callable[[nn.Module], dict], *, max_users=None, seed=0
) -> tuple[HybridRanker, dict]:
    """The ranker whose blend weight, and "similar products" whose choice, measure best on
    validation ``part``; ``measure(ranker)`` gives a ranker's validation metrics.

    Returns the ranker and what was tried: {"weight", "tried": {weight: NDCG@10},
    "similar", "similar_tried": {choice: HR@10}}.
    """
    scores = {}

    def best_weight() -> float:  # the best NDCG; a tie keeps the smaller weight
        return max(sorted(scores), key=lambda w: scores[w])

    for weight in BLEND_WEIGHTS if knn is not None else (0.0,):
        scores[weight] = measure(HybridRanker.of(net, knn, weight))["ndcg@10"]
    for _ in range(BLEND_REFINE_ROUNDS if knn is not None else 0):
        for weight in _between(best_weight(), sorted(scores)):
            if weight not in scores:
                scores[weight] = measure(HybridRanker.of(net, knn, weight))["ndcg@10"]
    best = best_weight()
    tried = {str(w): scores[w] for w in sorted(scores)}
    ranker = HybridRanker.of(net, knn, best, "blend" if knn is not None else "embedding")
    options = dict(max_users=max_users, seed=seed)
    similar_tried = {
        choice: similar_hit_rate(ranker, part, choice, **options)
        for choice in (SIMILAR_CHOICES if knn is not None else ("embedding",))
    }
    similar = max(similar_tried, key=lambda c: (similar_tried[c], c == "embedding"))
    chosen = HybridRanker.of(net, knn, best, similar)
    info = {"weight": best, "tried": tried, "similar": similar, "similar_tried": similar_tried}
    return chosen, info
