"""The one experiment entry point: fit a model and its baselines, measure them all alike.

Like RecBole's trainer or Gorse's ``Fit(train, valid, config) -> Score``: given a split
and configs, ``run`` fits the model and the baselines (popularity, item-kNN), measures
every one with the same function on the same validation and test shoppers, and returns
one ``PipelineResult``. A net is served as a ``hybrid.HybridRanker``: blended with the
item-kNN fitted beside it, at the weight (0 allowed: the net alone) and with the "similar
products" choice that measure best on validation; its metrics are the ranker's, since
that is what serves. The app's training (``recommender.training``) and the offline
benchmark (``benchmarks/quality.py``) both call it, so the benchmark reports what the
app measures before it promotes a version. ``measure_trained`` does the same for a model
trained earlier, on a newer split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import hybrid, metrics, nets, train
from .data import IdMap, Split, SplitPart

BASELINES = ("popularity", "itemknn")
# Sampled metrics (target among 100 unseen items) only mean something in a catalogue much
# larger than the sample; they are kept for comparison with published numbers.
SAMPLED_METRICS_MIN_ITEMS = 1000


@dataclass
class Scored:
    """One candidate: its fitted model, its metrics on validation and test, its fit time."""

    model: torch.nn.Module
    valid: dict
    test: dict
    fit_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"valid": self.valid, "test": self.test}


@dataclass
class PipelineResult:
    """Everything one run produced: the model with its curve, every candidate's scores, the index."""

    name: str
    fitted: train.FitResult  # the model (best weights), its curve, best epoch, stop reason
    scores: dict[str, Scored] = field(default_factory=dict)  # the served model's first
    index: object | None = None  # an ann.IVFIndex for a large catalogue, else None
    ranker: hybrid.HybridRanker | None = None  # what a net serves as: blended with item-kNN
    blend: dict = field(default_factory=dict)  # the weights tried, the net alone's scores

    @property
    def model(self) -> torch.nn.Module:
        """What serves: the hybrid ranker for a net, the fitted model itself for a baseline."""
        return self.ranker if self.ranker is not None else self.fitted.model

    @property
    def curve(self) -> list[dict]:
        return self.fitted.curve

    def metrics(self) -> dict:
        """The model's metrics with the baselines' beside them: what a version stores."""
        mine = self.scores[self.name]
        return {
            **mine.to_dict(),
            "baselines": {n: s.to_dict() for n, s in self.scores.items() if n != self.name},
            **({"blend": self.blend} if self.blend else {}),
            "best_epoch": self.fitted.best_epoch,
            "stopped": self.fitted.stopped,
            "train_seconds": round(self.fitted.train_seconds, 1),
            "visit_start_weight": round(self.fitted.visit_start_weight, 3),
        }


def measure(
    model, part: SplitPart, *, n_items: int, max_len: int, seed: int = 0, max_users=None
) -> dict:
    """The metrics every candidate is judged by: full-ranking @10, plus sampled @10 in a large catalogue."""
    options = dict(n_items=n_items, max_len=max_len, seed=seed, max_users=max_users)
    full = metrics.evaluate(model, part, 10, "full", **options)
    result = {
        "hr@10": full["hr@10"],
        "ndcg@10": full["ndcg@10"],
        "mrr": full.get("mrr"),
        "coverage@10": full.get("coverage@10"),
        "users": full.get("n_users", len(part)),
    }
    if n_items >= SAMPLED_METRICS_MIN_ITEMS:
        sampled = metrics.evaluate(model, part, 10, "sampled", **options)
        result.update({"sampled_hr@10": sampled["hr@10"], "sampled_ndcg@10": sampled["ndcg@10"]})
    return result


def _scored(
    model, split: Split, config: train.TrainConfig, fit_seconds=0.0, parts=None, n_items=None
):
    valid, test = parts or (split.validation, split.test)
    options = dict(n_items=n_items or split.n_items, max_len=config.max_len, seed=config.seed)
    return Scored(
        model, measure(model, valid, **options), measure(model, test, **options), fit_seconds
    )


def fit_baselines(
    split: Split,
    config: train.TrainConfig,
    names: Sequence[str] = BASELINES,
    configs: dict | None = None,
) -> dict[str, Scored]:
    """Each baseline fitted on the split's training part and measured like the model."""
    scores = {}
    for name in names:
        t0 = time.perf_counter()
        model = fit_baseline(name, split, config, (configs or {}).get(name))
        scores[name] = _scored(model, split, config, time.perf_counter() - t0)
    return scores


