"""Offline ranking metrics: HR@k, NDCG@k, MRR and catalogue coverage@k.

Two modes, because the literature uses both and they can rank models differently:

* ``full``: the target is ranked against every item; items already in the shopper's
  input history are excluded (Klenitskiy & Vasilev 2023). A target that is itself in the
  history therefore counts as a miss when ``exclude_seen`` is on.
* ``sampled``: the target is ranked against ``n_negatives`` (100) items drawn uniformly,
  seeded, from those the shopper never interacted with (SASRec paper).

Ties are broken by item index (as a stable sort would), so constant scorers are not
rewarded for ties. Anything with ``full_sort_predict(item_seq [B, L], kind_seq [B, L])
-> [B, n_items + 1]`` can be evaluated: nets and baselines alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import SplitPart


def pad_left(seqs: list[np.ndarray], max_len: int, length: int | None = None) -> torch.Tensor:
    """Right-align the latest ``max_len`` entries of each sequence, 0-padded on the left."""
    lengths = [min(len(s), max_len) for s in seqs]
    width = max(max(lengths, default=1), 1) if length is None else length
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        if n:
            out[row, width - n :] = s[-n:]
    return torch.from_numpy(out)


def metrics_from_ranks(ranks: np.ndarray, k: int) -> dict:
    """0-based ranks -> hr@k, ndcg@k, mrr (averaged over users)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, "mrr": 0.0}
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(ndcg.mean()),
        "mrr": float((1.0 / (ranks + 1.0)).mean()),
    }


def sample_negatives(
    part: SplitPart, n_items: int, n_negatives: int = 100, seed: int = 0
) -> np.ndarray:
    """[U, n_negatives] items each shopper never interacted with (uniform, seeded)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(part), n_negatives), dtype=np.int64)
    for u in range(len(part)):
        seen = set(part.items[u].tolist())
        seen.add(int(part.targets[u]))
        if n_items - len(seen) < n_negatives:
            raise ValueError("catalogue too small for the requested number of negatives")
        chosen: list[int] = []
        taken: set[int] = set()
        while len(chosen) < n_negatives:
            for c in rng.integers(1, n_items + 1, size=2 * n_negatives).tolist():
                if c not in seen and c not in taken:
                    taken.add(c)
                    chosen.append(c)
                    if len(chosen) == n_negatives:
                        break
        out[u] = chosen
    return out


def _device_of(model):
    tensors = getattr(model, "parameters", None)
    if tensors is None:
        return None
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


@torch.no_grad()
def evaluate(
    model,
    part: SplitPart,
    k: int = 10,
    mode: str = "full",
    *,
    n_items: int | None = None,
    n_negatives: int = 100,
    seed: int = 0,
    batch_size: int = 512,
    exclude_seen: bool = True,
    max_len: int | None = None,
    max_users: int | None = None,
) -> dict:
    """Rank each target; returns hr@k, ndcg@k, mrr, coverage@k (full mode), n_users."""
    if mode not in ("full", "sampled"):
        raise ValueError(f"mode must be 'full' or 'sampled', not {mode!r}")
    users = np.arange(len(part))
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if max_len is None:
        max_len = int(getattr(model, "max_len", 200))
    device = _device_of(model)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    negatives = None
    if mode == "sampled":
        if n_items is None:
            n_items = int(model.n_items)
        sub = SplitPart(
            part.shopper_index[users],
            [part.items[u] for u in users],
            [part.kinds[u] for u in users],
            part.targets[users],
            part.target_kinds[users],
        )
        negatives = torch.from_numpy(sample_negatives(sub, n_items, n_negatives, seed))

    ranks = np.zeros(len(users), dtype=np.float64)
    recommended: set[int] = set()
    n_scored = None
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        items = [part.items[u] for u in batch]
        item_seq = pad_left(items, max_len)  # [B, L]
        kind_seq = pad_left([part.kinds[u] for u in batch], max_len)  # [B, L]
        if device is not None:
            item_seq, kind_seq = item_seq.to(device), kind_seq.to(device)
        scores = model.full_sort_predict(item_seq, kind_seq).float()  # [B, N+1]
        n_scored = scores.shape[1]
        target = torch.from_numpy(part.targets[batch]).to(scores.device)  # [B]
        if mode == "full":
            scores[:, 0] = -math.inf
            target_seen = torch.zeros(len(batch), dtype=torch.bool, device=scores.device)
            if exclude_seen:
                # The full history, not only the max_len window the model read.
                rows = np.repeat(np.arange(len(batch)), [len(s) for s in items])
                cols = np.concatenate(items).astype(np.int64)
                scores[
                    torch.from_numpy(rows).to(scores.device),
                    torch.from_numpy(cols).to(scores.device),
                ] = -math.inf
                target_seen = torch.tensor(
                    [bool((s == t).any()) for s, t in zip(items, part.targets[batch], strict=True)],
                    device=scores.device,
                )
            t_score = scores.gather(1, target[:, None])  # [B, 1]
            greater = (scores > t_score).sum(1, dtype=torch.int32)
            ties = (scores == t_score).sum(1, dtype=torch.int32) - 1  # [B], minus the target
            tied = torch.nonzero(ties > 0).flatten()
            if len(tied):  # only rows with ties pay for the index-aware count
                idx = torch.arange(n_scored, device=scores.device)[None, :]
                ties[tied] = ((scores[tied] == t_score[tied]) & (idx < target[tied, None])).sum(
                    1, dtype=torch.int32
                )
            r = (greater + ties).double()
            r[target_seen] = math.inf  # excluded target: a miss
            r[target <= 0] = math.inf  # an item the model never saw: a miss
            ranks[start : start + len(batch)] = r.cpu().numpy()
            top = torch.topk(scores, min(k, n_scored), dim=1).indices
            recommended.update(top[torch.isfinite(scores.gather(1, top))].tolist())
        else:
            neg = negatives[start : start + len(batch)].to(scores.device)  # [B, n_neg]
            t_score = scores.gather(1, target[:, None])  # [B, 1]
            n_score = scores.gather(1, neg)  # [B, n_neg]
            greater = (n_score > t_score).sum(1)
            ties = ((n_score == t_score) & (neg < target[:, None])).sum(1)
            r = (greater + ties).double()
            r[target <= 0] = math.inf
            ranks[start : start + len(batch)] = r.cpu().numpy()
    if was_training:
        model.train()
    out = metrics_from_ranks(ranks, k)
    if mode == "full":
        catalogue = (n_items if n_items is not None else (n_scored or 1) - 1) or 1
        out[f"coverage@{k}"] = len(recommended - {0}) / catalogue
    out["n_users"] = int(len(users))
    return out
