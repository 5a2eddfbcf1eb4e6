"""Training cost per position on this machine: full softmax vs sampled negatives.

Times forward, backward and the Adam step of the CNN+DNN (benchmark shape) on real Beauty
batches, after warm-up, for each (batch size, negatives) setting, and prints CPU
microseconds per training position and the epoch time that implies. The figures behind
``TrainConfig.sampled_softmax_above`` come from here.

    .venv/bin/python -m benchmarks.train_step [--data PATH] [--threads 2] [--steps 25] [--smoke]

``--smoke``: a small synthetic file, one step per setting, one thread (seconds).
"""

import argparse
import time

import numpy as np
import torch

from benchmarks import harness
from benchmarks.quality import DEFAULT_DATA, NET_CONFIG
from recommender.ml import data, nets, train

SETTINGS = [
    (128, 0),
    (512, 0),
    (128, 4096),
    (512, 4096),
    (512, 1024),
]  # (batch, negatives; 0 = full)


def time_setting(split, windows, batch_size, negatives, steps, seed=0):
    """Mean seconds per training position of forward, backward and optimiser step."""
    x, k, y, tw, lengths = windows
    torch.manual_seed(seed)
    model = nets.build_model("cnn_dnn", split.n_items, split.n_kinds, **NET_CONFIG["cnn_dnn"])
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = train._batches(lengths, batch_size, np.random.default_rng(seed))[: steps + 3]
    warm = min(3, len(batches) - 1)  # a small data set may not have 3 batches to spare
    spent = {"forward": 0.0, "backward": 0.0, "adam": 0.0}
    positions = 0
    for i, idx in enumerate(batches):
        width = int(lengths[idx].max())
        sl = slice(x.shape[1] - width, x.shape[1])
        idx = torch.from_numpy(idx)
        batch = {
            "item_seq": x[idx, sl],
            "kind_seq": k[idx, sl],
            "target": y[idx, sl],
            "target_weight": tw[idx, sl],
        }
        if negatives:
            batch["negatives"] = torch.randint(1, split.n_items + 1, (negatives,))
        t0 = time.perf_counter()
        loss = model.calculate_loss(batch)
        t1 = time.perf_counter()
        optim.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        t3 = time.perf_counter()
        if i >= warm:  # warm-up steps are not counted
            spent["forward"] += t1 - t0
            spent["backward"] += t2 - t1
            spent["adam"] += t3 - t2
            positions += int((batch["target"] > 0).sum())
    return {name: seconds / positions for name, seconds in spent.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--smoke", action="store_true", help="tiny data and steps: checks that it runs")
    args = ap.parse_args(argv)
    if args.smoke:  # explicit options still win over the smoke sizes
        ap.set_defaults(data=harness.smoke_user_item_file(), steps=1, threads=1)
        args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = data.leave_one_out(data.read_user_item_file(args.data))
    arrays = train.training_windows(
        split.train_items, split.train_kinds, split.train_weights, NET_CONFIG["cnn_dnn"]["max_len"]
    )
    x, k, y, tw, lengths = arrays
    windows = (*(torch.from_numpy(a) for a in (x, k, y, tw)), lengths)
    total_positions = int((y > 0).sum())
    print(
        f"{split.n_items:,} items, {total_positions:,} training positions per epoch, {args.threads} threads\n"
    )
    print("| batch | softmax | µs/position (forward · backward · Adam) | epoch, training only |")
    print("|---:|---|---|---:|")
    for batch_size, negatives in SETTINGS:
        steps = args.steps if batch_size <= 128 else max(args.steps // 2, 1)
        per = time_setting(split, windows, batch_size, negatives, steps)
        total = sum(per.values())
        parts = " · ".join(f"{v * 1e6:.0f}" for v in per.values())
        kind = f"{negatives} sampled negatives" if negatives else "full"
        print(
            f"| {batch_size} | {kind} | {total * 1e6:.0f} ({parts}) | {total * total_positions:.0f} s |"
        )


if __name__ == "__main__":
    main()
