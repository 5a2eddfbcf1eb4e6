"""Versioned model bundle: tensors (state_dict) + JSON metadata, nothing else pickled.

Loading uses ``torch.load(weights_only=True)``, whose restricted unpickler refuses any
global but tensors and primitives, so a hostile file cannot run code; a SHA-256 over the
tensors catches silent corruption that the zip container would not.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import torch

FORMAT_VERSION = 1
MAGIC = "django-recommender/ml-artifact"


class ArtifactError(Exception):
    """The file is not a usable artifact: corrupt, truncated, foreign or a newer format."""


def _checksum(state_dict: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Model options added after artifacts were written: an artifact without one was trained
# with the value here (the behaviour before the option existed), whatever the default now.
# A hybrid's net gets its own net's entry.
# Attention blocks before the SASRec+ shape: a 4d-wide GELU FFN, PyTorch's Linear init.
_WIDE_FFN = {"ffn_mult": 4, "ffn_activation": "gelu", "linear_init": "pytorch"}
_UNSCALED = {"scale_items": False, **_WIDE_FFN}
FORMER_DEFAULTS = {
    # The first stacked nets (layout and scale_items stored) had the full convolution.
    "cnn_dnn": {"summary": "mean", "layout": "side_by_side", "local_conv": "full", **_UNSCALED},
    "cnn": _UNSCALED,
    "sasrec": _UNSCALED,
}


def with_former_defaults(model_name: str, config: dict) -> dict:
    """``config`` as stored, completed with the values of options it predates."""
    config = {**FORMER_DEFAULTS.get(model_name, {}), **config}
    if model_name == "hybrid" and "net" in config:
        net_config = config.get("net_config", {})
        config["net_config"] = {**FORMER_DEFAULTS.get(config["net"], {}), **net_config}
    return config


@dataclass
class Artifact:
    model_name: str
    model_config: dict
    state_dict: dict
    item_ids: list  # index i + 1 <-> item_ids[i]; index 0 is padding
    kind_names: list  # kind vocabulary, index 0 is padding
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_kinds(self) -> int:
        return len(self.kind_names)

    def build_model(self) -> torch.nn.Module:
        """The model with its trained weights, in eval mode."""
        from .hybrid import HybridRanker
        from .nets import build_model

        config = with_former_defaults(self.model_name, self.model_config)
        try:
            if self.model_name == HybridRanker.name:  # the served ranker, built on a net
                model = HybridRanker(self.n_items, self.n_kinds, **config)
            else:
                model = build_model(self.model_name, self.n_items, self.n_kinds, **config)
            model.load_state_dict(self.state_dict, strict=True)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(
                f"artifact does not match model {self.model_name!r}: {exc}"
            ) from exc
        return model.eval()


def save_artifact(
    fileobj,
    *,
    model_name: str,
    model_config: dict,
    state_dict: dict,
    item_ids: list,
    kind_names: list,
    metrics: dict,
    extra: dict | None = None,
) -> None:
    """Write the bundle to a binary file object (or path). Metadata must be JSON-able."""
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    meta = {
        "model_name": model_name,
        "model_config": model_config,
        "item_ids": list(item_ids),
        "kind_names": list(kind_names),
        "metrics": metrics,
        "extra": extra or {},
        "checksum": _checksum(tensors),
        "torch_version": torch.__version__,
    }
    try:
        meta_json = json.dumps(meta, allow_nan=True)
    except TypeError as exc:
        raise ArtifactError(f"artifact metadata is not JSON-serialisable: {exc}") from exc
    torch.save(
        {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "metadata": meta_json,
            "state_dict": tensors,
        },
        fileobj,
    )


def load_artifact(fileobj) -> Artifact:
    """Read and verify a bundle; raises ArtifactError for anything but a valid one."""
    try:
        raw = torch.load(fileobj, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure mode means "not loadable"
        # torch's own message for a refused pickle advises weights_only=False: exactly what
        # must never be done with an untrusted file, so it is not passed on to operators.
        text = str(exc).strip()
        detail = (
            "refused by the safe loader"
            if "weights_only" in text
            else (text.splitlines() or [""])[0][:200]
        )
        raise ArtifactError(
            f"not a readable model artifact (corrupt, truncated, not produced by "
            f"recommender.ml, or containing code): {type(exc).__name__}: {detail}"
        ) from exc
    version = _checked_format(raw)
    try:
        meta = json.loads(raw["metadata"])
        state_dict = raw["state_dict"]
        if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()
        ):
            raise ValueError("state_dict must map names to tensors")
        art = Artifact(
            model_name=meta["model_name"],
            model_config=dict(meta["model_config"]),
            state_dict=state_dict,
            item_ids=list(meta["item_ids"]),
            kind_names=list(meta["kind_names"]),
            metrics=dict(meta.get("metrics") or {}),
            extra=dict(meta.get("extra") or {}),
            format_version=version,
        )
        expected = meta["checksum"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact metadata is malformed: {exc}") from exc
    if _checksum(state_dict) != expected:
        raise ArtifactError("artifact tensors do not match their checksum (corrupt file)")
    return art


def _checked_format(raw) -> int:
    """The format version of a loaded artifact dict; ArtifactError if it is not one we read."""
    if not isinstance(raw, dict) or raw.get("magic") != MAGIC:
        raise ArtifactError("not a recommender.ml artifact (missing format marker)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"unsupported artifact format version {version!r}; this code reads version "
            f"{FORMAT_VERSION} (retrain, or upgrade the app)"
        )
    return version


def read_header(fileobj) -> dict:
    """An artifact's model name, configuration and tensor shapes, without its tensors' data.

    The tensors load onto the "meta" device (shapes, no bytes), so telling what a large
    artifact holds costs its metadata only. Same safe loader and format checks as
    ``load_artifact``; the checksum, which needs the data, is left to it.
    Returns {"model_name", "model_config", "shapes": {name: shape tuple}}.
    """
    try:
        raw = torch.load(fileobj, map_location="meta", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure mode means "not loadable"
        raise ArtifactError(
            f"not a readable model artifact: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0][:200]}"
        ) from exc
    _checked_format(raw)
    try:
        meta = json.loads(raw["metadata"])
        shapes = {name: tuple(t.shape) for name, t in raw["state_dict"].items()}
        return {
            "model_name": meta["model_name"],
            "model_config": dict(meta["model_config"]),
            "shapes": shapes,
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"artifact metadata is malformed: {exc}") from exc


def artifact_bytes(**kwargs) -> bytes:
    """``save_artifact`` into memory: convenient for Django storage backends."""
    buf = io.BytesIO()
    save_artifact(buf, **kwargs)
    return buf.getvalue()
