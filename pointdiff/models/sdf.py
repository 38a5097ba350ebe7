"""Point cloud -> signed distance: Point-E's ``CrossAttentionPointCloudSDFModel``, made fast.

Encoder: ``Linear(3, width)`` over the cloud's xyz (colours are ignored; with
``cfg.fourier_freqs > 0`` xyz is first expanded to Fourier features, see ``FourierEmbedding``),
then either

* ``num_latents == 0``: ``encoder_depth`` self-attention blocks over all N points (Point-E), or
* ``num_latents  > 0``: a perceiver: L learned latents cross-attend once to the embedded points,
  then ``encoder_depth`` self-attention blocks run over the L latents only (cost O(N·L + L²)
  instead of O(N²) per block).

Decoder: each query xyz -> ``Linear(3, width)`` -> ``decoder_depth`` residual cross-attention
blocks (``x += c_proj(attn(c_q(ln_1 x), c_kv(ln_2 latents)))``; ``x += mlp(ln_3 x)``) ->
``ln_post`` -> ``Linear(width, 1)``. Queries never attend to each other, so each SDF value depends
only on its own coordinate and the cloud; ``encode`` runs once per cloud and also precomputes
every decoder block's K/V projection of the latents (``SDFLatents.kv``), which Point-E
recomputes for every 4096-query batch.

With ``cfg.local_k = K > 0`` (not in Point-E) each query's input embedding also receives
``LocalGeometry`` features of the cloud around it: offsets to its K nearest points and, over a
wider neighbourhood, how evenly the points surround it. The unsigned distance and the local
surface are then read off directly, and the inside/outside cue of a closed surface (points on
all sides inside, on one side outside) is explicit, so the head learns the sign from far less
data and training than the attention-only design needs. ``encode`` keeps the cloud for this.

Coordinates are **object space** (xyz in [-0.5, 0.5], Point-E's SDF convention, not the ×2
model space of the diffusion models); the SDF is negative inside.

Parameter names equal Point-E's (``encoder_input_proj``, ``encoder.resblocks.i.attn.c_qkv``,
``decoder.resblocks.i.attn.c_q/c_kv``, ``ln_1/ln_2/ln_3``, ``mlp.c_fc/c_proj``, ``ln_post``,
``output_proj``); only the row order of the fused projections differs (``models.layers``), which
``pointdiff.compat.pointe`` permutes. Sign: ours is negative inside. Point-E's released SDF appears
to be positive inside (its mesher swaps scikit-image's winding, which is outward only for
negative-inside volumes); if so, negating ``output_proj`` converts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pointdiff.config import SDFConfig
from pointdiff.models.layers import ResidualBlock, ResidualCrossAttentionBlock, zero_init
from pointdiff.models.trunk import ModelInputError


class FourierEmbedding(nn.Module):
    """xyz [..., 3] -> [xyz, sin(2^k·π·xyz), cos(2^k·π·xyz) for k < F] [..., 3 + 6F].

    Dot products of such features are (sums of) cosines of coordinate *differences*, so
    attention between a query and the points can express locality ("attend to nearby points"),
    which a plain ``Linear(3, w)`` (a bilinear form in the two positions) cannot; the SDF head
    then fits sharp shapes several times faster (3DShape2VecSet, Shap-E embed positions this way).
    """

    def __init__(self, freqs: int):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(freqs)) * math.pi, persistent=False)
        self.out_dim = 3 + 6 * freqs

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        if len(self.freqs) == 0:
            return xyz
        angles = (xyz[..., None] * self.freqs).flatten(-2)  # [..., 3F]
        return torch.cat([xyz, angles.sin(), angles.cos()], dim=-1)


class LocalGeometry(nn.Module):
    """Query xyz [B, Q, 3] + cloud xyz [B, N, 3] -> local features [B, Q, 4K + 7].

    * offsets p_j − q to the K nearest points (nearest first) [3K] and their distances [K];
    * over the ``wide`` nearest points: the mean offset [3], its length over the mean distance
      [1] (≈ 1 when every neighbour lies on one side — outside a surface —, ≈ 0 when they
      surround the query — inside a closed one), the mean distance [1], and the nearest and
      K-th distance ratios [2].

    Distances are computed in float32 in query chunks (memory Q·N per chunk).
    """

    def __init__(self, k: int, wide: int, chunk: int = 4096):
        super().__init__()
        self.k, self.wide, self.chunk = k, max(wide, k), chunk
        self.out_dim = 4 * k + 7

    def forward(self, queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        q_all, pts = queries.float(), points.float()
        n = pts.shape[1]
        if pts.shape[0] == 1 and q_all.shape[0] > 1:
            pts = pts.expand(q_all.shape[0], -1, -1)
        wide, k = min(self.wide, n), min(self.k, n)
        out = []
        for q in q_all.split(self.chunk, dim=1):
            d, idx = torch.cdist(q, pts).topk(wide, dim=-1, largest=False)  # sorted ascending
            per_query = pts[:, None].expand(-1, q.shape[1], -1, -1)  # [B, q, N, 3]
            nb = torch.gather(per_query, 2, idx[..., None].expand(-1, -1, -1, 3)) - q[:, :, None]
            near = nb[:, :, :k]  # [B, q, k, 3]
            if k < self.k:  # fewer cloud points than K: repeat the farthest
                near = torch.cat([near, near[:, :, -1:].expand(-1, -1, self.k - k, -1)], 2)
            dk = near.norm(dim=-1)  # [B, q, K]
            mean_off = nb.mean(2)  # [B, q, 3]
            mean_d = d.mean(-1, keepdim=True).clamp_min(1e-6)
            one_sided = mean_off.norm(dim=-1, keepdim=True) / mean_d
            ratios = torch.cat([d[..., :1], dk[..., -1:]], -1) / mean_d
            out.append(torch.cat([near.flatten(2), dk, mean_off, one_sided, mean_d, ratios], -1))
        return torch.cat(out, dim=1).to(queries.dtype)


class _Stack(nn.Module):
    """A list of blocks under Point-E's ``<name>.resblocks.<i>`` parameter paths."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class SDFLatents:
    """One encoded batch of clouds, reusable for any number of query batches.

    :param tokens: [B, L, W] encoder output (L = N points, or the perceiver's latents).
    :param kv: per decoder block, the cached keys and values [2, B, H, L, W/H].
    """

    tokens: torch.Tensor
    kv: list[torch.Tensor]
    points: torch.Tensor | None = None  # [B, N, 3] the cloud, kept when cfg.local_k > 0

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]


