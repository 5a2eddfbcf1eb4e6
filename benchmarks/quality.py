"""Offline quality benchmark on a public ``user item`` file (default: Amazon Beauty).

Leave-one-out protocol (SASRec): for each shopper the last item is the test target and
the second-to-last the validation target. Every model is fitted on the training part only;
hyper-parameters and early stopping use validation, never test. For the test, a model
reads the shopper's history up to (and including) the validation item.

Every model, baselines included, is fitted on the same training part; only its input
history at test time includes the validation item (the protocol of published figures).
``--refit`` also measures the other protocol, what a store is served (``REFIT``): every
model, nets and baselines alike, trained again on training + validation events with the
choices validation made (grid parameters, epochs, blend weight), then tested; the table
shows both side by side.

The models the app trains (nets, popularity, item-kNN) are fitted and measured by
``recommender.ml.pipeline.run``, the app's own training path; every row (ALS too) is
measured by ``pipeline.measure``, the function that judges a version before it may serve.
Each net has two rows: the net alone, and the hybrid ranker the app serves for it (the
net blended with item-kNN at the weight validation chose, 0 allowed).

    python -m benchmarks.quality --seed 0 --max-train-minutes 20 \\
        --models popularity,itemknn,als,cnn,cnn_dnn [--ablation] [--refit]

``--ablation`` also trains the CNN alone (``cnn``), the self-attention stack alone
(``sasrec``) and both (``cnn_dnn``, the default), each alone and blended with item-kNN as
served, and prints their cost (train time, epochs, training positions per second, the
softmax ``TrainConfig.loss="auto"`` chose) beside their validation and test NDCG@10: the
default must be the best on validation.

``--smoke`` runs every model on a small synthetic file with tiny budgets (seconds).

Prints one table and writes it to benchmarks/results/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit asks for this; torch unaffected

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks import harness  # noqa: E402
from recommender.ml import baselines, data, nets, pipeline, train  # noqa: E402

ROOT = harness.ROOT

DEFAULT_DATA = ROOT / ".." / "shared" / "datasets" / "Beauty.txt"
ALL_MODELS = ("popularity", "itemknn", "als", "cnn", "cnn_dnn")
KNOWN_MODELS = (*ALL_MODELS, "sasrec")
LABELS = {
    "popularity": "popularity",
    "itemknn": "item-kNN",
    "als": "implicit ALS",
    "cnn": "CNN",
    "cnn_dnn": "CNN+DNN",
    "sasrec": "SASRec+ (attention alone)",
}
# --ablation: every part of the default model must earn its place.
ABLATION = {"cnn": "CNN alone", "sasrec": "attention alone", "cnn_dnn": "CNN + attention"}
DEFAULT_NET = "cnn_dnn"  # the app's default MODEL (recommender/conf.py)
SERVED = " + α·item-kNN (served)"

# Chosen on validation (see benchmarks/results/quality-notes.md).
NET_CONFIG = {
    "cnn": dict(dim=64, max_len=50, encoder="caser", window=8, dropout=0.3, emb_dropout=0.3),
    "cnn_dnn": dict(
        dim=64,
        max_len=50,
        layout="stacked",
        local_conv="depthwise",
        window=8,
        dropout=0.1,
        emb_dropout=0.1,
        summary="transformer",
        blocks=2,
        heads=1,
    ),
    "sasrec": dict(dim=64, max_len=50, dropout=0.1, emb_dropout=0.1, blocks=2, heads=1),
}
# Validation on a seeded 10,000-shopper subset (as Klenitskiy & Vasilev); the loss is the
# trainer's choice (``ml.train.choose_loss``), the app's.
TRAIN_CONFIG = dict(
    batch_size=128, lr=1e-3, weight_decay=0.0, patience=4, max_len=50, val_max_users=10_000
)
VAL_USERS = 10_000  # grids are compared on the same seeded validation subset
# A first pass found shrink and alpha mattered most (k=50/200 with shrink 0: 0.016/0.017
# validation NDCG@10, with shrink 10: 0.029/0.030; ALS alpha 1: 0.015, alpha 10: 0.023).
ITEMKNN_GRID = [dict(k=200, shrink=s) for s in (5.0, 10.0, 30.0, 100.0)]
ALS_GRID = [dict(factors=f, regularization=0.1, alpha=a) for f in (64, 128) for a in (10.0, 30.0)]


class ALSScorer:
    """implicit's ALS behind the shared scoring interface.

    A shopper's factors are recomputed from the history it is given (the exact ALS user
    step, ``recalculate_user``), so ALS reads the same inputs as every other model.
    """

    max_len = 10_000

    def __init__(self, model, n_items: int):
        self.model, self.n_items = model, n_items
        self.items = torch.from_numpy(np.asarray(model.item_factors))  # [N+1, f]

    def full_sort_predict(self, item_seq, kind_seq=None):
        from scipy.sparse import csr_matrix

        seq = item_seq.numpy()
        rows, cols = np.nonzero(seq)
        user_items = csr_matrix(
            (np.ones(len(rows), np.float32), (rows, seq[rows, cols])),
            shape=(len(seq), self.n_items + 1),
        )
        user_items.sum_duplicates()
        user_items.data[:] = 1.0
        users = self.model.recalculate_user(np.arange(len(seq)), user_items)  # [B, f]
        return torch.from_numpy(np.asarray(users)) @ self.items.T  # [B, N+1]


def _fit_als(params, items, n_items, seed, threads):
    from implicit.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix

    rows = np.repeat(np.arange(len(items)), [len(s) for s in items])
    cols = np.concatenate(items)
    mat = csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(items), n_items + 1)
    )
    mat.sum_duplicates()
    mat.data[:] = 1.0
    model = AlternatingLeastSquares(
        **params, iterations=15, random_state=seed, num_threads=threads, use_gpu=False
    )
    model.fit(mat, show_progress=False)
    return ALSScorer(model, n_items)


def train_config(args):
    """The TrainConfig of every model in the run: TRAIN_CONFIG with the command's overrides."""
    tconf = {**TRAIN_CONFIG, **json.loads(args.train_config or "{}")}
    return train.TrainConfig(
        seed=args.seed, max_seconds=args.max_train_minutes * 60, num_threads=args.threads, **tconf
    )


