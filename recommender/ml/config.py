"""Training settings and the checking of settings dicts, without torch.

``manage.py check`` validates the store's TRAINING and CLEANING dicts against these
dataclasses, and must not pay for importing torch to do it: that is why TrainConfig
lives here rather than beside the training loop (``ml.train`` re-exports it).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass


def config_problems(cls, d: dict | None) -> list[tuple[str, str]]:
    """``(key, problem)`` for every unknown key and wrongly typed value of a dict for ``cls``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems = []
    for key, value in (d or {}).items():
        if key not in fields:
            problems.append((key, f"unknown key; expected one of {', '.join(sorted(fields))}"))
        elif not _matches(value, hints[key]):
            problems.append(
                (key, f"must be {_describe(hints[key])}, not {type(value).__name__} {value!r}")
            )
        elif (problem := getattr(cls, "value_problem", lambda k, v: None)(key, value)) is not None:
            problems.append((key, problem))
    return problems


def checked_config(cls, d: dict | None) -> dict:
    """A copy of a settings dict for dataclass ``cls``; unknown keys and wrong types are an
    error (typos must not pass)."""
    problems = config_problems(cls, d)
    if problems:
        raise ValueError(
            f"bad {cls.__name__} settings: " + "; ".join(f"{k!r}: {p}" for k, p in problems)
        )
    return dict(d or {})


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (tuple, list):  # a JSON-ish list is as good as a tuple
        return isinstance(value, (tuple, list)) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, origin or hint)


def _describe(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3  # SASRec+'s; with dropout 0.1 it peaks by epoch 6-8 on Beauty
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    max_seconds: float | None = 1200.0  # wall-clock budget, validation included
    seed: int = 0
    max_len: int = 50  # events per training window (longer histories give several)
    # The softmax of the training loss: "full" (every item, one [positions, items]
    # buffer), "chunked" (the same loss in blocks of softmax_chunk items), "sampled"
    # (n_negatives shared negatives, drawn by negative_sampling), or "auto": full below
    # loss_probe_above items, else the trainer times a few steps of each candidate on the
    # real batches at start and takes the faster exact loss when max_seconds pays for
    # exact_loss_epochs epochs of it or sampled is at most sampled_speedup times faster
    # per position, else sampled (ml.train.choose_loss; benchmarks/train_step.py measures
    # the same candidates).
    loss: str = "auto"
    softmax_chunk: int = 8192
    n_negatives: int = 4096
    negative_sampling: str = "uniform"  # or "popularity" (with the log-Q correction)
    loss_probe_above: int = 5_000
    loss_probe_rounds: int = 3  # interleaved timing rounds per candidate (median kept)
    sampled_speedup: float = 2.0
    exact_loss_epochs: int = 10  # the full softmax peaks by epoch 6-8 on Beauty at lr 1e-3
    # Former fixed rule (sampled above this many items), kept for stores that set it: when
    # set, "auto" follows it instead of measuring.
    sampled_softmax_above: int | None = None
    # The share of the training loss carried by the first event of each visit (an event
    # more than visit_gap_seconds after the shopper's previous one), when the events have
    # a clock. A store validates, and a returning shopper is shown, what comes first in a
    # new visit, while most training targets are the next click within one; weighting the
    # visit starts up to this share trains for what is measured and served (the demo's
    # simulated store, 10,000 shoppers: net alone validation NDCG@10 0.0757 at their
    # natural share, 0.0889 at 0.75; ml.train.visit_weights). None: every target alike.
    visit_start_share: float | None = 0.75
    visit_gap_seconds: float = 1800.0
    grad_clip: float | None = 5.0
    val_max_users: int | None = 10_000  # seeded validation subset (None: all) to save time
    eval_batch_size: int = 512
    num_threads: int | None = None  # torch threads; None leaves the process default
    warmup_epochs: float = 0.0  # linear lr warm-up
    lr_decay: float = 1.0  # lr multiplier applied after every epoch
    # "auto": CUDA when the worker has it, else CPU; or "cpu", "cuda", "cuda:1", ...
    # The artifact is always saved on CPU.
    device: str = "auto"

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        return cls(**checked_config(cls, d))

    def __post_init__(self):
        """A value out of range fails here, wherever the config came from."""
        for f in dataclasses.fields(self):
            problem = self.value_problem(f.name, getattr(self, f.name))
            if problem is not None:
                raise ValueError(f"bad TrainConfig setting {f.name!r}: {problem}")

    @staticmethod
    def value_problem(key: str, value) -> str | None:
        """What is wrong with a well-typed ``value`` for ``key``, if anything."""
        if key == "visit_start_share" and value is not None and not 0 < value < 1:
            return f"must be between 0 and 1 (exclusive) or None, not {value!r}"
        if key == "visit_gap_seconds" and not value > 0:
            return f"must be positive, not {value!r}"
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
