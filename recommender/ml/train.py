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
    loss: str = ""  # the softmax trained with ('full', 'chunked', 'sampled')
    loss_costs: dict = field(default_factory=dict)  # seconds per position, when measured
    device: str = "cpu"
    visit_start_weight: float = 1.0  # the multiplier visit_weights gave each visit's start

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


def visit_weights(split: Split, config: TrainConfig) -> tuple[list[np.ndarray], float]:
    """Training target weights with each visit's first event scaled so that visit starts
    carry ``config.visit_start_share`` of the total target weight; and the scale.

    A visit starts at an event more than ``visit_gap_seconds`` after the shopper's previous
    one. Unchanged (scale 1) without a clock (``split.train_times`` None), without a share,
    or when the data has no visit starts or nothing else.
    """
    weights, share = split.train_weights, config.visit_start_share
    if split.train_times is None or not share:  # TrainConfig keeps a share inside (0, 1)
        return weights, 1.0
    starts = []
    for times in split.train_times:
        start = np.zeros(len(times), bool)
        start[1:] = np.diff(times) > config.visit_gap_seconds
        starts.append(start)
    # The first event of a sequence is never a target, so it counts in neither sum.
    at_start = sum(float(w[s].sum()) for w, s in zip(weights, starts, strict=True))
    within = sum(float(w[1:][~s[1:]].sum()) for w, s in zip(weights, starts, strict=True))
    if at_start <= 0 or within <= 0:
        return weights, 1.0
    scale = share / (1 - share) * within / at_start
    scaled = [
        np.where(s, w * scale, w).astype(w.dtype) for w, s in zip(weights, starts, strict=True)
    ]
    return scaled, scale