class SDFModel(nn.Module):
    """Cloud xyz [B, N, 3] and queries [B, Q, 3] (object space) -> SDF [B, Q], negative inside."""

    def __init__(self, cfg: SDFConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # Point-E scales its init std by 1/sqrt(width) inside Transformer and SimplePerceiver.
        std = cfg.init_scale / math.sqrt(w)
        self.embed = FourierEmbedding(cfg.fourier_freqs)  # identity for F = 0 (point-e)
        self.encoder_input_proj = nn.Linear(self.embed.out_dim, w)
        if cfg.num_latents > 0:
            # Perceiver encoder: learned latents read the points once, then self-attend.
            self.encoder_latents = nn.Parameter(torch.randn(cfg.num_latents, w) * 0.02)
            self.encoder_cross = ResidualCrossAttentionBlock(w, cfg.encoder_heads, std)
        self.encoder = _Stack(
            [ResidualBlock(w, cfg.encoder_heads, std) for _ in range(cfg.encoder_depth)]
        )
        self.decoder_input_proj = nn.Linear(self.embed.out_dim, w)
        if cfg.local_k > 0:
            self.local = LocalGeometry(cfg.local_k, cfg.local_k_wide)
            self.local_proj = nn.Sequential(
                nn.Linear(self.local.out_dim, w), nn.GELU(), nn.Linear(w, w)
            )
        self.decoder = _Stack(
            [
                ResidualCrossAttentionBlock(w, cfg.decoder_heads, std)
                for _ in range(cfg.decoder_depth)
            ]
        )
        self.ln_post = nn.LayerNorm(w)
        # Zero output: a fresh head predicts SDF 0 everywhere (loss = mean |target|) instead of
        # random ±0.5 values whose wrong signs the clamped loss must first undo.
        self.output_proj = zero_init(nn.Linear(w, 1))

    def encode(self, points: torch.Tensor) -> SDFLatents:
        """Encode clouds once; the result also caches every decoder block's K/V.

        :param points: [B, N, 3] xyz in object space.
        :return: ``SDFLatents`` with tokens [B, L, W].
        """
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ModelInputError(f"points must be [B, N, 3], got {tuple(points.shape)}")
        if points.shape[1] == 0:
            raise ModelInputError("cannot encode an empty point cloud (N = 0)")
        if not torch.isfinite(points).all():
            raise ModelInputError("point cloud contains NaN/inf coordinates")
        h = self.encoder_input_proj(self.embed(points))  # [B, N, W]
        if self.cfg.num_latents > 0:
            z = self.encoder_latents.expand(points.shape[0], -1, -1)  # [B, L, W]
            h = self.encoder_cross(z, data=h)
        for block in self.encoder.resblocks:
            h = block(h)
        kv = [block.project_kv(h) for block in self.decoder.resblocks]
        return SDFLatents(tokens=h, kv=kv, points=points if self.cfg.local_k > 0 else None)

    def predict_sdf(
        self, latents: SDFLatents | torch.Tensor, queries: torch.Tensor
    ) -> torch.Tensor:
        """SDF at the query points.

        :param latents: ``encode``'s result (cached K/V), or raw encoder tokens [B, L, W]
            (K/V recomputed: the uncached reference path). Batch 1 broadcasts over B queries.
        :param queries: [B, Q, 3] object-space xyz.
        :return: [B, Q].
        """
        if queries.ndim != 3 or queries.shape[-1] != 3:
            raise ModelInputError(f"queries must be [B, Q, 3], got {tuple(queries.shape)}")
        x = self.decoder_input_proj(self.embed(queries))  # [B, Q, W]
        if self.cfg.local_k > 0:
            if not isinstance(latents, SDFLatents) or latents.points is None:
                raise ModelInputError("local_k > 0: predict_sdf needs encode()'s SDFLatents")
            x = x + self.local_proj(self.local(queries, latents.points))
        for i, block in enumerate(self.decoder.resblocks):
            kv = latents.kv[i] if isinstance(latents, SDFLatents) else block.project_kv(latents)
            x = block(x, kv=kv)
        return self.output_proj(self.ln_post(x))[..., 0]

    def forward(self, points: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """points [B, N, 3], queries [B, Q, 3] -> SDF [B, Q]."""
        return self.predict_sdf(self.encode(points), queries)

    @torch.no_grad()
    def query_fn(
        self, points: torch.Tensor, batch_size: int = 32768, bf16: bool = False
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Encode one cloud once and return ``sdf_fn(queries [Q, 3]) -> [Q]`` for the mesher.

        The returned function moves queries to the model's device, runs them in batches of
        ``batch_size`` against the cached K/V (optionally under bf16 autocast) and returns a CPU
        float32 tensor.

        :param points: [N, 3] object-space xyz of one cloud.
        """
        device = self.output_proj.weight.device
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ModelInputError(f"query_fn takes one cloud [N, 3], got {tuple(points.shape)}")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        with autocast:
            latents = self.encode(points.to(device=device, dtype=torch.float32)[None])

        @torch.no_grad()
        def sdf_fn(queries: torch.Tensor) -> torch.Tensor:
            out = []
            for q in queries.split(batch_size):
                with autocast:
                    out.append(self.predict_sdf(latents, q.to(device)[None])[0].float().cpu())
            return torch.cat(out)

        return sdf_fn
