"""Training loop: next-item prediction at every prefix position, Adam, early stopping on
validation NDCG@10 (never test), a wall-clock budget, and a progress callback.

Works for any model with the shared interface; baselines (``fit_sequences``) are fitted
in one step and validated the same way, so the app can train and compare them uniformly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import TrainConfig  # noqa: F401 - where callers have always found it
from .data import Split
from .metrics import evaluate


@dataclass
class FitResult:
    model: torch.nn.Module  # holds the best weights
    curve: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)  # val_ndcg10, val_hr10, ...
    stopped: str = "epochs"  # 'epochs' | 'patience' | 'max_seconds' | 'fitted'
    train_seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.curve)


def training_windows(items, kinds, weights, max_len: int):
    """Cut each sequence into windows so every position after the first is a target once.

    Returns numpy arrays [E, max_len] (left-padded): inputs, kinds, targets, target weights.
    """
    rows = []
    for s, it in enumerate(items):
        end = len(it) - 1
        while end >= 1:
            start = max(0, end - max_len)
            rows.append((s, start, end))
            end -= max_len
    n = len(rows)
    x = np.zeros((n, max_len), np.int64)
    k = np.zeros((n, max_len), np.int64)
    y = np.zeros((n, max_len), np.int64)
    tw = np.zeros((n, max_len), np.float32)
    lengths = np.zeros(n, np.int64)
    for r, (s, start, end) in enumerate(rows):
        m = end - start
        x[r, max_len - m :] = items[s][start:end]
        k[r, max_len - m :] = kinds[s][start:end]
        y[r, max_len - m :] = items[s][start + 1 : end + 1]
        tw[r, max_len - m :] = weights[s][start + 1 : end + 1]
        lengths[r] = m
    return x, k, y, tw, lengths


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Length-bucketed batches (less padding), in random order each epoch."""
    noise = rng.random(len(lengths))
    order = np.lexsort((noise, lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _validate(model, split: Split, config: TrainConfig, **options) -> dict:
    """Full-ranking metrics@10 on the validation part (never the test part)."""
    return evaluate(
        model,
        split.validation,
        10,
        "full",
        n_items=split.n_items,
        max_users=config.val_max_users,
        seed=config.seed,
        batch_size=config.eval_batch_size,
        **options,
    )


def _fit_baseline(model, split: Split, config: TrainConfig, progress) -> FitResult:
    t0 = time.perf_counter()
    model.fit_sequences(split.train_items, split.train_kinds, split.train_weights)
    val = _validate(model, split, config)
    elapsed = time.perf_counter() - t0
    row = {
        "stage": "fitted",
        "epoch": 1,
        "epochs": 1,
        "loss": None,
        "val_ndcg10": val["ndcg@10"],
        "val_hr10": val["hr@10"],
        "elapsed": elapsed,
        "eta": 0.0,
    }
    if progress:
        progress(dict(row))
    return FitResult(
        model, [row], 1, {"val_ndcg10": val["ndcg@10"], "val_hr10": val["hr@10"]}, "fitted", elapsed
    )


def fit(
    model: torch.nn.Module,
    split: Split,
    config: TrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``split``'s training sequences; returns it with the best weights."""
    config = config or TrainConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if hasattr(model, "fit_sequences"):
        return _fit_baseline(model, split, config, progress)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    t0 = time.perf_counter()
    x, k, y, tw, lengths = training_windows(
        split.train_items, split.train_kinds, split.train_weights, config.max_len
    )
    if len(x) == 0:
        raise ValueError("no training sequence has two or more events")
    device = torch.device(config.device)
    model.to(device)
    x, k, y, tw = (torch.from_numpy(a).to(device) for a in (x, k, y, tw))
    sampled = split.n_items > config.sampled_softmax_above
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_batches = -(-len(x) // config.batch_size)
    warmup_steps = int(config.warmup_epochs * n_batches)

    result = FitResult(model)
    best_ndcg, best_state, bad_epochs = -1.0, None, 0
    eval_seconds, step = 0.0, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count, out_of_time = 0.0, 0, False
        epoch_start = time.perf_counter()
        for idx in _batches(lengths, config.batch_size, rng):
            idx = torch.from_numpy(idx).to(device)
            width = int(lengths[idx.cpu().numpy()].max())
            sl = slice(config.max_len - width, config.max_len)
            batch = {
                "item_seq": x[idx, sl],
                "kind_seq": k[idx, sl],  # [B, W]
                "target": y[idx, sl],
                "target_weight": tw[idx, sl],  # [B, W]
            }
            if sampled:
                batch["negatives"] = torch.randint(
                    1, split.n_items + 1, (config.n_negatives,), generator=gen
                ).to(device)
            lr = config.lr * (config.lr_decay ** (epoch - 1))
            if step < warmup_steps:
                lr *= (step + 1) / warmup_steps
            for group in optim.param_groups:
                group["lr"] = lr
            loss = model.calculate_loss(batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optim.step()
            step += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if config.max_seconds is not None and (
                time.perf_counter() - t0 + eval_seconds > config.max_seconds
            ):
                out_of_time = True
                break
        train_epoch_seconds = time.perf_counter() - epoch_start

        e0 = time.perf_counter()
        # No validation shoppers (a refit on every event): train the epochs, keep the last.
        val = (
            _validate(model, split, config, max_len=config.max_len)
            if len(split.validation)
            else None
        )
        eval_seconds = time.perf_counter() - e0
        elapsed = time.perf_counter() - t0
        per_epoch = train_epoch_seconds + eval_seconds
        eta = per_epoch * (config.epochs - epoch)
        if config.max_seconds is not None:
            eta = min(eta, max(config.max_seconds - elapsed, 0.0))
        row = {
            "stage": "train",
            "epoch": epoch,
            "epochs": config.epochs,
            "loss": total / max(count, 1),
            "val_ndcg10": val and val["ndcg@10"],
            "val_hr10": val and val["hr@10"],
            "elapsed": elapsed,
            "eta": eta,
        }
        result.curve.append(row)
        if val is None:
            result.best_epoch = epoch
        elif val["ndcg@10"] > best_ndcg:
            best_ndcg, bad_epochs = val["ndcg@10"], 0
            best_state = copy.deepcopy(model.state_dict())
            result.best_epoch = epoch
            result.best_metrics = {
                "val_ndcg10": val["ndcg@10"],
                "val_hr10": val["hr@10"],
                "val_mrr": val["mrr"],
            }
        else:
            bad_epochs += 1
        if progress:
            progress(dict(row))
        if out_of_time:
            result.stopped = "max_seconds"
            break
        if bad_epochs >= config.patience:
            result.stopped = "patience"
            break
        if config.max_seconds is not None and elapsed + per_epoch * 0.05 > config.max_seconds:
            result.stopped = "max_seconds"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    result.train_seconds = time.perf_counter() - t0
    return result