def validate(model, split, args):
    """Validation metrics on the seeded VAL_USERS subset, measured as the pipeline measures."""
    tcfg = train_config(args)
    return pipeline.measure(
        model,
        split.validation,
        n_items=split.n_items,
        max_len=tcfg.max_len,
        seed=args.seed,
        max_users=VAL_USERS,
    )


def test(model, split, args):
    """Test metrics of a model fitted outside the pipeline, measured as the pipeline measures."""
    max_len = train_config(args).max_len
    return pipeline.measure(
        model, split.test, n_items=split.n_items, max_len=max_len, seed=args.seed
    )


def test_time_sequences(seqs, split):
    """Every event but each test shopper's last one: what a refit before the test learns."""
    cut = set(split.test.shopper_index.tolist())
    keep = [slice(None, -1) if s in cut else slice(None) for s in range(len(seqs))]
    return data.Sequences(
        list(seqs.shopper_ids),
        [a[k] for a, k in zip(seqs.items, keep, strict=True)],
        [a[k] for a, k in zip(seqs.kinds, keep, strict=True)],
        [a[k] for a, k in zip(seqs.weights, keep, strict=True)],
        [a[k] for a, k in zip(seqs.times, keep, strict=True)],
        seqs.item_map,
        seqs.kind_names,
        clocked=seqs.clocked,
    )


def run_baseline(name, split, args, log, seqs=None):
    """Grid on validation (fit on the training part); with ``--refit`` also refit for the test."""
    t0 = time.perf_counter()
    grid = {"popularity": [{}], "itemknn": ITEMKNN_GRID, "als": ALS_GRID}[name]

    def make(params, seqs):
        if name == "popularity":
            return baselines.Popularity(split.n_items).fit_sequences(seqs)
        if name == "itemknn":
            return baselines.ItemKNN(split.n_items, max_len=10_000, **params).fit_sequences(seqs)
        return _fit_als(params, seqs, split.n_items, args.seed, args.threads)

    best, best_ndcg = None, -1.0
    for params in tqdm(grid, desc=f"{LABELS[name]} grid", leave=False, disable=len(grid) == 1):
        if len(grid) == 1:
            best = params
            break
        val = validate(make(params, split.train_items), split, args)
        log(
            f"  {name} {json.dumps(params)} val NDCG@10 {val['ndcg@10']:.4f} HR@10 {val['hr@10']:.4f}"
        )
        if val["ndcg@10"] > best_ndcg:
            best, best_ndcg = params, val["ndcg@10"]
    if name in pipeline.BASELINES:
        result = pipeline.run(split, name, best, train_config(args), baselines=())
        model, scores = result.model, result.scores[name].test
    else:  # ALS (no app model)
        model = make(best, split.train_items)
        scores = test(model, split, args)
    seconds = time.perf_counter() - t0
    refit = None
    if args.refit:
        refit = test(make(best, test_time_sequences(seqs, split).items), split, args)
    return model, seconds, "-", {"params": best, "val_ndcg10": best_ndcg}, scores, refit


