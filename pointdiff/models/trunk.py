"""The token-conditioned point transformer shared by ``PointDenoiser`` and ``PointUpsampler``.

Point-E's ``PointDiffusionTransformer`` body: points are projected to ``width`` tokens, conditions
become extra tokens prepended to them (noise level, text vector, image grid, low-res points), a
pre-LN transformer runs over the whole sequence, the condition tokens are stripped after
``ln_post`` and a zero-initialised ``output_proj`` maps each point token to ``out_channels``.
There is no positional embedding, so the model is permutation-equivariant over points; condition
tokens are told apart by content alone (their order in the sequence does not change the maths).

Parameter names (``input_proj``, ``time_embed``, ``text_proj``, ``grid_embed``, ``ln_pre``,
``backbone.blocks.i``, ``ln_post``, ``output_proj``) are part of the checkpoint format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.models.layers import MLP, Transformer, timestep_embedding, zero_init


class ModelInputError(ValueError):
    """A tensor handed to a model has the wrong shape or is missing."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelInputError(msg)


class PointTransformer(nn.Module):
    """Trunk: ``input_proj``, noise token, optional text token, optional image-grid tokens,
    ``ln_pre`` → blocks → ``ln_post``, zero-init ``output_proj``. Subclasses define ``forward``.

    :param cfg: a ``PointTransformerConfig`` (``DenoiserConfig`` or ``UpsamplerConfig``).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        init_std = cfg.init_scale * math.sqrt(1.0 / w)
        self.input_proj = nn.Linear(cfg.in_channels, w)  # PyTorch default init, as point-e
        # Noise level: sinusoidal embedding -> MLP(w, 4w, w) -> one token (point-e time_embed).
        self.time_embed = MLP(w, init_std)
        if cfg.cond_dim > 0:
            # Text vector: L2-normalise, × √D (unit variance per entry, point-e), Linear -> token.
            self.text_proj = nn.Linear(cfg.cond_dim, w)
            if getattr(cfg, "cond_bias", False):
                # The same vector added to every point token, zero-init: the model starts as the
                # point-e design and the gradient reaches the condition without first having to
                # learn to attend to its one token (which a 5 M model trained for a few thousand
                # steps never did: its output was the same for every prompt).
                self.text_bias = zero_init(nn.Linear(cfg.cond_dim, w))
            if getattr(cfg, "text_tokens", 0) > 0:
                # Per-token states of the text encoder, one condition token each. Zero-init, so
                # a model fine-tuned from a pooled-only checkpoint starts as that model did.
                self.token_proj = nn.Sequential(
                    nn.LayerNorm(cfg.cond_dim), zero_init(nn.Linear(cfg.cond_dim, w))
                )
        if getattr(cfg, "guidance_embed", False):
            # Guidance scale w, in two zero-init parts (a student built from a teacher starts as
            # its conditional model): the guided output's own form, F_c + (w − 1)·G with G a
            # second head on the point tokens (classifier-free guidance is exactly this, with
            # G = F_c − F_u; the head learns it by regression), and a sinusoidal embedding of
            # 100·w -> MLP added to the noise token, for what is not linear in w (few-step
            # students).
            self.guidance_proj = MLP(w, init_std)
            zero_init(self.guidance_proj.c_proj)
            self.guidance_out = zero_init(nn.Linear(w, cfg.out_channels))
        if cfg.grid_tokens > 0:
            # Image patch grid (CLIP ViT-L/14, before its final norm): LayerNorm + Linear per token.
            self.grid_embed = nn.Sequential(nn.LayerNorm(cfg.grid_dim), nn.Linear(cfg.grid_dim, w))
        self.ln_pre = nn.LayerNorm(w)
        self.backbone = Transformer(w, cfg.depth, cfg.heads, cfg.init_scale)
        self.ln_post = nn.LayerNorm(w)
        # Zero-init so the untrained network outputs exactly 0 (see layers.zero_init).
        self.output_proj = zero_init(nn.Linear(w, cfg.out_channels))

    # ------------------------------------------------------------------------------------------

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute transformer blocks in backward to save activation memory (training only)."""
        self.backbone.grad_checkpointing = enabled

    def check_points(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` [B, N, in_channels]; return ``c_noise`` as [B] (a scalar is broadcast)."""
        _check(
            x.ndim == 3 and x.shape[-1] == self.cfg.in_channels,
            f"x must be [B, N, {self.cfg.in_channels}], got {tuple(x.shape)}",
        )
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(x.shape[0])
        _check(
            c_noise.shape == (x.shape[0],),
            f"c_noise must be [B={x.shape[0]}], got {tuple(c_noise.shape)}",
        )
        return c_noise

    def cond_tokens(
        self,
        c_noise: torch.Tensor,
        batch: int,
        text_emb: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Condition tokens in point-e order ``[text, time, grid]`` (each [B, k, w]), and the
        per-point condition bias [B, 1, w] (``cond_bias`` models; else None).

        A missing text vector or grid is the null condition (zeros). In training mode each sample
        drops its whole condition with probability ``cond_drop_prob`` (classifier-free guidance;
        torch's global RNG, one Bernoulli per sample, the null condition is zeros as at sampling).
        ``guidance`` [B] (``guidance_embed`` models only, required there): the guidance scale.
        """
        cfg = self.cfg
        ref = self.input_proj.weight
        n_tok = getattr(cfg, "text_tokens", 0)
        if text_emb is not None:
            _check(cfg.cond_dim > 0, "this model is unconditional (cond_dim=0); got text_emb")
            want = (batch, cfg.cond_dim) if n_tok == 0 else (batch, 1 + n_tok, cfg.cond_dim)
            _check(
                text_emb.shape == want,
                f"text_emb must be {list(want)} ([B, D]"
                + (f", or [B, 1 + {n_tok} tokens, D]: pooled then per-token states" * (n_tok > 0))
                + f"), got {tuple(text_emb.shape)}",
            )
        if grid is not None:
            _check(cfg.grid_tokens > 0, "this model takes no image grid (grid_tokens=0); got grid")
            _check(
                grid.shape == (batch, cfg.grid_tokens, cfg.grid_dim),
                f"grid must be [B={batch}, {cfg.grid_tokens}, {cfg.grid_dim}], "
                f"got {tuple(grid.shape)}",
            )
        # Conditions may come in another float dtype (e.g. fp16 CLIP features): match the weights.
        text_emb = None if text_emb is None else text_emb.to(ref.dtype)
        grid = None if grid is None else grid.to(ref.dtype)
        if self.training and cfg.cond_drop_prob > 0 and (text_emb is not None or grid is not None):
            keep = torch.rand(batch, device=ref.device) >= cfg.cond_drop_prob
            if text_emb is not None:
                shape = (batch,) + (1,) * (text_emb.ndim - 1)
                text_emb = text_emb * keep.view(shape).to(ref.dtype)
            if grid is not None:
                grid = grid * keep[:, None, None].to(ref.dtype)

        tokens, bias = [], None
        if cfg.cond_dim > 0:
            if text_emb is None:
                shape = (batch, cfg.cond_dim) if n_tok == 0 else (batch, 1 + n_tok, cfg.cond_dim)
                text_emb = torch.zeros(shape, device=ref.device, dtype=ref.dtype)
            per_token = text_emb[:, 1:] if n_tok > 0 else None  # [B, T, D]
            pooled = text_emb[:, 0] if n_tok > 0 else text_emb  # [B, D]
            # F.normalize keeps the null (zero) vector at zero.
            text = F.normalize(pooled, dim=-1) * math.sqrt(cfg.cond_dim)
            tokens.append(self.text_proj(text)[:, None])
            if hasattr(self, "text_bias"):
                bias = self.text_bias(text)[:, None]
            if per_token is not None:
                real = (per_token.abs().sum(-1, keepdim=True) > 0).to(ref.dtype)  # [B, T, 1]
                tokens.append(self.token_proj(per_token) * real)  # padding / null: zero tokens
        time = self.time_embed(timestep_embedding(c_noise, cfg.width).to(ref.dtype))
        if hasattr(self, "guidance_proj"):
            _check(
                guidance is not None and guidance.shape == (batch,),
                f"this model takes the guidance scale: guidance must be [B={batch}], got "
                + ("None" if guidance is None else str(tuple(guidance.shape))),
            )
            w = timestep_embedding(100.0 * guidance, cfg.width).to(ref.dtype)
            time = time + self.guidance_proj(w)
        else:
            _check(guidance is None, "this model has no guidance input (guidance_embed=False)")
        tokens.append(time[:, None])
        if cfg.grid_tokens > 0:
            if grid is None:
                grid = torch.zeros(
                    batch, cfg.grid_tokens, cfg.grid_dim, device=ref.device, dtype=ref.dtype
                )
            tokens.append(self.grid_embed(grid))
        return tokens, bias

    def embed(self, proj: nn.Linear, points: torch.Tensor) -> torch.Tensor:
        """``proj(points)`` with the points cast to the weights' dtype, so a model converted to
        bf16 (``.to(torch.bfloat16)``) takes fp32 inputs as they come from the sampler."""
        return proj(points.to(proj.weight.dtype))

    def run(
        self, h: torch.Tensor, prefix: list[torch.Tensor], guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the backbone over ``prefix + [h]`` and project the point tokens.

        :param h: [B, N, w] point tokens (already projected).
        :param prefix: condition tokens, each [B, k, w].
        :param guidance: [B] the guidance scale (``guidance_embed`` models, checked by
            ``cond_tokens``): adds (w − 1)·``guidance_out``.
        :return: [B, N, out_channels] for the N point tokens only.
        """
        n_prefix = sum(p.shape[1] for p in prefix)
        h = torch.cat([*prefix, h], dim=1) if prefix else h
        h = self.ln_post(self.backbone(self.ln_pre(h)))
        # Project every token, then drop the condition tokens: slicing first would force a copy
        # of the [B, N, w] activations (a non-contiguous view cannot be fed to the matmul).
        out = self.output_proj(h)
        if guidance is not None:
            scale = (guidance - 1).to(out.dtype)[:, None, None]
            out = out + scale * self.guidance_out(h)
        return out[:, n_prefix:]


__all__ = ["PointTransformer", "ModelInputError"]