def fit_baseline(name: str, split: Split, config: train.TrainConfig, options=None):
    """One baseline fitted on the split's training part, reading the model's history window."""
    options = {"max_len": config.max_len, **(options or {})}
    model = nets.build_model(name, split.n_items, split.n_kinds, **options)
    return train.fit(model, split, config).model


def choose_ranker(net, knn, split: Split, config: train.TrainConfig):
    """The net blended with ``knn`` as validation prefers (``hybrid.choose``), measured alike."""
    options = dict(n_items=split.n_items, max_len=config.max_len, seed=config.seed)

    def validate(ranker):  # full ranking only: the weight is chosen on NDCG@10
        users = config.val_max_users
        return metrics.evaluate(ranker, split.validation, 10, "full", max_users=users, **options)

    return hybrid.choose(
        net, knn, split.validation, validate, max_users=config.val_max_users, seed=config.seed
    )


def run(
    split: Split,
    model_name: str,
    model_config: dict | None = None,
    train_config: train.TrainConfig | None = None,
    *,
    baselines: Sequence[str] = BASELINES,
    baseline_configs: dict | None = None,
    index_above: int | None = None,
    progress: Callable[[dict], None] | None = None,
    on_stage: Callable[..., None] | None = None,
) -> PipelineResult:
    """Fit ``model_name`` and the baselines on ``split``; measure all on the same shoppers.

    ``progress`` receives one row per epoch, ``on_stage(name, **info)`` each stage. A
    catalogue of more than ``index_above`` items also gets its approximate index.
    """
    config = train_config or train.TrainConfig()
    stage = on_stage or (lambda name, **info: None)
    stage("train", epoch=0, epochs=config.epochs)
    torch.manual_seed(config.seed)  # the initial weights too: a run is reproducible
    model = nets.build_model(model_name, split.n_items, split.n_kinds, **(model_config or {}))
    fitted = train.fit(model, split, config, progress=progress)

    stage("evaluate")
    result = PipelineResult(model_name, fitted)
    others = [name for name in baselines if name != model_name]
    result.scores[model_name] = None  # the served model's row first
    result.scores.update(fit_baselines(split, config, others, baseline_configs))
    served = fitted.model
    if hasattr(fitted.model, "item_embeddings"):
        stage("blend")
        knn = result.scores["itemknn"].model if "itemknn" in result.scores else None
        if knn is None:
            knn = fit_baseline("itemknn", split, config, (baseline_configs or {}).get("itemknn"))
        result.ranker, result.blend = choose_ranker(fitted.model, knn, split, config)
        result.blend["net_alone"] = _scored(fitted.model, split, config).to_dict()
        served = result.ranker
    result.scores[model_name] = _scored(served, split, config, fitted.train_seconds)

    if index_above is not None and split.n_items > index_above:
        if hasattr(fitted.model, "item_embeddings"):
            stage("index")
            result.index = build_index(served, split.validation, config.max_len)
    return result


def measure_trained(
    model,
    item_map: IdMap,
    kind_names: Sequence[str],
    split: Split,
    config: train.TrainConfig,
    baselines: Sequence[str] = BASELINES,
) -> dict:
    """A model trained earlier, measured on ``split`` beside freshly fitted baselines.

    Its item vocabulary is the one it was trained with: histories and targets are mapped
    to it by store id, and targets it has never seen count as misses.
    """
    parts = tuple(remap(p, split, item_map, kind_names) for p in (split.validation, split.test))
    mine = _scored(model, split, config, parts=parts, n_items=len(item_map))
    scores = fit_baselines(split, config, baselines)
    return {**mine.to_dict(), "baselines": {n: s.to_dict() for n, s in scores.items()}}


