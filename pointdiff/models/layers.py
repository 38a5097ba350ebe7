"""Transformer building blocks shared by every pointdiff network.

Point-E's blocks (``point_e/models/transformer.py``, ``perceiver.py``) with two changes that do not
alter the maths: attention runs through ``attention`` (PyTorch's fused kernels, no materialised
[B, H, T, T] fp32 weights; head by head for bf16 inference on a CPU, where the scores are rounded
to bf16 before the softmax), and the fused projections
use a natural layout — ``c_qkv`` outputs ``[q | k | v]`` and ``c_kv`` outputs ``[k | v]``, each
with the heads contiguous, instead of point-e's per-head interleaving (``pointdiff.compat.pointe``
permutes released weights).

Blocks take explicit ints (``width``, ``heads``, ``init_std``); the top-level models take configs.
All tensors are channels-last ``[B, T, width]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------
# Attention

#: the head loop's score block: a head's queries go in equal chunks of at most this many
#: scores ([rows, Tk]: 4 MiB in bf16, in cache); below _HEAD_LOOP_MIN_SCORES the fused kernel
#: is as fast
_SCORE_BLOCK = 2**21
_HEAD_LOOP_MIN_SCORES = 2**16


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention (1/√d, no mask): q [B, H, Tq, d], k and v [B, H, Tk, d] →
    [B, H, Tq, d].

    ``F.scaled_dot_product_attention``, except for bf16 inference on a CPU: there PyTorch's
    fused kernel spends most of its time in the softmax (about 100 ms for Shap-E's 16 heads ×
    1026² scores, batch 2, one thread), and a loop over heads and blocks of queries is 2.2-2.6×
    as fast: a bf16 GEMM for a block of scores small enough to stay in cache, a softmax (fp32
    inside, bf16 out) and a bf16 GEMM with the values. The scores are rounded to bf16 before
    the softmax, as in Shap-E's bf16 and point-e's fp16 paths (their einsums): relative error
    4.4e-3 against float64 where the fused kernel's is 2.2e-3 (Shap-E's own 5.1e-3). Keys and
    values of batch 1 broadcast over the queries' batch.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    if (
        q.device.type != "cpu"
        or q.dtype != torch.bfloat16
        or tq * tk < _HEAD_LOOP_MIN_SCORES
        or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    ):
        return F.scaled_dot_product_attention(q, k, v)
    b, h = q.shape[:2]
    k, v = k.expand(b, h, -1, -1), v.expand(b, h, -1, -1)
    out = q.new_empty(b, h, tq, v.shape[-1])
    blocks = -(-tq * tk // _SCORE_BLOCK)
    scale, rows = q.shape[-1] ** -0.5, -(-tq // blocks)  # equal blocks, none a sliver
    with torch.autocast("cpu", enabled=False):
        for i in range(b):
            for j in range(h):
                for r in range(0, tq, rows):
                    scores = torch.mm(q[i, j, r : r + rows] * scale, k[i, j].T)  # [rows, Tk]
                    torch.mm(torch.softmax(scores, -1), v[i, j], out=out[i, j, r : r + rows])
    return out


def _fused_linear_op():
    """oneDNN's linear with post-ops (what ``torch.compile`` fuses into on CPUs), or None."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        if torch.backends.mkldnn.is_available() and mkldnn._is_mkldnn_bf16_supported():
            return mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN or without these ops
        pass
    return None


_FUSED_LINEAR = _fused_linear_op()


