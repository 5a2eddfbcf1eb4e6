"""What naming a reason costs: ``Predictor.reasons`` for a shopper's served candidates.

On the serving benchmark's model (the hybrid ranker over a ``cnn_dnn`` of the production
shape, clustered item vectors, in-cluster kNN lists, ``benchmarks/serving_data.py``), in
process, one torch thread as a web worker serves: for shoppers with histories drawn like
the serving benchmark's, the time of ``Predictor.top`` for the MAX_LIMIT x OVERFETCH (150)
candidates a cache miss computes, and of ``Predictor.reasons`` for those candidates
(leave-one-out over the history: one batched forward pass of 1 + distinct items rows).
No database: the model is built in memory.

    .venv/bin/python -m benchmarks.reasons [--items 54542] [--shoppers 200] [--output PATH]

``--smoke``: 2,000 items, 10 shoppers (seconds).
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks import serving_data
from benchmarks.harness import ROOT, loadavg, percentile

CANDIDATES = 150  # MAX_LIMIT (50) x serving.OVERFETCH (3)
HISTORY_LENGTHS = (5, 20, 50)  # the serving benchmark's 20; 50 fills the window


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=54_542)
    parser.add_argument("--shoppers", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.shoppers, args.repeats = 2_000, 10, 1
    return args


def timed(call, cases, repeats):
    times = []
    for _ in range(repeats):
        for case in cases:
            started = time.perf_counter()
            call(case)
            times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


def run(args):
    from recommender.ml import data
    from recommender.ml.inference import Predictor

    torch.set_num_threads(1)
    cluster_of_item, category_of_cluster = serving_data.cluster_layout(args.items, args.seed)
    model = serving_data.served_ranker(cluster_of_item, category_of_cluster, args.seed)
    item_ids = list(range(1, args.items + 1))
    predictor = Predictor(model, item_ids, data.kind_vocabulary(data.KNOWN_KINDS))
    rows = []
    for length in HISTORY_LENGTHS:
        histories = serving_data.synthetic_histories(
            args.shoppers, length, item_ids, cluster_of_item, args.seed + length
        )
        cases = []
        for history in histories:
            seen = [pk for pk, _ in history]
            top = [pk for pk, _ in predictor.top(history, CANDIDATES, exclude=seen)]
            cases.append((history, seen, top))
        named = [predictor.reasons(history, top) for history, _, top in cases]
        rows.append(
            {
                "length": length,
                "distinct": statistics.median(len(set(seen)) for _, seen, _ in cases),
                "top": timed(
                    lambda c: predictor.top(c[0], CANDIDATES, exclude=c[1]), cases, args.repeats
                ),
                "reasons": timed(lambda c: predictor.reasons(c[0], c[2]), cases, args.repeats),
                "named": sum(r is not None for n in named for r in n.values())
                / max(sum(len(n) for n in named), 1),
            }
        )
    return rows


def render(args, rows, elapsed):
    lines = [
        "# Reasons: what naming the history item costs",
        "",
        f"- command: `.venv/bin/python -m benchmarks.reasons{' --smoke' if args.smoke else ''}`"
        f" ({args.items:,} items, {args.shoppers} shoppers x {args.repeats} repeats, {elapsed:.0f} s;"
        f" load average after: {loadavg()})",
        "- model: the serving benchmark's hybrid ranker (cnn_dnn dim 64, max_len 50, tower 256,"
        " random weights, clustered item vectors; item-kNN lists of 50, weight 1), one torch thread",
        f"- per shopper: `Predictor.top` for {CANDIDATES} candidates (exact scoring, seen items"
        f" excluded) and `Predictor.reasons` for those {CANDIDATES}",
        "",
        "| history events | distinct items (median) | top p50 / p99 ms | reasons p50 / p99 ms | candidates with a reason |",
        "|---:|---:|---|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['length']} | {row['distinct']:g} | {row['top'][0]:.2f} / {row['top'][1]:.2f}"
            f" | {row['reasons'][0]:.2f} / {row['reasons'][1]:.2f} | {row['named']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    report = render(args, run(args), time.monotonic() - started)
    print(report)
    if args.output is not None:
        args.output.write_text(report)
    elif not args.smoke:
        (ROOT / "benchmarks" / "results" / "reasons.md").write_text(report)


if __name__ == "__main__":
    main()
