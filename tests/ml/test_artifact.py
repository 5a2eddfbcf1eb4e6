import io
import os
import pickle

import pytest
import torch

from recommender.ml import artifact, nets


def saved(**overrides):
    torch.manual_seed(0)
    model = nets.build_model("cnn_dnn", 5, 3, dim=8, max_len=6, tower_hidden=16)
    kw = dict(
        model_name="cnn_dnn",
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=["a", "b", 3, "d", "e"],
        kind_names=["<pad>", "view", "purchase"],
        metrics={"val_ndcg10": 0.5},
        extra={"cleaning": {"min_item_count": 2}},
    )
    kw.update(overrides)
    buf = io.BytesIO()
    artifact.save_artifact(buf, **kw)
    return model, buf.getvalue()


def test_roundtrip_rebuilds_an_identical_model():
    model, raw = saved()
    art = artifact.load_artifact(io.BytesIO(raw))
    assert art.format_version == artifact.FORMAT_VERSION == 1
    assert art.item_ids == ["a", "b", 3, "d", "e"] and art.n_items == 5 and art.n_kinds == 3
    assert art.metrics == {"val_ndcg10": 0.5} and art.extra["cleaning"]["min_item_count"] == 2
    rebuilt = art.build_model()
    x = torch.tensor([[0, 1, 2, 5]])
    k = torch.tensor([[0, 1, 2, 1]])
    model.eval()
    assert torch.equal(rebuilt.full_sort_predict(x, k), model.full_sort_predict(x, k))


def test_an_artifact_from_before_the_attention_summary_loads_as_the_mean_it_was_trained_with():
    torch.manual_seed(0)
    old = nets.build_model("cnn_dnn", 5, 3, dim=8, max_len=6, tower_hidden=16, summary="mean")
    config = {k: v for k, v in old.config.items() if k != "summary"}  # as written before
    model, raw = saved(model_config=config, state_dict=old.state_dict())
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    assert (
        rebuilt.summary_kind == "mean"
        and nets.build_model("cnn_dnn", 5, 3).summary_kind == "transformer"
    )
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), old.eval().full_sort_predict(x, k))


def test_an_artifact_of_the_former_default_attention_head_still_loads():
    """Written before the self-attention blocks became the default (no blocks/heads keys)."""
    torch.manual_seed(0)
    old = nets.build_model("cnn_dnn", 5, 3, dim=8, max_len=6, tower_hidden=16, summary="attention")
    config = {k: v for k, v in old.config.items() if k not in ("blocks", "heads")}
    model, raw = saved(model_config=config, state_dict=old.state_dict())
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    assert rebuilt.summary_kind == "attention" and not hasattr(rebuilt, "transformer")
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), old.eval().full_sort_predict(x, k))


@pytest.mark.parametrize("name", ["cnn", "sasrec", "cnn_dnn", "hybrid"])
def test_an_artifact_from_before_input_scaling_and_layouts_loads_as_it_was_trained(name):
    """Written before item vectors were scaled by sqrt(dim) at the input and before the
    stacked CNN + attention (no scale_items or layout keys): unscaled, side by side."""
    from recommender.ml import hybrid

    torch.manual_seed(0)
    small = dict(dim=8, max_len=6, scale_items=False, layout="side_by_side")
    new_keys = ("scale_items", "layout")
    if name == "hybrid":
        net_config = {**small, "tower_hidden": 16}
        old = hybrid.HybridRanker(5, 3, net="cnn_dnn", net_config=net_config).eval()
        config = {**old.config, "net_config": dict(old.config["net_config"])}
        for key in new_keys:
            del config["net_config"][key]
    else:
        old = nets.build_model(name, 5, 3, **small).eval()
        config = {k: v for k, v in old.config.items() if k not in new_keys}
    _, raw = saved(model_name=name, model_config=config, state_dict=old.state_dict())
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    net = rebuilt.net if name == "hybrid" else rebuilt
    assert net.item_scale == 1.0 and not net.stacked()
    assert nets.build_model("cnn_dnn", 5, 3, dim=16).item_scale == 4.0
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), old.full_sort_predict(x, k))


def test_a_stacked_artifact_from_before_the_depthwise_convolution_loads_as_it_was_trained():
    """The first stacked nets stored layout and scale_items but not local_conv: full."""
    torch.manual_seed(0)
    old = nets.build_model("cnn_dnn", 5, 3, dim=8, max_len=6, local_conv="full").eval()
    torch.nn.init.normal_(old.local.proj.weight, std=0.5)  # trained: no longer zero
    config = {k: v for k, v in old.config.items() if k != "local_conv"}
    _, raw = saved(model_config=config, state_dict=old.state_dict())
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    assert rebuilt.stacked() and not rebuilt.local.depthwise
    assert nets.build_model("cnn_dnn", 5, 3).local.depthwise
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), old.full_sort_predict(x, k))


