"""Similar-product lookups from learned item embeddings: cosine similarity, exact top-k.

Exact scoring is memory-bound and cheap up to ~100k items (one [n, d] matrix-vector
product); beyond that an approximate index would be the next step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """Row-normalised copy; cache it when answering many queries on one model."""
    return F.normalize(embeddings.detach().float(), dim=1)


def similar_items_batch(
    embeddings: torch.Tensor,
    indices,
    k: int = 10,
    exclude: Iterable[int] | None = None,
    *,
    normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours for each query item.

    embeddings: [N+1, d] (row 0 = padding, never returned); indices: [Q] item indices.
    exclude: item indices never returned (e.g. out of stock). The query item itself is
    always excluded. Returns (neighbour indices [Q, k'], cosine similarities [Q, k']),
    k' = min(k, number of eligible items), best first.
    """
    emb = embeddings if normalized else normalize(embeddings)  # [N+1, d]
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # [Q]
    with torch.no_grad():
        sims = emb[idx] @ emb.T  # [Q, N+1]
        sims[:, 0] = -float("inf")
        sims[torch.arange(len(idx)), idx] = -float("inf")
        if exclude is not None:
            ex = torch.as_tensor(list(exclude), dtype=torch.long)
            if len(ex):
                sims[:, ex] = -float("inf")
        eligible = int(torch.isfinite(sims[0]).sum()) if len(idx) else 0
        top = torch.topk(sims, min(k, eligible), dim=1)
    return top.indices, top.values


def similar_items(
    embeddings: torch.Tensor,
    index: int,
    k: int = 10,
    exclude: Iterable[int] | None = None,
    *,
    normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours of one item: (indices [k'], similarities [k'])."""
    ids, sims = similar_items_batch(embeddings, [index], k, exclude, normalized=normalized)
    return ids[0], sims[0]
