"""Shap-E's latent diffusion transformer (``text300M``, ``image300M``) at any width.

The denoiser sees a latent of ``latent_ctx`` tokens × ``channels`` features (the released
models: 1024 × 1024, stored flat and token-major) and predicts x̂0 for every token plus a second
half of learned-variance values that samplers ignore. It is Point-E's pre-LN transformer with a
learned positional embedding on the latent tokens; conditioning arrives as extra tokens:

* text: one CLIP text vector (L2-normalised, × √dim here) through ``clip_embed``, then the time
  token: ``[clip, time, latent…]``;
* image: the time token, then the CLIP patch grid through LayerNorm + Linear:
  ``[time, grid…, latent…]``.

Parameter names are those of the released checkpoints without their ``wrapped.`` prefix, and
``c_qkv`` keeps Shap-E's per-head interleaved rows (``[h0: q k v | h1: q k v | …]``), so the
converter copies tensors unchanged. Tensors are channels-last: latents ``[B, T, C]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.models.layers import attention, linear_gelu


@dataclass(frozen=True)
class LatentDenoiserConfig:
    cond: str = "text"  # "text" (one CLIP vector token) | "image" (CLIP patch-grid tokens)
    latent_ctx: int = 1024  # latent tokens
    channels: int = 1024  # features per latent token
    width: int = 1024  # transformer width
    depth: int = 24  # residual blocks
    heads: int = 16  # text300M: 16 (64-d heads); image300M: 8 (128-d heads)
    cond_dim: int = 768  # CLIP text vector (text) or patch feature width (image)
    grid_tokens: int = 256  # image: CLIP patch tokens (16 × 16)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of discrete timesteps. :param t: [B]. :return: [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class MLP(nn.Module):
    """``c_fc`` (width → 4·width), exact GELU, ``c_proj`` (4·width → width)."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(linear_gelu(x, self.c_fc))  # exact (erf) GELU, as nn.GELU()


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        # Shap-E's fused rows are interleaved per head: view [B, T, H, 3·d] and split the last axis.
        qkv = self.c_qkv(x).view(b, n, self.heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        # 1/√d equals Shap-E's d^(-1/4) on q and on k (same maths; see models.layers.attention)
        out = attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(b, n, w))


class SelfAttentionBlock(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x)``. [B, T, W] → same."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """``depth`` self-attention blocks (``resblocks.{i}``, Shap-E's names)."""

    def __init__(self, width: int, depth: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([SelfAttentionBlock(width, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class LatentDenoiser(nn.Module):
    """x̂0 and variance values of a noisy latent at a discrete timestep.

    ``forward(x [B, T, C], t [B], cond) -> [B, T, 2·C]``: channels ``[:C]`` are x̂0 (not clamped),
    ``[C:]`` the learned-variance values. ``cond`` is [B, cond_dim] (text: the L2-normalised CLIP
    vector; zeros = the null condition) or [B, cond_dim, grid_tokens] (image: CLIP patch features
    before CLIP's final LayerNorm).
    """

    def __init__(self, cfg: LatentDenoiserConfig):
        super().__init__()
        if cfg.cond not in ("text", "image"):
            raise ValueError(f"cond must be 'text' or 'image', got {cfg.cond!r}")
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        w = cfg.width
        self.time_embed = MLP(w)
        self.ln_pre = nn.LayerNorm(w)
        self.backbone = Backbone(w, cfg.depth, cfg.heads)
        self.ln_post = nn.LayerNorm(w)
        self.input_proj = nn.Linear(cfg.channels, w)
        self.output_proj = nn.Linear(w, 2 * cfg.channels)
        self.pos_emb = nn.Parameter(torch.randn(cfg.latent_ctx, w))
        if cfg.cond == "text":
            self.clip_embed = nn.Linear(cfg.cond_dim, w)
        else:
            self.clip_embed = nn.Sequential(nn.LayerNorm(cfg.cond_dim), nn.Linear(cfg.cond_dim, w))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, variance: bool = True
    ) -> torch.Tensor:
        """:param variance: False: only the x̂0 channels ([B, T, C]; samplers need no more)."""
        cfg = self.cfg
        if x.shape[1:] != (cfg.latent_ctx, cfg.channels):
            want = [cfg.latent_ctx, cfg.channels]
            raise ValueError(f"latent must be [B, {want[0]}, {want[1]}], got {list(x.shape)}")
        t_tok = self.time_embed(timestep_embedding(t, cfg.width))[:, None]
        h = self.input_proj(x) + self.pos_emb
        if cfg.cond == "text":
            # unit-variance features: the normalised vector × √dim
            c_tok = self.clip_embed(math.sqrt(cond.shape[1]) * cond)[:, None]
            tokens = [c_tok, t_tok]
        else:
            tokens = [t_tok, self.clip_embed(cond.transpose(1, 2))]
        prefix = sum(tok.shape[1] for tok in tokens)
        h = self.ln_post(self.backbone(self.ln_pre(torch.cat([*tokens, h], dim=1))))
        h = h[:, prefix:]
        if variance:
            return self.output_proj(h)
        c = cfg.channels  # the first half of output_proj's rows: half its FLOPs
        return F.linear(h, self.output_proj.weight[:c], self.output_proj.bias[:c])


def cast_linears(net: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store every ``nn.Linear``'s weight and bias in ``dtype``, in place, for running under
    ``torch.autocast(dtype)``: autocast casts them to ``dtype`` on every call anyway, so the
    outputs are bit-identical, without the per-call copies (~0.6 GB for text300M). LayerNorms,
    embeddings and the residual stream stay float32 (autocast computes them in float32).
    Without autocast the cast model would need ``dtype`` inputs."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.to(dtype)
    return net
