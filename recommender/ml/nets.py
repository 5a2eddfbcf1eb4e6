"""Sequence models: a CNN over the latest events (item + event-kind embeddings) alone
(``cnn``), or under a DNN of causal self-attention blocks (``cnn_dnn``, the default).

Every model answers the same RecBole-style interface, so the trainer, the evaluator and
the serving code never know the architecture:

* ``calculate_loss(batch) -> scalar``: next-item cross-entropy at every position;
* ``full_sort_predict(item_seq [B, L], kind_seq [B, L]) -> [B, n_items + 1]``;
* ``shopper_vector(item_seq, kind_seq) -> [B, d]`` and ``item_embeddings() -> [n_items + 1, d]``
  with ``full_sort_predict == shopper_vector @ item_embeddings().T`` (row 0 is padding).

Sequences are left-padded with 0 and right-aligned: position L-1 is the latest event.

Two encoders, chosen by ``encoder=``:

* ``dilated`` — NextItNet (Yuan et al., "A Simple Convolutional Generative Network for
  Next Item Recommendation", WSDM 2019): stacked residual blocks of causal dilated 1-D
  convolutions; one pass gives a causal feature for every position. Departures: pre-layer
  norm with GELU, kind embeddings added to item embeddings, output tied to the input
  item embeddings, full-softmax cross-entropy instead of a sampled loss.
* ``caser`` — Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via
  Convolutional Sequence Embedding", WSDM 2018): horizontal filters of every height with
  max-pooling over time, plus vertical filters, over the latest ``window`` events.
  Departures: no per-user embedding (shoppers must be scored from their events alone, so
  new shoppers work), kind embeddings, and it is applied at every position (a sliding
  window) so every prefix is a training example, with full-softmax cross-entropy.

The DNN side may be a stack of causal self-attention blocks (``summary="transformer"``),
SASRec+ style (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than
SASRec?", RecSys 2023): learned positional embeddings, pre-norm blocks, dropout, item
embeddings shared with the output, cross-entropy over the whole catalogue; here the event
kind is one more input embedding, and item vectors are scaled by sqrt(dim) at the input
as in SASRec. ``sasrec`` is that stack alone (the ablation's "attention alone");
``cnn_dnn`` (``layout="stacked"``, the default) puts a depthwise causal convolution over
each position's latest ``window`` events below the stack, so the attention blocks read
what the recent events say together; ``layout="side_by_side"`` (the former default) runs a
Caser CNN and the stack side by side and mixes them in an MLP tower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODEL_NAMES = (
    "cnn",
    "cnn_dnn",
    "sasrec",
    "popularity",
    "itemknn",
)  # trainable; artifacts add "hybrid"
NET_NAMES = ("cnn", "cnn_dnn", "sasrec")
SUMMARIES = ("mean", "attention", "transformer")
LAYOUTS = ("stacked", "side_by_side")
LOCAL_CONVS = ("depthwise", "full")
FFN_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
LINEAR_INITS = ("normal", "pytorch")


# --------------------------------------------------------------------------- losses


class _FullSoftmaxCE(torch.autograd.Function):
    """Weighted softmax cross-entropy of ``h @ W.T`` over all rows of W, memory-lean.

    Autograd's matmul + cross_entropy keeps logits, log-probabilities and their gradients
    ([M, N] each); this keeps one [M, N] buffer and reuses it for the gradient, which
    roughly halves the time of the step that dominates training on large catalogues.
    Column 0 (padding) is never a class.
    """

    @staticmethod
    def forward(ctx, h, weight_matrix, target, sample_weight):
        probs = h @ weight_matrix.T  # [M, N+1]
        # Under bfloat16 autocast the products are bf16; the softmax is summed in float32
        # and the backward products use the same low precision.
        ctx.mm_dtype = probs.dtype
        probs = probs.float()
        probs[:, 0] = -math.inf
        target_logit = probs.gather(1, target[:, None]).squeeze(1)  # [M]
        peak = probs.max(dim=1, keepdim=True).values  # [M, 1]
        probs.sub_(peak).exp_()
        total = probs.sum(dim=1, keepdim=True)  # [M, 1]
        probs.div_(total)
        nll = (total.log() + peak).squeeze(1) - target_logit  # [M]
        ctx.save_for_backward(h, weight_matrix, target, sample_weight, probs)
        return (nll * sample_weight).sum()

    @staticmethod
    def backward(ctx, grad_out):
        h, weight_matrix, target, sample_weight, probs = ctx.saved_tensors
        grad = probs  # reused in place: the graph is freed after this backward
        grad[torch.arange(len(target)), target] -= 1.0
        grad.mul_((sample_weight * grad_out)[:, None])
        if ctx.mm_dtype != grad.dtype:
            low = grad.to(ctx.mm_dtype)
            grad_h = (low @ weight_matrix.to(ctx.mm_dtype)).to(h.dtype)  # [M, d]
            grad_w = (low.T @ h.to(ctx.mm_dtype)).to(weight_matrix.dtype)  # [N+1, d]
            return grad_h, grad_w, None, None
        grad_h = grad @ weight_matrix  # [M, d]
        grad_w = grad.T @ h  # [N+1, d]
        return grad_h, grad_w, None, None


def full_softmax_loss(
    h: torch.Tensor, items: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Weighted-mean CE of shopper vectors h [M, d] against every item row of items [N+1, d]."""
    w = weight / weight.sum().clamp_min(1e-12)
    return _FullSoftmaxCE.apply(h, items, target, w)