def linear_gelu(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Exact (erf) GELU of ``layer(x)``: [..., in] → [..., out].

    In bf16 on a CPU (bf16 weights, or CPU autocast to bf16, which casts them as it would for
    the linear layer), without autograd, one oneDNN call adds the bias and applies the GELU to
    the fp32 accumulator before rounding to bf16 (the fusion ``torch.compile`` makes): Shap-E's
    [2052, 1024] × [1024, 4096] MLP input layer takes 40 ms instead of 57 (one thread), and
    rounds once instead of twice. Otherwise ``F.gelu(layer(x))``.
    """
    w, b = layer.weight, layer.bias
    bf16 = w.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    if (
        _FUSED_LINEAR is None
        or not bf16
        or x.device.type != "cpu"
        or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
    ):
        return F.gelu(layer(x))
    bias = None if b is None else b.to(torch.bfloat16)
    with torch.autocast("cpu", enabled=False):
        return _FUSED_LINEAR(x.to(torch.bfloat16), w.to(torch.bfloat16), bias, "gelu", [], "none")


# ----------------------------------------------------------------------------------------------
# Embeddings and init


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a noise level or timestep (point-e ``util.timestep_embedding``).

    ``[cos(t·f) | sin(t·f)]`` with ``f_i = max_period^(-i/half)``; ``t`` is used as given (the
    discrete step for point-e models, ``250·ln σ`` for our EDM models) and computed in fp32.

    :param t: [B] noise levels (any real dtype).
    :param dim: embedding size (an odd size gets one zero column).
    :return: [B, dim] float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def init_linear(layer: nn.Linear, std: float) -> nn.Linear:
    """Point-e's init: weight ~ N(0, std²) (std = init_scale·√(1/width)), bias = 0."""
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (used for the output projection).

    A zero output projection makes the freshly built network output exactly 0 for any input, so an
    EDM-preconditioned denoiser starts as D(x; σ) = c_skip·x (the optimal answer at σ → 0 and a
    sane one elsewhere), and residual paths start unperturbed: training begins from a stable
    point instead of from random large outputs (point-e ``output_proj``, DiT "zero-out output
    layers").
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ----------------------------------------------------------------------------------------------
# MLP and attention


class MLP(nn.Module):
    """``Linear(w, 4w) → GELU (exact erf, as point-e) → Linear(4w, w)``."""

    def __init__(self, width: int, init_std: float | None = None):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        if init_std is not None:
            init_linear(self.c_fc, init_std)
            init_linear(self.c_proj, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(linear_gelu(x, self.c_fc))


def _check_heads(width: int, heads: int) -> int:
    if heads <= 0 or width % heads:
        raise ValueError(f"width {width} must be a positive multiple of heads {heads}")
    return width // heads


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``c_qkv`` Linear(w, 3w) laid out ``[q | k | v]``.

    Scaled dot-product attention (1/√d), no mask, no dropout — point-e's maths (it scales q and
    k each by d^-¼), computed by ``attention``.
    """

    def __init__(self, width: int, heads: int, init_std: float | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = _check_heads(width, heads)
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        if init_std is not None:
            init_linear(self.c_qkv, init_std)
            init_linear(self.c_proj, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: [B, T, w]. :return: [B, T, w]."""
        b, t, w = x.shape
        # [B, T, 3w] -> [3, B, H, T, d]: views only; SDPA wants the head dim before time.
        qkv = self.c_qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])  # [B, H, T, d]
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: ``c_q`` Linear(w, w) on the queries, one fused ``c_kv``
    Linear(data_width, 2w) laid out ``[k | v]`` on the data, ``c_proj`` Linear(w, w).

    ``project_kv`` / ``forward(kv=...)`` let a caller project the data once and reuse the keys and
    values for many query batches (the SDF decoder evaluates millions of queries per cloud).
    """

    def __init__(
        self, width: int, heads: int, init_std: float | None = None, data_width: int | None = None
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = _check_heads(width, heads)
        self.c_q = nn.Linear(width, width)
        self.c_kv = nn.Linear(data_width or width, 2 * width)
        self.c_proj = nn.Linear(width, width)
        if init_std is not None:
            for layer in (self.c_q, self.c_kv, self.c_proj):
                init_linear(layer, init_std)

    def project_kv(self, data: torch.Tensor) -> torch.Tensor:
        """:param data: [B, S, data_width]. :return: [2, B, H, S, d] keys and values."""
        b, s, _ = data.shape
        return self.c_kv(data).view(b, s, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(
        self, x: torch.Tensor, data: torch.Tensor | None = None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:param x: [B, T, w] queries; ``data`` [B, S, data_width] or cached ``kv`` from
        ``project_kv`` (its batch may be 1 and is then broadcast). :return: [B, T, w]."""
        if kv is None:
            if data is None:
                raise ValueError("CrossAttention needs `data` or precomputed `kv`")
            kv = self.project_kv(data)
        b, t, w = x.shape
        q = self.c_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = kv[0], kv[1]
        if k.shape[0] != b:
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        out = attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


# ----------------------------------------------------------------------------------------------
# Residual blocks and the stack


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x += attn(ln_1 x); x += mlp(ln_2 x)``."""

    def __init__(self, width: int, heads: int, init_std: float | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, init_std)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ResidualCrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block (point-e ``perceiver.ResidualCrossAttentionBlock``):
    ``x += attn(ln_1 x, ln_2 data); x += mlp(ln_3 x)``. Queries never attend to each other.
    """

    def __init__(
        self, width: int, heads: int, init_std: float | None = None, data_width: int | None = None
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(data_width or width)
        self.attn = CrossAttention(width, heads, init_std, data_width)
        self.ln_3 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_std)

    def project_kv(self, data: torch.Tensor) -> torch.Tensor:
        """Keys/values of ``data`` for this block (cache them across query batches)."""
        return self.attn.project_kv(self.ln_2(data))

    def forward(
        self, x: torch.Tensor, data: torch.Tensor | None = None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:param x: [B, T, w]; ``data`` [B, S, data_width] or ``kv`` from ``project_kv``."""
        if kv is None:
            if data is None:
                raise ValueError("ResidualCrossAttentionBlock needs `data` or precomputed `kv`")
            kv = self.project_kv(data)
        x = x + self.attn(self.ln_1(x), kv=kv)
        return x + self.mlp(self.ln_3(x))


class Transformer(nn.Module):
    """A stack of ``depth`` pre-LN self-attention blocks (no positional encoding).

    Linears are initialised N(0, (init_scale·√(1/width))²) with zero biases (point-e).
    ``grad_checkpointing = True`` recomputes each block in backward instead of storing its
    activations (memory for compute, for large models/batches); it only acts when gradients are
    being recorded, so inference is unaffected.
    """

    def __init__(self, width: int, depth: int, heads: int, init_scale: float = 0.25):
        super().__init__()
        init_std = init_scale * math.sqrt(1.0 / width)
        self.width = width
        self.blocks = nn.ModuleList(ResidualBlock(width, heads, init_std) for _ in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: [B, T, w]. :return: [B, T, w]."""
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
        return x


__all__ = [
    "timestep_embedding",
    "init_linear",
    "zero_init",
    "MLP",
    "SelfAttention",
    "CrossAttention",
    "ResidualBlock",
    "ResidualCrossAttentionBlock",
    "Transformer",
]
