"""Why an item is recommended: the shopper's own history item that contributed most to it.

The attribution is leave-one-out on the served score. For each distinct item ``h`` in the
window the model reads, the history is scored again without ``h`` (every event of it
removed, later events keeping their places, as if ``h`` had never been seen), and
``h``'s contribution to candidate ``j`` is how much ``j``'s served score drops:

    contribution(h, j) = score_j(history) - score_j(history without h)

The score is the blend's: the net's and item-kNN's, each standardised over the catalogue
for the history, weighted and added. A net served alone is standardised the same way (the
same ranking): a change that moves every item alike, such as the shorter history's
smaller shopper vector, explains no one item. Item-kNN alone is taken as it is: removing
an item only takes its own similarities off.

The reason for ``j`` is the ``h`` with the largest positive drop (none when no item's
removal lowers the score). That is by definition the deletion test's answer, so the reason
is faithful to whatever the served model is, and the net's and item-kNN's parts add up
exactly as the blend adds them (both in the blended score's units, the per-shopper
standardisation included), which a similarity between embeddings cannot do.

Why not something cheaper: the dot product of the candidate's output embedding with each
history item's input embedding costs nothing but ignores what the net does with the
history (order, kinds, attention, the tower), and has no common scale with kNN's
similarities. Measured on a trained ``cnn_dnn`` blended with item-kNN (clustered shoppers,
tests/ml/test_reasons.py, 150 validation shoppers x 10 candidates), it named the item whose
removal lowers the score most for 20 % of the candidates, hardly above a random history
item's 18 %; leave-one-out names it for all of them. Gradient x input needs a backward
(or forward-mode) pass per output dimension (64); leave-one-out needs one forward row
per history item.

Cost: one batched forward pass of the net over ``1 + U`` histories (``U`` distinct items in
the window, at most ``max_len``), plus, for item-kNN, sums over the ``k`` neighbours of each
history item; the number of candidates hardly matters (one [U+1, d] x [d, C] product).
Measured on the serving benchmark's model (dim 64, window 50, 54,542 items, one core,
``benchmarks/reasons.py``) for 150 candidates: p50 1.7 ms for 5 distinct items, 3.3 ms for
20, 11.4 ms for 49; paid when a list is computed, never on a cache hit. Only
the shopper's own history items are ever candidates for a reason: the kNN lists (built from
every shopper's behaviour) decide how much each of them contributed, never which items
may be named.
"""

from __future__ import annotations

import torch

from .baselines import ItemKNN
from .hybrid import HybridRanker, _standardise


def _without_each(item_seq, kind_seq, history):
    """[U, L] histories: ``item_seq`` [L] without every event of ``history[u]``, right-aligned
    (the later events keep their positions, the earlier ones move up), left-padded with 0."""
    length = item_seq.shape[0]
    keep = (item_seq[None, :] > 0) & (item_seq[None, :] != history[:, None])  # [U, L]
    # Kept events to the right of each position: its distance from the end once compacted.
    right = keep.flip(1).cumsum(1).flip(1) - keep.long()  # [U, L]
    rows = torch.arange(len(history))[:, None].expand_as(keep)
    new_pos = length - 1 - right
    items = torch.zeros(len(history), length, dtype=item_seq.dtype)
    kinds = torch.zeros(len(history), length, dtype=kind_seq.dtype)
    items[rows[keep], new_pos[keep]] = item_seq.expand_as(keep)[keep]
    kinds[rows[keep], new_pos[keep]] = kind_seq.expand_as(keep)[keep]
    return items, kinds


