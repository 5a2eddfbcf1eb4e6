"""Training cost per position on this machine, for each candidate softmax of the loss.

Times forward, backward and the Adam step of a net (benchmark shape, default: the
default model) on real Beauty batches, after warm-up, for each (batch size, softmax)
setting, and prints microseconds per training position and the epoch time that implies.
The candidates are the ones ``TrainConfig.loss = "auto"`` chooses between when training
starts (``ml.train.choose_loss`` times a few steps of each on the real batches): full
softmax, the same in blocks of items (chunked), and shared sampled negatives (uniform,
or by popularity with the log-Q correction). ``--bf16`` adds rows under CPU bfloat16
autocast, ``--compile`` rows with ``torch.compile``.

    .venv/bin/python -m benchmarks.train_step [--data PATH] [--threads 2] [--steps 25]
        [--model cnn_dnn] [--bf16] [--compile] [--smoke]

``--smoke``: a small synthetic file, one step per setting, one thread (seconds).
"""

import argparse
import contextlib
import os
import time

import numpy as np
import torch

from benchmarks import harness
from benchmarks.quality import DEFAULT_DATA, NET_CONFIG, TRAIN_CONFIG
from recommender.ml import data, nets, train

# (batch, loss, option): option = chunk size for "chunked", negatives for "sampled"
SETTINGS = [
    (128, "full", None),
    (128, "chunked", 8192),
    (128, "chunked", 2048),
    (128, "sampled", 4096),
    (128, "sampled-popularity", 4096),
    (512, "full", None),
    (512, "sampled", 4096),
    (512, "sampled", 1024),
]


def _options(loss, option, split, popularity):
    name = "sampled" if loss.startswith("sampled") else loss
    config = train.TrainConfig(
        softmax_chunk=option or 8192,
        n_negatives=option or 4096,
        negative_sampling="popularity" if loss == "sampled-popularity" else "uniform",
    )
    return train.loss_options(name, config, split.n_items, popularity)


def time_setting(
    model_name, split, windows, batch_size, loss, option, steps, *, bf16=False, compile=False
):
    """Mean seconds per training position of forward, backward and optimiser step."""
    x, k, y, tw, lengths = windows
    torch.manual_seed(0)
    model = nets.build_model(model_name, split.n_items, split.n_kinds, **NET_CONFIG[model_name])
    step_loss = torch.compile(model.calculate_loss, dynamic=True) if compile else None
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    popularity = train.item_popularity(y.numpy(), split.n_items)
    options = _options(loss, option, split, popularity)
    gen = torch.Generator().manual_seed(0)
    batches = train._batches(lengths, batch_size, np.random.default_rng(0))[: steps + 3]
    warm = min(3, len(batches) - 1)  # a small data set may not have 3 batches to spare
    spent = {"forward": 0.0, "backward": 0.0, "adam": 0.0}
    positions = 0
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i, idx in enumerate(batches):
        width = int(lengths[idx].max())
        sl = slice(x.shape[1] - width, x.shape[1])
        idx = torch.from_numpy(idx)
        batch = {
            "item_seq": x[idx, sl],
            "kind_seq": k[idx, sl],
            "target": y[idx, sl],
            "target_weight": tw[idx, sl],
            **options(gen, torch.device("cpu")),
        }
        t0 = time.perf_counter()
        with autocast:
            loss_value = (step_loss or model.calculate_loss)(batch)
        t1 = time.perf_counter()
        optim.zero_grad()
        loss_value.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        t3 = time.perf_counter()
        if i >= warm:  # warm-up steps (and compilation) are not counted
            spent["forward"] += t1 - t0
            spent["backward"] += t2 - t1
            spent["adam"] += t3 - t2
            positions += int((batch["target"] > 0).sum())
    return {name: seconds / max(positions, 1) for name, seconds in spent.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=None, help="only the settings of this batch size")
    ap.add_argument("--model", default=None, help="a net of NET_CONFIG (default: the default)")
    ap.add_argument("--bf16", action="store_true", help="also time under bfloat16 autocast")
    ap.add_argument("--compile", action="store_true", help="also time with torch.compile")
    ap.add_argument("--smoke", action="store_true", help="tiny data and steps: checks that it runs")
    args = ap.parse_args(argv)
    if args.smoke:  # explicit options still win over the smoke sizes
        ap.set_defaults(data=harness.smoke_user_item_file(), steps=1, threads=1)
        args = ap.parse_args(argv)
    from benchmarks.quality import DEFAULT_NET

    model_name = args.model or DEFAULT_NET
    torch.set_num_threads(args.threads)
    split = data.leave_one_out(data.read_user_item_file(args.data))
    arrays = train.training_windows(
        split.train_items, split.train_kinds, split.train_weights, TRAIN_CONFIG["max_len"]
    )
    x, k, y, tw, lengths = arrays
    windows = (*(torch.from_numpy(a) for a in (x, k, y, tw)), lengths)
    total_positions = int((y > 0).sum())
    load = os.getloadavg()[0]
    print(
        f"{model_name}: {split.n_items:,} items, {total_positions:,} training positions per "
        f"epoch, {args.threads} threads, load average {load:.1f}\n"
    )
    print(
        "| batch | softmax | µs/position (forward · backward · Adam) | positions/s "
        "| epoch, training only |"
    )
    print("|---:|---|---|---:|---:|")
    variants = [(False, False)]
    variants += [(True, False)] if args.bf16 else []
    variants += [(False, True)] if args.compile else []
    for bf16, compiled in variants:
        for batch_size, loss, option in SETTINGS:
            if args.batch and batch_size != args.batch:
                continue
            steps = args.steps if batch_size <= 128 else max(args.steps // 2, 1)
            per = time_setting(
                model_name, split, windows, batch_size, loss, option, steps,
                bf16=bf16, compile=compiled,
            )  # fmt: skip
            total = sum(per.values())
            parts = " · ".join(f"{v * 1e6:.0f}" for v in per.values())
            kind = {
                "full": "full",
                "chunked": f"chunked full, {option} items a block",
                "sampled": f"{option} sampled negatives",
                "sampled-popularity": f"{option} popularity negatives, log-Q",
            }[loss]
            kind += " · bf16 autocast" if bf16 else ""
            kind += " · torch.compile" if compiled else ""
            print(
                f"| {batch_size} | {kind} | {total * 1e6:.0f} ({parts}) | {1 / total:,.0f} "
                f"| {total * total_positions:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
