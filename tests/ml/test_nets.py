import pytest
import torch

from recommender.ml import nets

N_ITEMS, N_KINDS = 40, 4
CONFIGS = [
    ("cnn", {"encoder": "dilated"}),
    ("cnn", {"encoder": "caser", "window": 4}),
    ("cnn_dnn", {"encoder": "dilated"}),
    ("cnn_dnn", {"encoder": "caser", "window": 4}),
    ("cnn_dnn", {"encoder": "caser", "window": 4, "summary": "attention"}),
    ("cnn_dnn", {"window": 4, "summary": "transformer", "heads": 2}),
    ("cnn_dnn", {"window": 4, "local_conv": "full"}),
    ("cnn_dnn", {"encoder": "caser", "window": 4, "layout": "side_by_side", "heads": 2}),
    ("sasrec", {"blocks": 2, "heads": 2}),
    ("sasrec", {"ffn_mult": 4, "ffn_activation": "gelu", "linear_init": "pytorch"}),
]
# Each net and summary with its default encoder settings.
DEFAULT_CONFIGS = [
    ("cnn", {}),
    ("cnn_dnn", {}),
    ("cnn_dnn", {"summary": "attention"}),
    ("cnn_dnn", {"summary": "transformer"}),
    ("cnn_dnn", {"layout": "side_by_side"}),
    ("sasrec", {}),
]


def make(name, **cfg):
    torch.manual_seed(0)
    model = nets.build_model(name, N_ITEMS, N_KINDS, dim=16, max_len=12, tower_hidden=32, **cfg)
    # The tower and the stacked convolution start at zero; trained ones are not.
    if hasattr(model, "tower"):
        torch.nn.init.normal_(model.tower[-1].weight, std=0.5)
    if hasattr(model, "local"):
        perturb(model.local)
    return model


def perturb(module):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)


def batch(b=3, length=7):
    g = torch.Generator().manual_seed(1)
    items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g)
    items[0, :3] = 0  # left padding
    kinds = torch.randint(1, N_KINDS, (b, length), generator=g) * (items > 0)
    return items, kinds


@pytest.mark.parametrize("name,cfg", CONFIGS)
def test_interface_shapes_and_consistency(name, cfg):
    model = make(name, **cfg).eval()
    items, kinds = batch()
    scores = model.full_sort_predict(items, kinds)
    assert scores.shape == (3, N_ITEMS + 1)
    u = model.shopper_vector(items, kinds)
    assert u.shape == (3, 16) and model.item_embeddings().shape == (N_ITEMS + 1, 16)
    assert torch.allclose(scores, u @ model.item_embeddings().T, atol=1e-5)


@pytest.mark.parametrize("name,cfg", CONFIGS)
def test_encoding_is_causal_and_kind_aware(name, cfg):
    """A position's vector never depends on later events; kinds change the vector."""
    model = make(name, **cfg).eval()
    items, kinds = batch(b=1, length=8)
    select = torch.zeros_like(items, dtype=torch.bool)
    select[0, 4] = True
    before = model._vectors(items, kinds, select)
    later = items.clone()
    later[0, 5:] = (later[0, 5:] % N_ITEMS) + 1
    assert torch.allclose(before, model._vectors(later, kinds, select), atol=1e-6)
    other_kinds = kinds.clone()
    other_kinds[0, 4] = 1 if kinds[0, 4] != 1 else 2
    assert not torch.allclose(before, model._vectors(items, other_kinds, select))
    if name != "cnn":  # the summary reaches beyond the CNN's window: the oldest event counts
        oldest = items.clone()
        oldest[0, 0] = (oldest[0, 0] % N_ITEMS) + 1
        assert not torch.allclose(before, model._vectors(oldest, kinds, select))


@pytest.mark.parametrize("name,cfg", DEFAULT_CONFIGS)
def test_left_padding_does_not_change_the_shopper_vector(name, cfg):
    model = make(name, **cfg).eval()
    items, kinds = batch(b=1, length=5)
    items[0, 0], kinds[0, 0] = 0, 0
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), items], dim=1)
    padded_k = torch.cat([torch.zeros(1, 4, dtype=torch.long), kinds], dim=1)
    assert torch.allclose(
        model.shopper_vector(items, kinds), model.shopper_vector(padded, padded_k), atol=1e-5
    )