def _step(model, optim, batch, grad_clip) -> torch.Tensor:
    """One optimiser step on ``batch`` (the loss probe times exactly what training runs)."""
    loss = model.calculate_loss(batch)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optim.step()
    return loss


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Batches of windows drawn at random each epoch, whatever their lengths.

    Not bucketed by length: a bucketed batch of long windows holds many more positions
    than one of short windows, yet each makes one optimiser step with the batch's mean
    loss, so a short history's positions weighed up to ``max_len`` times more than a long
    one's. Measured on Beauty (benchmarks/results/quality-notes.md, session 11): random
    batches, as SASRec+ trains, peaked higher and sooner for the price of the padding.
    """
    order = rng.permutation(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def choose_device(requested: str = "auto", cuda_available: Callable[[], bool] | None = None):
    """The torch device to train on: "auto" is CUDA when this worker has it, else CPU."""
    if requested != "auto":
        return torch.device(requested)
    available = cuda_available or torch.cuda.is_available
    return torch.device("cuda" if available() else "cpu")


LOSSES = ("auto", "full", "chunked", "sampled")


def loss_options(loss: str, config: TrainConfig, n_items: int, popularity=None) -> Callable:
    """What a batch carries for ``loss`` (see ``SequenceNet.calculate_loss``), as a function
    of the step: ``options(gen, device) -> dict`` of extra batch keys."""
    if loss == "full":
        return lambda gen, device: {}
    if loss == "chunked":
        return lambda gen, device: {"softmax_chunk": config.softmax_chunk}
    if loss != "sampled":
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    k = config.n_negatives
    if config.negative_sampling == "uniform":
        return lambda gen, device: {
            "negatives": torch.randint(1, n_items + 1, (k,), generator=gen).to(device)
        }
    if config.negative_sampling != "popularity":
        raise ValueError(
            f"unknown negative_sampling {config.negative_sampling!r}; use uniform or popularity"
        )
    q = torch.as_tensor(popularity, dtype=torch.float64)[: n_items + 1].clone()
    q[0] = 0.0
    q = q / q.sum()
    log_q = {}

    def options(gen, device):
        if device not in log_q:  # log of each item's expected count in the sample
            log_q[device] = torch.log(k * q).clamp_min(-1e4).float().to(device)
        negatives = torch.multinomial(q, k, replacement=True, generator=gen)
        return {"negatives": negatives.to(device), "log_q": log_q[device]}

    return options


def item_popularity(targets: np.ndarray, n_items: int) -> np.ndarray:
    """Training-target counts per item, plus one (every item can be drawn): [N+1]."""
    counts = np.bincount(targets[targets > 0].ravel(), minlength=n_items + 1).astype(np.float64)
    return counts + 1.0


def _time_loss(model, batches, make_batch, options, gen, device, config) -> float:
    """Seconds per training position of a full step (forward, backward, clip, Adam) with
    the given loss, on a copy of the model: the model itself is not changed."""
    probe = copy.deepcopy(model)
    optim = torch.optim.Adam(probe.parameters(), lr=config.lr)
    spent, positions = 0.0, 0
    for i, idx in enumerate(batches):
        batch = {**make_batch(idx), **options(gen, device)}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        _step(probe, optim, batch, config.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up
            spent += time.perf_counter() - t0
            positions += int((batch["target"] > 0).sum())
    return spent / max(positions, 1)


def choose_loss(
    config: TrainConfig,
    n_items: int,
    timer: Callable[[str], float] | None = None,
    positions: int | None = None,
) -> tuple[str, dict]:
    """The loss to train with, and the seconds per position measured for each candidate.

    An explicit ``config.loss`` is used as given. "auto": the full softmax below
    ``loss_probe_above`` items (cheap there, and no timing makes it vary), the former fixed
    threshold when ``sampled_softmax_above`` is set, else ``timer(loss)`` measures each
    candidate (``loss_probe_rounds`` interleaved rounds, median). The faster exact loss
    (full or chunked) is kept when the budget (``max_seconds``) pays for
    ``exact_loss_epochs`` epochs of ``positions`` training positions with it, or when the
    sampled loss is at most ``sampled_speedup`` times faster; otherwise the sampled loss. The exact loss learns more per epoch (measured on
    Beauty: validation NDCG@10 0.0352 against 0.0341 at the peak, reached by epoch 6-8
    either way), so it is worth its cost whenever the budget can pay for the epochs.
    """
    if config.loss != "auto":
        if config.loss not in LOSSES:
            raise ValueError(f"unknown loss {config.loss!r}; use one of {', '.join(LOSSES)}")
        return config.loss, {}
    if config.sampled_softmax_above is not None:
        return ("sampled" if n_items > config.sampled_softmax_above else "full"), {}
    if n_items <= config.loss_probe_above or timer is None:
        return "full", {}
    # Interleaved rounds, median per candidate: a moment when the machine is busy slows
    # every candidate alike instead of one (a single round flipped the choice between two
    # seeds of the same Beauty run: full 412 then 680 µs per position).
    names = ("full", "chunked", "sampled")
    rounds = [
        {name: timer(name) for name in names} for _ in range(max(1, config.loss_probe_rounds))
    ]
    cost = {name: float(np.median([r[name] for r in rounds])) for name in names}
    exact = min(("full", "chunked"), key=cost.get)
    affordable = (
        config.max_seconds is None
        or positions is None
        or cost[exact] * positions * config.exact_loss_epochs <= config.max_seconds
    )
    if not affordable and cost[exact] > config.sampled_speedup * cost["sampled"]:
        return "sampled", cost
    return exact, cost


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
    weights, visit_scale = visit_weights(split, config)
    x, k, y, tw, lengths = training_windows(
        split.train_items, split.train_kinds, weights, config.max_len
    )
    if len(x) == 0:
        raise ValueError("no training sequence has two or more events")
    device = choose_device(config.device)
    model.to(device)
    x, k, y, tw = (torch.from_numpy(a).to(device) for a in (x, k, y, tw))

    def make_batch(idx):
        idx_t = torch.from_numpy(idx).to(device)
        width = int(lengths[idx].max())
        sl = slice(config.max_len - width, config.max_len)
        return {
            "item_seq": x[idx_t, sl],
            "kind_seq": k[idx_t, sl],  # [B, W]
            "target": y[idx_t, sl],
            "target_weight": tw[idx_t, sl],  # [B, W]
        }

    popularity = (
        item_popularity(y.cpu().numpy(), split.n_items)
        if config.negative_sampling == "popularity"
        else None
    )

    def timer(name):
        probe_batches = _batches(lengths, config.batch_size, np.random.default_rng(config.seed))
        options = loss_options(name, config, split.n_items, popularity)
        rng_state = torch.get_rng_state()
        try:
            return _time_loss(model, probe_batches[:4], make_batch, options, gen, device, config)
        finally:
            torch.set_rng_state(rng_state)

    loss_name, loss_costs = choose_loss(config, split.n_items, timer, int(lengths.sum()))
    batch_options = loss_options(loss_name, config, split.n_items, popularity)
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_batches = -(-len(x) // config.batch_size)
    warmup_steps = int(config.warmup_epochs * n_batches)

    result = FitResult(
        model, loss=loss_name, loss_costs=loss_costs, device=str(device),
        visit_start_weight=visit_scale,
    )  # fmt: skip
    best_ndcg, best_state, bad_epochs = -1.0, None, 0
    eval_seconds, step = 0.0, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count, positions, out_of_time = 0.0, 0, 0, False
        epoch_start = time.perf_counter()
        for idx in _batches(lengths, config.batch_size, rng):
            batch = {**make_batch(idx), **batch_options(gen, device)}
            lr = config.lr * (config.lr_decay ** (epoch - 1))
            if step < warmup_steps:
                lr *= (step + 1) / warmup_steps
            for group in optim.param_groups:
                group["lr"] = lr
            loss = _step(model, optim, batch, config.grad_clip)
            step += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            positions += int(lengths[idx].sum())
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
            "positions": positions,  # training positions this epoch
            "train_seconds": train_epoch_seconds,  # its training, validation not included
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