def remap(part: SplitPart, split: Split, item_map: IdMap, kind_names: Sequence[str]) -> SplitPart:
    """A split part re-indexed into another item and kind vocabulary (a stored model's)."""
    kind_index = {name: i for i, name in enumerate(kind_names)}
    items, kinds = [], []
    for seq, kind_seq in zip(part.items, part.kinds, strict=True):
        store_items = [item_map.index(split.item_map.id(int(i)), 0) for i in seq]
        store_kinds = [kind_index.get(split.kind_names[int(k)], 1) for k in kind_seq]
        keep = [j for j, i in enumerate(store_items) if i]
        items.append(np.asarray([store_items[j] for j in keep], dtype=np.int64))
        kinds.append(np.asarray([store_kinds[j] for j in keep], dtype=np.int64))
    # A target the model never saw maps to index 0, which no model can rank: a miss.
    targets = np.asarray(
        [item_map.index(split.item_map.id(int(t)), 0) for t in part.targets], dtype=np.int64
    )
    return SplitPart(part.shopper_index, items, kinds, targets, part.target_kinds)


def build_index(model, part: SplitPart, max_len: int, n_queries: int = 500):
    """The approximate index over the model's item vectors, for a large catalogue.

    Its probe count is tuned on real shopper vectors: the first ``n_queries`` shoppers'
    histories in ``part`` (validation) through the trained model.
    """
    from .ann import IVFIndex

    rows = list(range(min(n_queries, len(part))))
    with torch.no_grad():
        queries = (
            model.shopper_vector(
                metrics.pad_left([part.items[i] for i in rows], max_len),
                metrics.pad_left([part.kinds[i] for i in rows], max_len),
            )
            if rows
            else None
        )
        return IVFIndex.build(model.item_embeddings().detach(), queries=queries)


# --------------------------------------------------------------------------- the served model

# How the admin's decisions name each model, mid-sentence.
MODEL_LABELS = {
    "cnn_dnn": "the CNN+DNN",
    "cnn": "the CNN",
    "popularity": "popularity",
    "itemknn": "item-kNN",
}


def label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


@dataclass
class Choice:
    """Which of a run's candidates serves, and why, in words."""

    name: str
    reason: str  # "item-kNN: validation NDCG@10 0.0682 beats the CNN+DNN's 0.0314 and ..."
    scores: dict[str, float]  # validation NDCG@10 of every candidate
    validation_shoppers: int
    too_few_shoppers: bool = False

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "reason": self.reason,
            "scores": self.scores,
            "validation_shoppers": self.validation_shoppers,
            "too_few_shoppers": self.too_few_shoppers,
        }


def choose(result: PipelineResult, min_shoppers: int = 0) -> Choice:
    """The candidate to serve: the best validation NDCG@10 of the model and its baselines.

    Ties go to the trained model, then item-kNN, then popularity. With fewer than
    ``min_shoppers`` validation shoppers a trained model's lead may be noise, so only
    the baselines (few, robust parameters) are considered.
    """
    scores = {name: float(s.valid["ndcg@10"] or 0.0) for name, s in result.scores.items()}
    shoppers = int(result.scores[result.name].valid.get("users") or 0)
    order = [result.name] + [n for n in ("itemknn", "popularity") if n != result.name]
    order = [n for n in order if n in scores] + [n for n in scores if n not in order]
    too_few = shoppers < min_shoppers
    pool = [n for n in order if n in BASELINES] if too_few else order
    pool = pool or order
    best = max(pool, key=lambda n: (scores[n], -pool.index(n)))
    others = [n for n in pool if n != best]
    compared = " and ".join(
        f"{verb} " + " and ".join(f"{label(n)}'s {scores[n]:.4f}" for n in names)
        for verb, names in (
            ("beats", [n for n in others if scores[best] > scores[n]]),
            ("equals", [n for n in others if scores[best] == scores[n]]),
        )
        if names
    )
    reason = f"{label(best)}: validation NDCG@10 {scores[best]:.4f}" + (
        f" {compared}" if compared else ""
    )
    if too_few:
        left_out = [n for n in order if n not in pool]
        reason += (
            f"; only {shoppers} validation shoppers (fewer than {min_shoppers}), too few to "
            "trust a trained model over a baseline"
            + (
                " (" + ", ".join(f"{label(n)} scored {scores[n]:.4f}" for n in left_out) + ")"
                if left_out
                else ""
            )
        )
    return Choice(best, reason, scores, shoppers, too_few)