def softmax_case(n_items):
    """Six shopper vectors ``h``, ``n_items`` item vectors ``w`` (row 0 is padding), targets
    including the last item twice, and uneven weights."""
    torch.manual_seed(0)
    h = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(n_items, 5, requires_grad=True)
    last = n_items - 1
    target = torch.tensor([1, 2, 3, last, last, 4])
    weight = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 3.0])
    return h, w, target, weight


def full_softmax_with_grads(h, w, target, weight):
    """The full softmax loss and its gradients on ``h`` and ``w``, which are then cleared
    so a second loss can be compared against them."""
    loss = nets.full_softmax_loss(h, w, target, weight)
    loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    return loss, gh, gw


def test_fused_full_softmax_matches_autograd_cross_entropy():
    h, w, target, weight = softmax_case(9)
    loss, gh, gw = full_softmax_with_grads(h, w, target, weight)
    logits = h @ w.T
    logits = torch.cat([torch.full_like(logits[:, :1], -1e9), logits[:, 1:]], dim=1)
    ref = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * weight).sum()
    ref = ref / weight.sum()
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)


@pytest.mark.parametrize("name,cfg", DEFAULT_CONFIGS)
def test_loss_is_finite_and_sampled_mode_works(name, cfg):
    model = make(name, **cfg).train()
    items, kinds = batch()
    target = torch.roll(items, -1, dims=1) * (items > 0)
    target[:, -1] = 0
    b = {"item_seq": items, "kind_seq": kinds, "target": target}
    full = model.calculate_loss(b)
    assert torch.isfinite(full) and full.ndim == 0
    sampled = model.calculate_loss({**b, "negatives": torch.arange(1, 21)})
    assert torch.isfinite(sampled)
    sampled.backward()
    assert model.item_emb.weight.grad is not None


def test_build_model_rejects_unknown_names_and_roundtrips_config():
    with pytest.raises(ValueError):
        nets.build_model("transformer", 5, 2)
    with pytest.raises(ValueError, match="summary"):
        nets.build_model("cnn_dnn", 5, 2, summary="median")
    with pytest.raises(ValueError, match="ffn_activation"):
        nets.build_model("sasrec", 5, 2, ffn_activation="swish")
    with pytest.raises(ValueError, match="linear_init"):
        nets.build_model("sasrec", 5, 2, linear_init="xavier")
    for summary in ("mean", "attention", "transformer"):
        model = make("cnn_dnn", encoder="caser", window=3, summary=summary)
        again = nets.build_model("cnn_dnn", N_ITEMS, N_KINDS, **model.config)
        again.load_state_dict(model.state_dict())
    assert set(nets.NET_NAMES) <= set(nets.MODEL_NAMES)


@pytest.mark.parametrize("summary", ["mean", "attention", "transformer"])
def test_history_summary_is_the_dnn_branch_input_for_either_summary(summary):
    """The serving benchmark reads the summary of real histories; it must exist for both kinds
    (it once called the mean summary's weights on an attention net and died)."""
    model = make("cnn_dnn", encoder="caser", window=4, summary=summary).eval()
    items, kinds = batch()
    with torch.no_grad():
        m = model.history_summary(items, kinds)
    assert m.shape == (3, 16) and torch.isfinite(m).all()
    if summary == "mean":  # per-kind weights start equal: the plain mean of the history's items
        expected = torch.stack([model.item_emb(row[row > 0]).mean(0) for row in items]).detach()
        assert torch.allclose(m, expected, atol=1e-5)
    else:  # attention over each history's own events: different histories, different summaries
        assert not torch.allclose(m[1], m[2])