def run_net(name, split, args, log, knn_params=None, seqs=None):
    """Fitted and measured by the app's pipeline (seeded, early-stopped on validation).

    Two rows: the net alone, and what the app serves for it, the hybrid ranker (blended
    with an item-kNN of ``knn_params``, the grid's choice, at the weight validation chose).
    With ``--refit``, the app's refit (``pipeline.refit``) of the served ranker on ``seqs``
    up to the validation item, for the epochs validation chose, tested the same way.
    """
    config = {**NET_CONFIG[name], **json.loads(args.net_config or "{}")}
    tcfg = train_config(args)
    bar = tqdm(total=tcfg.epochs, desc=f"{LABELS[name]} epochs", leave=False)

    def progress(p):
        bar.update(1)
        bar.set_postfix(
            loss=f"{p['loss']:.3f}",
            val_ndcg10=f"{p['val_ndcg10']:.4f}",
            elapsed=f"{p['elapsed'] / 60:.1f}m",
        )
        log(
            f"  {name} epoch {p['epoch']} loss {p['loss']:.4f} val NDCG@10 "
            f"{p['val_ndcg10']:.4f} HR@10 {p['val_hr10']:.4f} ({p['elapsed']:.0f}s)"
        )

    t0 = time.perf_counter()
    result = pipeline.run(
        split,
        name,
        config,
        tcfg,
        baselines=(),
        baseline_configs={"itemknn": knn_params or {}},
        progress=progress,
    )
    bar.close()
    fitted, blend = result.fitted, result.blend
    train_seconds = sum(r["train_seconds"] for r in fitted.curve)
    info = {
        "config": config,
        "loss": fitted.loss,
        "loss_us_per_position": {k: round(v * 1e6) for k, v in fitted.loss_costs.items()},
        "device": fitted.device,
        "positions_per_s": sum(r["positions"] for r in fitted.curve) / max(train_seconds, 1e-9),
        "valid": blend["net_alone"]["valid"],
        "train": {**TRAIN_CONFIG, **json.loads(args.train_config or "{}")},
        "best_epoch": fitted.best_epoch,
        "stopped": fitted.stopped,
        **fitted.best_metrics,
    }
    for weight, ndcg in blend["tried"].items():
        log(f"  {name} + itemknn weight {weight} val NDCG@10 {ndcg:.4f}")
    for choice, hr in blend["similar_tried"].items():
        log(f"  {name} similar products by {choice}: val item-to-next HR@10 {hr:.4f}")
    served = {
        "weight": blend["weight"],
        "similar": blend["similar"],
        "val_ndcg10": result.scores[name].valid["ndcg@10"],
        "net_alone_val_ndcg10": blend["net_alone"]["valid"]["ndcg@10"],
        "valid": result.scores[name].valid,
    }
    epochs = str(len(fitted.curve))
    refit_alone = refit_served = None
    if args.refit:
        knn = nets.build_model("itemknn", 1, 1, max_len=tcfg.max_len, **(knn_params or {}))
        refit = pipeline.refit(
            "hybrid",
            result.ranker,
            test_time_sequences(seqs, split),
            tcfg,
            epochs=fitted.best_epoch,
            knn=knn,
            progress=lambda p: bar.set_postfix(refit_epoch=p["epoch"]),
        )
        log(f"  {refit.reason} ({refit.seconds / 60:.1f} min)")
        refit_alone, refit_served = (
            test(refit.model.net, split, args),
            test(refit.model, split, args),
        )
    return [
        (LABELS[name], fitted.train_seconds, epochs, info, blend["net_alone"]["test"], refit_alone),
        (
            LABELS[name] + SERVED,
            time.perf_counter() - t0,
            epochs,
            served,
            result.scores[name].test,
            refit_served,
        ),
    ]


def ablation_table(infos) -> str:
    """CNN alone, attention alone, CNN + attention, each alone and as served (+ item-kNN)."""
    lines = [
        "| ablation | softmax | train time | epochs (best) | positions/s | val NDCG@10 "
        "| test NDCG@10 | + item-kNN: val NDCG@10 | + item-kNN: test NDCG@10 |",
        "|---|---|---|---|---:|---|---|---|---|",
    ]
    for name, label in ABLATION.items():
        if name not in infos:  # a partial report: not trained yet
            continue
        (_, seconds, epochs, alone, alone_test, _), (_, _, _, served, served_test, _) = infos[name]
        lines.append(
            f"| {label} (`{name}`) | {alone['loss']} | {seconds / 60:.1f} min "
            f"| {epochs} ({alone['best_epoch']}) | {alone['positions_per_s']:,.0f} "
            f"| {alone['valid']['ndcg@10']:.4f} | {alone_test['ndcg@10']:.4f} "
            f"| {served['valid']['ndcg@10']:.4f} | {served_test['ndcg@10']:.4f} |"
        )
    return "\n".join(lines)