def served_metrics(result: PipelineResult, choice: Choice) -> dict:
    """What a version stores when ``choice`` serves: its metrics, every other candidate's beside."""
    mine = result.scores[choice.name]
    return {
        **mine.to_dict(),
        "baselines": {n: s.to_dict() for n, s in result.scores.items() if n != choice.name},
        # The blend weights tried and the net alone's scores, when the net serves as hybrid.
        **({"blend": result.blend} if result.blend and choice.name == result.name else {}),
        "best_epoch": result.fitted.best_epoch if choice.name == result.name else 1,
        "stopped": result.fitted.stopped if choice.name == result.name else "fitted",
        # How much more each visit's first event weighed in training (ml.train.visit_weights).
        "visit_start_weight": round(result.fitted.visit_start_weight, 3)
        if choice.name == result.name
        else 1.0,
        "train_seconds": round(
            result.fitted.train_seconds if choice.name == result.name else mine.fit_seconds, 1
        ),
        "choice": choice.to_dict(),
    }


@dataclass
class Refit:
    """A chosen model trained again on every event; ``model`` is None when it could not be."""

    model: torch.nn.Module | None
    epochs: int
    seconds: float
    reason: str

    def to_dict(self) -> dict:
        return {
            "done": self.model is not None,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
            "reason": self.reason,
        }


def everything(sequences) -> Split:
    """Every event as training data (no validation, no test): what a refit learns from."""
    empty = SplitPart(np.zeros(0, np.int64), [], [], np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Split(
        list(sequences.items),
        list(sequences.kinds),
        list(sequences.weights),
        empty,
        empty,
        sequences.item_map,
        sequences.kind_names,
        train_times=list(sequences.times) if sequences.clocked else None,
    )


def refit(
    name: str,
    validated: torch.nn.Module,
    sequences,
    config: train.TrainConfig,
    *,
    epochs: int,
    max_seconds: float | None = None,
    progress: Callable[[dict], None] | None = None,
    knn: torch.nn.Module | None = None,
) -> Refit:
    """``validated`` built afresh and trained on every event, the holdout days included.

    Validation chose the model and its epochs on events before the cut; the refit repeats
    that recipe (same configuration, seed and number of epochs) on all events, so the
    served model knows the newest items and shoppers' latest moves. A net that cannot run
    its ``epochs`` within ``max_seconds`` is not served half-trained: ``model`` is None.
    A hybrid ranker refits its net and its item-kNN lists (built like ``knn``, the run's
    validated item-kNN) and keeps the blend weight and "similar" choice validation made.
    """
    t0 = time.perf_counter()
    if isinstance(validated, hybrid.HybridRanker):
        net = refit(
            validated.net_name,
            validated.net,
            sequences,
            config,
            epochs=epochs,
            max_seconds=max_seconds,
            progress=progress,
        )
        if net.model is None:
            return net
        lists = None
        if validated.k:
            template = knn if knn is not None else nets.build_model("itemknn", 1, 1, k=validated.k)
            lists = refit("itemknn", template, sequences, config, epochs=1).model
        ranker = hybrid.HybridRanker.of(
            net.model, lists, validated.weight, validated.similar_choice
        )
        seconds = time.perf_counter() - t0
        return Refit(
            ranker, net.epochs, seconds, net.reason + (" (with item-kNN's lists)" if lists else "")
        )
    data = everything(sequences)
    torch.manual_seed(config.seed)
    model = nets.build_model(name, data.n_items, data.n_kinds, **validated.config)
    if hasattr(model, "fit_sequences"):
        model.fit_sequences(data.train_items, data.train_kinds, data.train_weights)
        seconds = time.perf_counter() - t0
        return Refit(model, 1, seconds, f"{label(name)} refit on all {sequences.n_events} events")
    refit_config = dataclasses.replace(
        config, epochs=max(1, int(epochs)), max_seconds=max_seconds, patience=int(epochs) + 1
    )
    fitted = train.fit(model, data, refit_config, progress=progress)
    seconds = time.perf_counter() - t0
    if fitted.epochs_run < refit_config.epochs or fitted.stopped == "max_seconds":
        return Refit(
            None,
            fitted.epochs_run,
            seconds,
            f"the refit of {label(name)} ran out of time after {fitted.epochs_run} of "
            f"{refit_config.epochs} epochs; the validated model serves",
        )
    return Refit(
        fitted.model,
        fitted.epochs_run,
        seconds,
        f"{label(name)} refit on all {sequences.n_events} events for the {refit_config.epochs} "
        "epochs chosen on validation",
    )