@pytest.mark.parametrize(
    "name, cfg", [("sasrec", {}), ("cnn_dnn", {}), ("cnn_dnn", {"local_conv": "full"})]
)
def test_attention_is_causal_at_every_position(name, cfg):
    """Training predicts every position at once: changing event t must leave the outputs of
    every earlier position unchanged, and change its own (the mask is not all-blocking);
    the default net's convolution below the attention blocks must be causal too."""
    model = make(name, blocks=2, heads=2, window=3, **cfg).eval()
    items, kinds = batch(b=2, length=9)
    every = items > 0
    before = model._vectors(items, kinds, every)  # [M, d], row-major over (b, t)
    positions = every.nonzero()
    for t in range(3, 9):
        later = items.clone()
        later[:, t] = (later[:, t] % N_ITEMS) + 1
        after = model._vectors(later, kinds, every)
        earlier = positions[:, 1] < t
        assert torch.allclose(before[earlier], after[earlier], atol=1e-6)
        assert not torch.allclose(before[positions[:, 1] == t], after[positions[:, 1] == t])


def test_chunked_softmax_matches_the_full_softmax():
    h, w, target, weight = softmax_case(23)
    full, gh, gw = full_softmax_with_grads(h, w, target, weight)
    chunked = nets.chunked_softmax_loss(h, w, target, weight, chunk=4)  # 22 items: 6 blocks
    chunked.backward()
    assert torch.allclose(full, chunked, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)


def test_log_q_correction_makes_popularity_sampling_estimate_the_full_softmax():
    """With every item drawn exactly its expected number of times, the corrected sampled
    loss is the full softmax; uncorrected, the often-drawn items are over-counted."""
    torch.manual_seed(0)
    h, w = torch.randn(4, 5), torch.randn(11, 5)
    target, weight = torch.tensor([1, 2, 3, 4]), torch.ones(4)
    counts = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 3, 4])  # items 9, 10 drawn more often
    negatives = torch.repeat_interleave(torch.arange(11), counts)  # [15], never item 0
    log_q = torch.log(counts.float().clamp_min(1e-9))  # log expected count in the sample
    corrected = nets.sampled_softmax_loss(h, w, target, weight, negatives, log_q)
    plain = nets.sampled_softmax_loss(h, w, target, weight, negatives)
    exact = nets.full_softmax_loss(h, w, target, weight)
    assert torch.allclose(corrected, exact, atol=1e-5)
    assert not torch.allclose(plain, exact, atol=1e-3)


def test_item_embeddings_are_the_shared_output_table():
    for name in nets.NET_NAMES:
        model = make(name)
        assert model.item_embeddings() is model.item_emb.weight


@pytest.mark.parametrize("local_conv", nets.LOCAL_CONVS)
def test_the_stacked_net_starts_as_the_attention_stack_and_its_convolution_then_counts(
    local_conv,
):
    """CNN below, attention on top: the convolution's output starts at zero, so a new
    default net computes exactly what the attention stack alone would with its weights."""
    torch.manual_seed(0)
    stacked = nets.build_model(
        "cnn_dnn", N_ITEMS, N_KINDS, dim=16, max_len=12, window=3, local_conv=local_conv
    )
    assert stacked.stacked() and not hasattr(stacked, "tower") and not hasattr(stacked, "encoder")
    alone = nets.build_model("sasrec", N_ITEMS, N_KINDS, dim=16, max_len=12)
    alone.load_state_dict(
        {k: v for k, v in stacked.state_dict().items() if not k.startswith("local.")}
    )
    items, kinds = batch()
    stacked.eval(), alone.eval()
    with torch.no_grad():
        assert torch.allclose(
            stacked.shopper_vector(items, kinds), alone.shopper_vector(items, kinds)
        )
        perturb(stacked.local)
        assert not torch.allclose(
            stacked.shopper_vector(items, kinds), alone.shopper_vector(items, kinds)
        )


def test_attention_linear_layers_start_as_sasrec_plus_does_unless_asked_otherwise():
    """normal(init_std) weights and zero biases by default; PyTorch's own init on request."""
    torch.manual_seed(0)
    qkv = nets.build_model("sasrec", 5, 2, dim=64).transformer.blocks[0].qkv
    assert abs(float(qkv.weight.detach().std()) - 0.02) < 0.002 and not qkv.bias.any()
    former = nets.build_model("sasrec", 5, 2, dim=64, linear_init="pytorch")
    assert former.transformer.blocks[0].qkv.bias.any()