def _neighbour_drops(neighbours, similarity, history, counts, candidates):
    """Item-kNN's parts: (S [U, C], the kNN scores' moments without each history item).

    ``S[u, c]``: similarity of candidate c to history item u times u's events in the window
    (what removing u takes off c's kNN score). Also returns the full history's kNN score of
    each candidate [C] and (total, squares) over the catalogue for the full history [1] and
    each removal [U], from the non-zero scores only (they are a few thousand at most).
    """
    nb = neighbours[history].long()  # [U, k]
    sim = similarity[history].double() * (nb > 0)  # [U, k]
    # The full history's sparse kNN scores: every neighbour of every event in the window.
    keys, inverse = torch.unique(nb.reshape(-1), return_inverse=True)
    weights = (sim * counts[:, None]).reshape(-1)  # [U*k]
    sums = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, weights)
    sums[keys == 0] = 0.0  # unused slots
    total, squares = sums.sum(), (sums * sums).sum()
    at_neighbour = sums[inverse].reshape(nb.shape)  # [U, k]: the full score of each neighbour
    c = counts.double()
    dot = (at_neighbour * sim).sum(1)  # [U]
    totals = torch.cat([total[None], total - c * sim.sum(1)])  # [1+U]
    squares_all = torch.cat([squares[None], squares - 2 * c * dot + c * c * (sim * sim).sum(1)])
    # Candidates' full kNN scores and what each history item gives them.
    position = torch.searchsorted(keys, candidates).clamp(max=len(keys) - 1)
    full = torch.where(keys[position] == candidates, sums[position], 0.0)  # [C]
    order = torch.argsort(candidates)
    ordered = candidates[order]
    found = torch.searchsorted(ordered, nb).clamp(max=len(ordered) - 1)  # [U, k]
    match = (ordered[found] == nb) & (nb > 0)
    drops = torch.zeros(len(history), len(candidates), dtype=torch.float64)
    rows = torch.arange(len(history))[:, None].expand_as(nb)
    drops.index_put_((rows[match], order[found[match]]), (sim * c[:, None])[match], accumulate=True)
    return drops, full, totals, squares_all


def contributions(model, item_seq, kind_seq, candidates):
    """(history [U], drops [U, C]): the distinct items of a shopper's window and how much
    removing each lowers each candidate's served score.

    ``model``: a HybridRanker (net, alone or blended with item-kNN) or an ItemKNN;
    ``item_seq``/``kind_seq``: one encoded history [1, L], of which the window the model
    reads is the history (serving reads no more); ``candidates``: item indices [C].
    Returns None for a model that scores everyone alike (popularity): nothing in a
    shopper's history contributes to it.
    """
    candidates = torch.as_tensor(candidates, dtype=torch.long).reshape(-1)
    if not isinstance(model, (HybridRanker, ItemKNN)):
        return None
    item_seq, kind_seq = item_seq[:, -model.max_len :], kind_seq[:, -model.max_len :]
    row = item_seq[0]
    history, counts = torch.unique(row[row > 0], return_counts=True)  # [U] each
    if not len(history) or not len(candidates):
        return history, torch.zeros(len(history), len(candidates))
    if isinstance(model, ItemKNN):  # raw summed similarities: removal takes off its own
        drops, *_ = _neighbour_drops(
            model.neighbours, model.similarity, history, counts, candidates
        )
        return history, drops.float()
    items, kinds = _without_each(row, kind_seq[0], history)
    seqs = torch.cat([item_seq, items])  # [1+U, L]: the history, then each removal
    vectors = model.shopper_vector(seqs, torch.cat([kind_seq, kinds]))  # [1+U, d]
    # Standardised over the catalogue per history, as the blend does: what moves every
    # item alike (a shorter history's smaller vector) changes no ranking and is no reason.
    net = model._net_standardised(vectors, vectors @ model.item_embeddings()[candidates].T)
    if not model.weight:
        scores = net  # [1+U, C]
    else:
        drops, full, totals, squares = _neighbour_drops(
            model.neighbours, model.similarity, history, counts, candidates
        )
        knn = torch.cat([full[None], full[None] - drops])  # [1+U, C]
        scores = net + model.weight * _standardise(knn.float(), totals, squares, model.n_items)
    return history, scores[:1] - scores[1:]


@torch.no_grad()
def reason_indices(model, item_seq, kind_seq, candidates, *, eligible=None) -> list[int | None]:
    """For each candidate, the history item (index) whose removal lowers its score most.

    ``eligible``: a collection of item indices that may be named (the store's visible
    items); None allows every history item. A candidate is never its own reason, and a
    candidate no eligible history item raises gets None.
    """
    candidates = torch.as_tensor(candidates, dtype=torch.long).reshape(-1)
    found = contributions(model, item_seq, kind_seq, candidates)
    if found is None or not len(found[0]):
        return [None] * len(candidates)
    history, drops = found
    drops = drops.masked_fill(history[:, None] == candidates[None, :], -torch.inf)
    if eligible is not None:
        allowed = torch.isin(history, torch.as_tensor(sorted(eligible), dtype=torch.long))
        drops = drops.masked_fill(~allowed[:, None], -torch.inf)
    best, at = drops.max(0)  # [C] each
    names = history.tolist()
    return [names[i] if d > 0 else None for i, d in zip(at.tolist(), best.tolist(), strict=True)]