def sampled_softmax_loss(
    h: torch.Tensor,
    items: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """CE against the target plus shared negatives [K] (accidental hits masked).

    ``log_q`` [N+1]: log of each item's expected count in the sample (K times its sampling
    probability) when negatives are drawn non-uniformly, e.g. by popularity; it is
    subtracted from every logit (the log-Q correction of Bengio & Senecal, as in
    TensorFlow's sampled_softmax_loss) so the loss estimates the full softmax. Uniform
    sampling makes the correction a constant, so ``None`` skips it.
    """
    pos = (h * items[target]).sum(-1, keepdim=True)  # [M, 1]
    neg = h @ items[negatives].T  # [M, K]
    if log_q is not None:
        pos = pos - log_q[target][:, None]
        neg = neg - log_q[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == target[:, None], -math.inf)
    logits = torch.cat([pos, neg], dim=1)  # [M, 1+K]
    nll = torch.logsumexp(logits, dim=1) - pos.squeeze(1)
    w = weight / weight.sum().clamp_min(1e-12)
    return (nll * w).sum()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """The same loss as ``_FullSoftmaxCE``, computed ``chunk`` catalogue rows at a time.

    Memory is [M, chunk] instead of [M, N]; the logits are computed twice (forward for the
    log-sum-exp, backward for the gradient), which a cache-sized block may repay on CPU.
    """

    @staticmethod
    def forward(ctx, h, weight_matrix, target, sample_weight, chunk):
        n = weight_matrix.shape[0]
        peak = torch.full((h.shape[0],), -math.inf, dtype=torch.float32, device=h.device)
        total = torch.zeros_like(peak)
        for start in range(1, n, chunk):  # row 0 (padding) is never a class
            logits = (h @ weight_matrix[start : start + chunk].T).float()  # [M, c]
            new_peak = torch.maximum(peak, logits.max(dim=1).values)
            total = total * torch.exp(peak - new_peak) + torch.exp(logits - new_peak[:, None]).sum(
                1
            )
            peak = new_peak
        lse = total.log() + peak  # [M]
        target_logit = (h.float() * weight_matrix[target].float()).sum(1)
        ctx.chunk = chunk
        ctx.save_for_backward(h, weight_matrix, target, sample_weight, lse)
        return ((lse - target_logit) * sample_weight).sum()

    @staticmethod
    def backward(ctx, grad_out):
        h, weight_matrix, target, sample_weight, lse = ctx.saved_tensors
        scale = (sample_weight * grad_out)[:, None].float()  # [M, 1]
        low = h.dtype  # bf16 under autocast: products in bf16, sums in float32
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        grad_w = torch.zeros(weight_matrix.shape, dtype=torch.float32, device=h.device)
        for start in range(1, weight_matrix.shape[0], ctx.chunk):
            rows = weight_matrix[start : start + ctx.chunk].to(low)
            p = torch.exp((h @ rows.T).float() - lse[:, None]).mul_(scale)  # [M, c]
            grad_h += (p.to(low) @ rows).float()
            grad_w[start : start + ctx.chunk] = (p.to(low).T @ h).float()
        # The target's "-1": d(-target_logit)
        grad_h -= scale * weight_matrix[target].float()
        grad_w.index_add_(0, target, -scale * h.float())
        return grad_h.to(h.dtype), grad_w.to(weight_matrix.dtype), None, None, None


def chunked_softmax_loss(h, items, target, weight, chunk: int = 8192) -> torch.Tensor:
    """``full_softmax_loss`` in blocks of ``chunk`` items (same value and gradient)."""
    w = weight / weight.sum().clamp_min(1e-12)
    return _ChunkedSoftmaxCE.apply(h, items, target, w, int(chunk))


# --------------------------------------------------------------------------- encoders


class _CausalConv(nn.Module):
    def __init__(self, d: int, kernel: int, dilation: int):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(d, d, kernel, dilation=dilation)

    def forward(self, x):  # [B, d, L] -> [B, d, L]
        return self.conv(F.pad(x, (self.pad, 0)))


class _DilatedBlock(nn.Module):
    """NextItNet residual block: two causal dilated convolutions (dilation r, 2r)."""

    def __init__(self, d: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.conv1 = _CausalConv(d, kernel, dilation)
        self.norm2 = nn.LayerNorm(d)
        self.conv2 = _CausalConv(d, kernel, 2 * dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):  # x [B, L, d], mask [B, L, 1]
        # Padding is zeroed before every convolution so that extra left padding (batches
        # are trimmed to their longest sequence) never changes a real position's output.
        y = (F.gelu(self.norm1(x)) * mask).transpose(1, 2)  # [B, d, L]
        y = self.conv1(y).transpose(1, 2)  # [B, L, d]
        y = (F.gelu(self.norm2(y)) * mask).transpose(1, 2)
        y = self.conv2(y).transpose(1, 2)
        return (x + self.drop(y)) * mask


class DilatedEncoder(nn.Module):
    """Causal feature for every position in one pass: [B, L, d] -> [B, L, d]."""

    def __init__(self, d: int, kernel: int, dilations, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(_DilatedBlock(d, kernel, r, dropout) for r in dilations)
        self.norm = nn.LayerNorm(d)

    def forward(self, x, select, mask):  # x [B, L, d], select/mask [B, L] bool -> [M, d]
        m = mask.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        for block in self.blocks:
            x = block(x, m)
        return self.norm(x[select])


class CaserEncoder(nn.Module):
    """Caser over the latest ``window`` events ending at each selected position."""

    def __init__(self, d: int, window: int, n_h: int, n_v: int, dropout: float):
        super().__init__()
        self.window = window
        self.horizontal = nn.ModuleList(nn.Conv1d(d, n_h, h) for h in range(1, window + 1))
        self.vertical = nn.Parameter(torch.randn(n_v, window) * (1.0 / window))
        self.fc = nn.Linear(n_h * window + n_v * d, d)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x, select, mask=None):  # x [B, L, d], select [B, L] -> [M, d]
        w = self.window
        padded = F.pad(x, (0, 0, w - 1, 0))  # [B, L+w-1, d]
        windows = padded.unfold(1, w, 1)  # [B, L, d, w]
        win = windows[select]  # [M, d, w]
        pooled = [F.relu(conv(win)).amax(dim=2) for conv in self.horizontal]  # each [M, n_h]
        vert = torch.einsum("mdw,vw->mvd", win, self.vertical).flatten(1)  # [M, n_v*d]
        z = torch.cat([*pooled, vert], dim=1)  # [M, n_h*w + n_v*d]
        return self.norm(F.gelu(self.fc(self.drop(z))))


class LocalConvFeatures(nn.Module):
    """What the latest ``window`` events say together, at every position, added to its input.

    A causal convolution over the layer-normalised embedded events (kernel ``window``:
    position t sees t-window+1..t). ``conv="depthwise"`` (default): one filter per embedding
    dimension, zero-initialised, a learned recency-weighted average of each dimension over
    the window; ``conv="full"`` (the first stacked net): a full convolution mixing the
    dimensions, GELU and a zero-initialised projection. Either way a net built on it starts
    as if it were absent and the convolution adds only what training finds useful.
    Measured on Beauty (benchmarks/results/quality-notes.md): the full convolution slowed
    the attention blocks' learning; the depthwise one, with d x window weights instead of
    d x d x window, kept pace and added to it.
    """

    def __init__(self, d: int, window: int, dropout: float, conv: str = "depthwise"):
        super().__init__()
        if conv not in LOCAL_CONVS:
            raise ValueError(f"unknown local_conv {conv!r}; use one of {', '.join(LOCAL_CONVS)}")
        self.depthwise = conv == "depthwise"
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        if self.depthwise:
            self.pad = window - 1
            self.conv = nn.Conv1d(d, d, window, groups=d)
            last = self.conv
        else:
            self.conv = _CausalConv(d, window, 1)
            self.proj = last = nn.Linear(d, d)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x, mask):  # x [B, L, d], mask [B, L] bool -> [B, L, d]
        m = mask.unsqueeze(-1).to(x.dtype)
        y = (self.norm(x) * m).transpose(1, 2)  # [B, d, L]
        if self.depthwise:
            y = self.conv(F.pad(y, (self.pad, 0))).transpose(1, 2)
        else:
            y = self.proj(F.gelu(self.conv(y).transpose(1, 2)))
        return x + self.drop(y) * m


class _AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + FFN(LN(x)).

    The FFN is ``ffn_mult * d`` wide; SASRec's is d wide with ReLU (the default), the
    former one here 4d with GELU, the usual language-model shape.
    """

    def __init__(self, d: int, heads: int, dropout: float, ffn_mult: int, ffn_activation: str):
        super().__init__()
        if d % heads:
            raise ValueError(f"dim {d} is not divisible by heads {heads}")
        if ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(
                f"unknown ffn_activation {ffn_activation!r}; use one of {', '.join(FFN_ACTIVATIONS)}"
            )
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        width = int(ffn_mult) * d
        self.ffn = nn.Sequential(
            nn.Linear(d, width),
            FFN_ACTIVATIONS[ffn_activation](),
            nn.Dropout(dropout),
            nn.Linear(width, d),
        )
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x, allowed):  # x [B, L, d], allowed [B, 1, L, L] bool
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # [B, heads, L, d/heads]
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class CausalTransformer(nn.Module):
    """SASRec+ stack: learned positions, ``blocks`` pre-norm causal blocks, a final norm.

    Positions count back from the latest event (the right-aligned window), so extra left
    padding never moves a real event. A position attends to itself and to earlier real
    events only: a later event never changes an earlier position's output.
    """

    def __init__(
        self,
        d: int,
        max_len: int,
        blocks: int,
        heads: int,
        dropout: float,
        ffn_mult: int = 1,
        ffn_activation: str = "relu",
    ):
        super().__init__()
        self.max_len = max_len
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(
            _AttentionBlock(d, heads, dropout, ffn_mult, ffn_activation) for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):  # x [B, L, d] (embedded events), mask [B, L] bool -> [B, L, d]
        length = x.shape[1]
        pos = torch.arange(self.max_len - length, self.max_len, device=x.device)
        x = self.drop(x + self.pos_emb(pos)[None]) * mask.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        allowed = ((causal & mask[:, None, :]) | eye)[:, None]  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)


# --------------------------------------------------------------------------- models


class SequenceNet(nn.Module):
    """Shared embedding, loss and scoring logic; subclasses define ``_vectors``."""

    name = "sequence"
    uses_cnn = True
    # Dropout and embedding dropout unless given. With attention blocks, SASRec+'s 0.1
    # (measured on Beauty: the same peak as 0.3 in half the epochs, and higher with
    # SASRec+'s feed-forward shape; benchmarks/results/quality-notes.md); the CNN alone
    # was measured at 0.3.
    default_dropout = 0.1

    def uses_transformer(self) -> bool:
        return self.summary_kind == "transformer"

    def stacked(self) -> bool:
        """CNN below, attention on top: only the CNN+DNN has the choice (``CNNDNN``)."""
        return False

    def __init__(
        self,
        n_items: int,
        n_kinds: int,
        *,
        dim: int = 64,
        max_len: int = 50,
        encoder: str = "caser",
        kernel_size: int = 3,
        dilations=(1, 2, 4, 8),
        window: int = 8,
        n_h: int = 16,
        n_v: int = 4,
        dropout: float | None = None,
        emb_dropout: float | None = None,
        tower_hidden: int = 256,
        summary: str = "transformer",
        blocks: int = 2,
        heads: int = 1,
        init_std: float = 0.02,
        scale_items: bool = True,
        layout: str = "stacked",
        local_conv: str = "depthwise",
        ffn_mult: int = 1,
        ffn_activation: str = "relu",
        linear_init: str = "normal",
    ):
        super().__init__()
        self.n_items, self.n_kinds, self.max_len = int(n_items), int(n_kinds), int(max_len)
        dropout = self.default_dropout if dropout is None else dropout
        emb_dropout = self.default_dropout if emb_dropout is None else emb_dropout
        self._config = dict(
            dim=dim,
            max_len=max_len,
            encoder=encoder,
            kernel_size=kernel_size,
            dilations=list(dilations),
            window=window,
            n_h=n_h,
            n_v=n_v,
            dropout=dropout,
            emb_dropout=emb_dropout,
            tower_hidden=tower_hidden,
            summary=summary,
            blocks=blocks,
            heads=heads,
            init_std=init_std,
            scale_items=scale_items,
            layout=layout,
            local_conv=local_conv,
            ffn_mult=ffn_mult,
            ffn_activation=ffn_activation,
            linear_init=linear_init,
        )
        if summary not in SUMMARIES:
            raise ValueError(f"unknown summary {summary!r}; use one of {', '.join(SUMMARIES)}")
        self.summary_kind = summary
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if linear_init not in LINEAR_INITS:
            raise ValueError(
                f"unknown linear_init {linear_init!r}; use one of {', '.join(LINEAR_INITS)}"
            )
        self.layout, self.linear_init = layout, linear_init
        # SASRec's input scaling: item vectors times sqrt(dim) at the input, so an item's
        # identity outweighs the position and kind embeddings (all start at init_std).
        # Measured on Beauty: attention alone reached validation NDCG@10 0.027 in 6 epochs
        # with it and 0.012 without (benchmarks/results/quality-notes.md).
        self.item_scale = math.sqrt(dim) if scale_items else 1.0
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.kind_emb = nn.Embedding(max(n_kinds, 2), dim, padding_idx=0)
        self.emb_drop = nn.Dropout(emb_dropout)
        if self.uses_transformer():
            self.transformer = CausalTransformer(
                dim, self.max_len, blocks, heads, dropout, ffn_mult, ffn_activation
            )
        if self.uses_cnn and self.stacked():
            self.local = LocalConvFeatures(dim, window, dropout, local_conv)
        elif self.uses_cnn:
            if encoder == "dilated":
                self.encoder = DilatedEncoder(dim, kernel_size, dilations, dropout)
            elif encoder == "caser":
                self.encoder = CaserEncoder(dim, window, n_h, n_v, dropout)
            else:
                raise ValueError(f"unknown encoder {encoder!r}; use 'dilated' or 'caser'")
        self._build_head(dim, tower_hidden, dropout)
        self.reset_parameters(init_std)

    @property
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-able) for ``build_model``."""
        return dict(self._config)

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.item_emb.weight, std=std)
        nn.init.normal_(self.kind_emb.weight, std=std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.kind_emb.weight[0].zero_()
        if hasattr(self, "transformer"):
            nn.init.normal_(self.transformer.pos_emb.weight, std=std)
            if self.linear_init == "normal":
                # As SASRec+ does; PyTorch's default (uniform, scaled by fan-in) is
                # "pytorch", the former choice.
                for module in self.transformer.modules():
                    if isinstance(module, nn.Linear):
                        nn.init.normal_(module.weight, std=std)
                        nn.init.zeros_(module.bias)

    def _build_head(self, dim, hidden, dropout):
        raise NotImplementedError

    def _vectors(self, item_seq, kind_seq, select):  # -> [M, d]
        raise NotImplementedError

    def _embed(self, item_seq, kind_seq):  # [B, L] -> [B, L, d]
        x = self.item_emb(item_seq) * self.item_scale + self.kind_emb(kind_seq)
        x = x * (item_seq > 0).unsqueeze(-1)
        return self.emb_drop(x)

    # ---- the shared interface

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight  # [N+1, d]

    def shopper_vector(self, item_seq, kind_seq) -> torch.Tensor:
        item_seq, kind_seq = self._clip(item_seq, kind_seq)
        select = torch.zeros_like(item_seq, dtype=torch.bool)
        select[:, -1] = True
        return self._vectors(item_seq, kind_seq, select)  # [B, d]

    def full_sort_predict(self, item_seq, kind_seq) -> torch.Tensor:
        return self.shopper_vector(item_seq, kind_seq) @ self.item_embeddings().T  # [B, N+1]

    def calculate_loss(self, batch: dict) -> torch.Tensor:
        """Next-item CE at every non-padding position of ``batch['target']`` [B, L].

        The softmax: over shared ``negatives`` [K] when the batch has them (with the log-Q
        correction ``log_q`` [N+1] when they were not drawn uniformly), else over the whole
        catalogue, in blocks of ``softmax_chunk`` items when the batch says so.
        """
        item_seq, kind_seq, target = batch["item_seq"], batch["kind_seq"], batch["target"]
        select = target > 0  # [B, L]
        h = self._vectors(item_seq, kind_seq, select)  # [M, d]
        tgt = target[select]  # [M]
        weight = batch.get("target_weight")
        weight = torch.ones_like(tgt, dtype=h.dtype) if weight is None else weight[select]
        items = self.item_embeddings()
        if batch.get("negatives") is not None:
            return sampled_softmax_loss(
                h, items, tgt, weight, batch["negatives"], batch.get("log_q")
            )
        if batch.get("softmax_chunk"):
            return chunked_softmax_loss(h, items, tgt, weight, batch["softmax_chunk"])
        return full_softmax_loss(h, items, tgt, weight)

    def _clip(self, item_seq, kind_seq):
        if item_seq.shape[1] > self.max_len:
            item_seq, kind_seq = item_seq[:, -self.max_len :], kind_seq[:, -self.max_len :]
        return item_seq, kind_seq


class CNN(SequenceNet):
    """CNN encoder alone: the latest events define the shopper vector."""

    name = "cnn"
    default_dropout = 0.3

    def uses_transformer(self) -> bool:
        """Never: the CNN reads only its window, whatever ``summary`` says."""
        return False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Older CNN artifacts hold an attention stack the CNN never ran: skip its weights."""
        for key in [k for k in state_dict if k.startswith(prefix + "transformer.")]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _build_head(self, dim, hidden, dropout):
        """None: the encoder's features are the shopper vector."""

    def _vectors(self, item_seq, kind_seq, select):
        return self.encoder(self._embed(item_seq, kind_seq), select, item_seq > 0)  # [M, d]


class CNNDNN(SequenceNet):
    """A CNN over the latest events with a DNN over the whole history.

    ``layout="stacked"`` (default, with ``summary="transformer"``): the convolution's
    features of each position's latest ``window`` events (``LocalConvFeatures``) are the
    input of ``blocks`` causal self-attention blocks, whose output is the shopper vector.
    Measured on Beauty (benchmarks/results/quality-notes.md): the side-by-side layout let
    the attention blocks in only through the zero-initialised tower and learned slower
    than the attention stack alone; stacked, the net starts as that stack and the
    convolution adds what it is worth (with the depthwise convolution, the net alone's
    validation NDCG@10 0.0336 against the stack alone's 0.0332, level once blended with
    item-kNN; seed 0).

    ``layout="side_by_side"``: CNN features + a long-range history summary, mixed by an
    MLP tower. The summary covers the whole (capped) history, so a purchase long ago still counts
    while the CNN focuses on the latest events. ``summary="attention"``: the CNN
    features ask which earlier events matter (one attention head over the history, with a
    learned bias per distance back in time). ``summary="mean"``: a causal weighted mean of
    item embeddings with a learned weight per event kind; on Beauty it overfitted sooner
    (test NDCG@10 0.0201 against 0.0221, benchmarks/results/quality-notes.md).
    ``summary="transformer"`` (default): ``blocks`` causal self-attention blocks over the
    whole window (``CausalTransformer``) run beside the CNN, and the tower mixes the two.
    """

    name = "cnn_dnn"

    def stacked(self) -> bool:
        """``layout="stacked"`` with the transformer: the convolution's features of the
        recent events are the attention blocks' input, and their output the shopper vector."""
        return self.layout == "stacked" and self.uses_transformer()

    def _build_head(self, dim, hidden, dropout):
        if self.stacked():
            return  # self.local and self.transformer, built with the embeddings
        if self.summary_kind == "transformer":
            pass  # self.transformer, built with the embeddings
        elif self.summary_kind == "attention":
            self.query = nn.Linear(dim, dim)
            self.key = nn.Linear(dim, dim)
            self.distance_bias = nn.Parameter(torch.zeros(self.max_len))
        else:
            self.kind_logit = nn.Parameter(torch.zeros(max(self.n_kinds, 2)))
        self.tower = nn.Sequential(
            nn.Linear(3 * dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )
        self.out_norm = nn.LayerNorm(dim)
        # Zero-initialised output: training starts from the plain CNN and the tower only
        # adds what the long-range summary is worth (measured: a randomly initialised
        # tower trailed the plain CNN early in training).
        nn.init.zeros_(self.tower[-1].weight)
        nn.init.zeros_(self.tower[-1].bias)

    def _summary(self, item_seq, kind_seq, select):  # -> [M, d]
        w = F.softplus(self.kind_logit)[kind_seq] * (item_seq > 0)  # [B, L]
        e = self.emb_drop(self.item_emb(item_seq))  # [B, L, d]
        num = torch.cumsum(w.unsqueeze(-1) * e, dim=1)  # [B, L, d]
        den = torch.cumsum(w, dim=1).clamp_min(1e-6).unsqueeze(-1)  # [B, L, 1]
        return (num / den)[select]

    def _attention_summary(self, x, item_seq, select, h):  # x [B, L, d], h [M, d] -> [M, d]
        rows, at = select.nonzero(as_tuple=True)  # [M] each
        keys = self.key(x)[rows]  # [M, L, d]
        scores = torch.einsum("md,mld->ml", self.query(h), keys) / math.sqrt(h.shape[1])
        back = at[:, None] - torch.arange(item_seq.shape[1], device=at.device)[None, :]  # [M, L]
        scores = scores + self.distance_bias[back.clamp(0, self.max_len - 1)]
        visible = (back >= 0) & (item_seq[rows] > 0)
        weights = torch.softmax(scores.masked_fill(~visible, -1e9), dim=1)  # [M, L]
        return torch.einsum("ml,mld->md", weights, x[rows])

    def _cnn_and_summary(self, item_seq, kind_seq, select):  # -> ([M, d], [M, d])
        x = self._embed(item_seq, kind_seq)  # [B, L, d]
        h = self.encoder(x, select, item_seq > 0)  # [M, d]
        if self.summary_kind == "transformer":
            return h, self.transformer(x, item_seq > 0)[select]
        if self.summary_kind == "attention":
            return h, self._attention_summary(x, item_seq, select, h)
        return h, self._summary(item_seq, kind_seq, select)

    def history_summary(self, item_seq, kind_seq) -> torch.Tensor:
        """The long-range summary of each history at its latest event ([B, d]), whichever
        ``summary`` the net uses: the DNN branch's input to the tower, before mixing; in the
        stacked layout the attention blocks' output, which is the shopper vector."""
        item_seq, kind_seq = self._clip(item_seq, kind_seq)
        select = torch.zeros_like(item_seq, dtype=torch.bool)
        select[:, -1] = True
        if self.stacked():
            return self._vectors(item_seq, kind_seq, select)
        return self._cnn_and_summary(item_seq, kind_seq, select)[1]

    def _vectors(self, item_seq, kind_seq, select):
        if self.stacked():
            mask = item_seq > 0
            x = self.local(self._embed(item_seq, kind_seq), mask)  # [B, L, d]
            return self.transformer(x, mask)[select]  # [M, d]
        h, m = self._cnn_and_summary(item_seq, kind_seq, select)  # [M, d] each
        z = torch.cat([h, m, h * m], dim=1)  # [M, 3d]
        return self.out_norm(h + self.tower(z))  # [M, d]


class SASRec(SequenceNet):
    """The causal self-attention stack alone (SASRec+), no CNN: the ablation's baseline
    for what the CNN adds. ``summary`` is always "transformer"."""

    name = "sasrec"
    uses_cnn = False

    def __init__(self, n_items: int, n_kinds: int, **config):
        super().__init__(n_items, n_kinds, **{**config, "summary": "transformer"})

    def _build_head(self, dim, hidden, dropout):
        pass

    def _vectors(self, item_seq, kind_seq, select):
        mask = item_seq > 0
        return self.transformer(self._embed(item_seq, kind_seq), mask)[select]  # [M, d]


def build_model(name: str, n_items: int, n_kinds: int, **config) -> nn.Module:
    """Instantiate any model in ``MODEL_NAMES`` from its JSON-able config.

    The served ``hybrid`` is built on one of these (``hybrid.HybridRanker``), so it is not
    here: an artifact that holds one builds it itself.
    """
    from . import baselines

    models = {m.name: m for m in (CNN, CNNDNN, SASRec, baselines.Popularity, baselines.ItemKNN)}
    if name not in models:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return models[name](n_items, n_kinds, **config)