@pytest.mark.parametrize("name", ["sasrec", "cnn_dnn"])
def test_an_artifact_from_before_the_sasrec_feed_forward_loads_with_its_wide_gelu_one(name):
    """Written before ffn_mult / ffn_activation / linear_init: a 4d-wide GELU FFN."""
    torch.manual_seed(0)
    wide = dict(ffn_mult=4, ffn_activation="gelu", linear_init="pytorch")
    old = nets.build_model(name, 5, 3, dim=8, max_len=6, **wide).eval()
    config = {k: v for k, v in old.config.items() if k not in wide}
    _, raw = saved(model_name=name, model_config=config, state_dict=old.state_dict())
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    ffn = rebuilt.transformer.blocks[0].ffn
    assert ffn[0].out_features == 32 and isinstance(ffn[1], torch.nn.GELU)
    assert nets.build_model(name, 5, 3, dim=8).transformer.blocks[0].ffn[0].out_features == 8
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), old.full_sort_predict(x, k))


def test_a_cnn_artifact_holding_the_attention_stack_it_never_ran_still_loads():
    """CNNs used to build (and save) an unused attention stack; its weights are skipped."""
    torch.manual_seed(0)
    cnn = nets.build_model("cnn", 5, 3, dim=8, max_len=6).eval()
    assert not any(key.startswith("transformer.") for key in cnn.state_dict())
    stack = nets.CausalTransformer(8, 6, 2, 1, 0.1)
    older = {**cnn.state_dict(), **{f"transformer.{k}": v for k, v in stack.state_dict().items()}}
    _, raw = saved(model_name="cnn", model_config=cnn.config, state_dict=older)
    rebuilt = artifact.load_artifact(io.BytesIO(raw)).build_model()
    x, k = torch.tensor([[0, 1, 2, 5]]), torch.tensor([[0, 1, 2, 1]])
    assert torch.equal(rebuilt.full_sort_predict(x, k), cnn.full_sort_predict(x, k))
    with pytest.raises(artifact.ArtifactError):  # anything else unknown is still refused
        _, raw = saved(model_name="cnn", model_config=cnn.config, state_dict={**older, "x": k})
        artifact.load_artifact(io.BytesIO(raw)).build_model()


def test_truncated_and_corrupt_files_are_refused():
    _, raw = saved()
    with pytest.raises(artifact.ArtifactError):
        artifact.load_artifact(io.BytesIO(raw[: len(raw) // 2]))
    with pytest.raises(artifact.ArtifactError):
        artifact.load_artifact(io.BytesIO(b""))
    # Flip bytes inside the tensor payload: the zip still opens, the checksum catches it.
    model, _ = saved()
    big = model.item_emb.weight.detach().numpy().tobytes()
    pos = raw.find(big[:32])
    assert pos > 0
    corrupt = bytearray(raw)
    corrupt[pos + 8 : pos + 16] = b"\x7f" * 8
    with pytest.raises(artifact.ArtifactError, match="checksum"):
        artifact.load_artifact(io.BytesIO(bytes(corrupt)))


def test_unknown_version_and_foreign_files_are_refused():
    buf = io.BytesIO()
    torch.save(
        {"magic": artifact.MAGIC, "format_version": 99, "metadata": "{}", "state_dict": {}}, buf
    )
    with pytest.raises(artifact.ArtifactError, match="version 99"):
        artifact.load_artifact(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buf)  # a torch file, but not ours
    with pytest.raises(artifact.ArtifactError, match="not a recommender.ml artifact"):
        artifact.load_artifact(io.BytesIO(buf.getvalue()))
    with pytest.raises(artifact.ArtifactError):
        artifact.load_artifact(io.BytesIO(b"hello, I am a text file"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    # Control: the payload is live, an unrestricted unpickler does run it.
    live = str(tmp_path / "live")
    pickle.loads(pickle.dumps(_Exploit(live)))
    assert os.path.isdir(live)
    marker = str(tmp_path / "pwned")
    payload = {"magic": artifact.MAGIC, "format_version": 1, "evil": _Exploit(marker)}
    for raw in (pickle.dumps(payload), _torch_saved(payload)):
        with pytest.raises(artifact.ArtifactError):
            artifact.load_artifact(io.BytesIO(raw))
        assert not os.path.exists(marker)


def _torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_mismatched_state_dict_is_an_artifact_error():
    _, raw = saved(model_config={"dim": 4, "max_len": 6})
    art = artifact.load_artifact(io.BytesIO(raw))
    with pytest.raises(artifact.ArtifactError, match="does not match"):
        art.build_model()
