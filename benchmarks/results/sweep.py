"""Hyper-parameter sweep helper: run one training job and write its validation curve.

    python benchmarks/results/sweep.py OUT.json NAME '{"dim": 64}' '{"max_seconds": 300}'

Used for the one-off parallel sweep recorded in quality-notes.md (each job pinned to 2
threads to mimic the 2-core target); test metrics are computed after training only.
"""

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recommender.ml import data, metrics, nets, train  # noqa: E402


def main():
    out, name, cfg, tcfg = (
        sys.argv[1],
        sys.argv[2],
        json.loads(sys.argv[3]),
        json.loads(sys.argv[4]),
    )
    threads = tcfg.pop("threads", 2)
    torch.set_num_threads(threads)
    path = (
        sys.argv[5]
        if len(sys.argv) > 5
        else str(ROOT / ".." / "shared" / "datasets" / "Beauty.txt")
    )
    split = data.leave_one_out(data.read_user_item_file(path))
    torch.manual_seed(0)
    model = nets.build_model(name, split.n_items, split.n_kinds, **cfg)
    curve = []

    def progress(p):
        curve.append(p)
        print(out, json.dumps(p), flush=True)

    res = train.fit(model, split, train.TrainConfig(**tcfg), progress=progress)
    t = time.perf_counter()
    test = metrics.evaluate(model, split.test, 10, "full")
    result = {
        "name": name,
        "config": cfg,
        "train": tcfg,
        "curve": curve,
        "best_epoch": res.best_epoch,
        "best": res.best_metrics,
        "test": test,
        "train_seconds": res.train_seconds,
        "test_eval_seconds": time.perf_counter() - t,
    }
    Path(out).write_text(json.dumps(result, indent=1))
    print("DONE", out, res.best_metrics, test, flush=True)


if __name__ == "__main__":
    main()