def results_table(rows, infos, args):
    """The markdown table of ``rows`` (and of the ablation, when asked for)."""
    refit_header = " refit: full HR@10 | refit: full NDCG@10 |" if args.refit else ""
    header = (
        "| model | full HR@10 | full NDCG@10 | sampled HR@10 | sampled NDCG@10 "
        f"| coverage@10 | train time | epochs |{refit_header}"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|" + "---|---|" * args.refit]
    for label, fh, fn, sh, sn, cov, sec, ep, refit in rows:
        refit_cells = f" {refit['hr@10']:.4f} | {refit['ndcg@10']:.4f} |" if refit else ""
        lines.append(
            f"| {label} | {fh:.4f} | {fn:.4f} | {sh:.4f} | {sn:.4f} | {cov:.4f} "
            f"| {sec / 60:.1f} min | {ep} |{refit_cells}"
        )
    table = "\n".join(lines)
    if args.ablation:
        table += "\n\n" + ablation_table(infos)
    return table


def write_report(args, argv, seqs, table, details, *, pending=()):
    """The full report in ``args.out``; rewritten after every model, so a run cut short
    keeps what it measured (``pending`` names the models still to run)."""
    cmd = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Offline quality benchmark\n\n"
        f"Command: `{cmd.strip()}`  \n"
        f"Data: `{Path(args.data).name}` ({len(seqs)} shoppers, {seqs.n_items} items, "
        f"{seqs.n_events} events), leave-one-out; full ranking excludes the shopper's "
        "already-seen items; sampled = target among 100 seeded random unseen items.  \n"
        f"Machine: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} threads, seed {args.seed}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        + (f"**Partial: still to run: {', '.join(pending)}.**\n\n" if pending else "")
        + f"{table}\n\n"
        "Train time includes hyper-parameter grids (baselines) and per-epoch validation "
        "(nets)"
        + (
            "; the refit columns are every model trained again on training + validation "
            "events with the choices validation made (its time is not included)"
            if args.refit
            else ""
        )
        + ".\n\n<details><summary>log</summary>\n\n```\n"
        + "\n".join(details)
        + "\n```\n</details>\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-train-minutes",
        type=float,
        default=20.0,
        help="wall-clock training budget per neural model (default 20: the whole run ~43 min on 2 cores)",
    )
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also train CNN alone, attention alone and CNN + attention; print their table",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--refit",
        action="store_true",
        help="also refit every model on training + validation events for the test (as served)",
    )
    ap.add_argument("--net-config", default=None, help="JSON overrides for the nets")
    ap.add_argument("--train-config", default=None, help="JSON overrides for TrainConfig")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.md"))
    ap.add_argument(
        "--smoke", action="store_true", help="tiny data and budgets, seconds: checks that it runs"
    )
    args = ap.parse_args(argv)
    if args.smoke:  # explicit options still win over the smoke sizes
        ap.set_defaults(
            data=harness.smoke_user_item_file(),
            max_train_minutes=0.05,
            train_config='{"epochs": 2}',
            threads=1,
            out=harness.smoke_output("quality"),
        )
        args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.ablation:
        names += [name for name in ABLATION if name not in names]
    unknown = set(names) - set(KNOWN_MODELS)
    if unknown:
        ap.error(f"unknown models: {sorted(unknown)}")

    details = []

    def log(line):
        details.append(line)
        tqdm.write(line)

    seqs = data.read_user_item_file(args.data)
    split = data.leave_one_out(seqs)
    log(f"data {args.data}: {len(seqs)} shoppers, {seqs.n_items} items, {seqs.n_events} events")

    rows, knn_params, infos = [], None, {}
    for name in tqdm(names, desc="models"):
        if name in nets.NET_NAMES:
            done = infos[name] = run_net(name, split, args, log, knn_params, seqs)
        else:
            model, seconds, epochs, info, scores, refit = run_baseline(name, split, args, log, seqs)
            done = [(LABELS[name], seconds, epochs, info, scores, refit)]
            if name == "itemknn":
                knn_params = info["params"]
        for label, seconds, epochs, info, scores, refit in done:
            rows.append(
                (
                    label,
                    scores["hr@10"],
                    scores["ndcg@10"],
                    scores.get("sampled_hr@10", float("nan")),  # only in a catalogue of 1000+
                    scores.get("sampled_ndcg@10", float("nan")),
                    scores["coverage@10"],
                    seconds,
                    epochs,
                    refit,
                )
            )
            log(f"{label}: test full NDCG@10 {scores['ndcg@10']:.4f} {json.dumps(info)}")
            if refit:
                log(f"{label} refit: test full NDCG@10 {refit['ndcg@10']:.4f}")
        pending = names[names.index(name) + 1 :]
        if pending:
            write_report(
                args, argv, seqs, results_table(rows, infos, args), details, pending=pending
            )

    table = results_table(rows, infos, args)
    print(table)
    write_report(args, argv, seqs, table, details)
    return rows


if __name__ == "__main__":
    main()
