"""Shap-E's transmitter encoder: a coloured point cloud plus multiview RGB-D renders → a latent.

The released ``transmitter`` encodes with a perceiver over two data sets (Jun & Nichol 2023, §3.1;
Shap-E's ``PointCloudPerceiverChannelsEncoder`` with ``pcl_and_multiview_pcl``):

1. **Query tokens.** Every point is NeRF-encoded (xyz + rgb, 6 · 31 = 186 features) and projected
   to ``width`` (``input_proj``). The first ``data_ctx`` points are the centres of a PointNet++
   set abstraction (``point_conv``): the ``conv_samples`` lowest-index points within
   ``conv_radius`` of each centre, their offsets and embeddings, two circular strided convolutions
   along the neighbour axis (swish), a mean → ``data_ctx`` tokens. Before each convolution the
   neighbour axis is shuffled, independently per channel, even at inference (Shap-E's code does
   so; ``generator`` makes it reproducible). These tokens and ``latent_ctx`` learned
   ``output_tokens`` go through ``ln_pre``.
2. **Cross-attention** of the queries over all point embeddings (``encoder.0``), then over the
   patch tokens of the views (``encoder.1``). A view pixel is encoded as NeRF encodings of its
   colour, its ray origin and its back-projected surface point (279 features; a learned
   ``unk_token`` where alpha < 0.999), a 3×3 convolution to ``width/2`` and a
   ``patch``×``patch`` strided convolution to ``width``.
3. ``layers − 1`` self-attention blocks (``processor``), ``ln_post`` and ``output_proj`` on the
   last ``latent_ctx`` tokens, flattened token-major and squashed by ``tanh`` (the bottleneck at
   inference) → a latent for ``ShapeDecoder``.

Conventions (Shap-E's): point xyz in [−1, 1] (normalised coordinates × 2), rgb in [0, 1]; view
colours in [0, 1]; depths and camera origins in the same ×2 scene scale; points FPS-ordered so
the first ``data_ctx`` are well spread. Parameter names are those of the checkpoint without its
``encoder.`` prefix (and without ``params_proj``, which lives in ``ShapeDecoder``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.compat.shape.decoder import posenc_nerf
from pointdiff.compat.shape.transformer import MLP, Backbone
from pointdiff.models.layers import attention

_ALPHA_OPAQUE = 0.999  # pixels at least this opaque carry a surface point
_VIEW_CHUNK = 4  # views per multiview convolution call (the 279-channel input is large)


@dataclass(frozen=True)
class ShapeEncoderConfig:
    width: int = 1024  # transformer width
    heads: int = 8
    layers: int = 12  # 1 cross-attention (per data set) + layers − 1 self-attention blocks
    latent_ctx: int = 1024  # latent tokens (= rows of the decoder's latent-made weights)
    channels: int = 1024  # features per latent token
    data_ctx: int = 1024  # point-conv centres: the first data_ctx points
    points_ctx: int = 16384  # points attended to (a random subset when more are given)
    views_ctx: int = 20  # views attended to (a random subset when more are given)
    conv_hidden: tuple[int, ...] = (1024, 1024)  # point-conv channels; the last one = width
    conv_samples: int = 64  # neighbours per centre
    conv_radius: float = 0.5  # ball-query radius
    conv_kernel: int = 8  # along the neighbour axis
    conv_stride: int = 4
    patch: int = 8  # view patch size
    image_size: int = 256  # view resolution (square)
    max_depth: float = 9.0  # depths are clamped here


def _ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest-index points within ``radius`` of each centre, padded with the
    first one (PointNet++). :param xyz: [B, N, 3]. :param centres: [B, S, 3]. :return: [B, S, k]."""
    n = xyz.shape[1]
    # |c|² + |x|² − 2 c·x, in this order: points on the sphere fall on the same side as Shap-E's
    d2 = -2 * centres @ xyz.transpose(1, 2)
    d2 = d2 + (centres**2).sum(-1)[..., None] + (xyz**2).sum(-1)[:, None]
    idx = torch.arange(n, device=xyz.device).expand_as(d2)
    idx = torch.where(d2 > radius**2, n, idx)
    # = sort()[..., :k]; fewer than k points: all of them, as the sort would give
    idx = idx.topk(min(k, n), dim=-1, largest=False, sorted=True).values
    return torch.where(idx == n, idx[..., :1], idx)


class _PointConv(nn.Module):
    """Set abstraction around the first ``data_ctx`` points → one token per centre."""

    def __init__(self, cfg: ShapeEncoderConfig):
        super().__init__()
        self.cfg = cfg
        ins = [cfg.width + 3, *cfg.conv_hidden[:-1]]
        self.mlp_convs = nn.ModuleList(
            nn.Conv2d(
                i,
                o,
                kernel_size=(cfg.conv_kernel, 1),
                stride=(cfg.conv_stride, 1),
                padding=(cfg.conv_kernel // 2, 0),
                padding_mode="circular",
            )
            for i, o in zip(ins, cfg.conv_hidden, strict=True)
        )

    def forward(
        self, xyz: torch.Tensor, emb: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """:param xyz: [B, N, 3]. :param emb: [B, N, width]. :return: [B, data_ctx, hidden]."""
        cfg = self.cfg
        b = xyz.shape[0]
        centres = xyz[:, : cfg.data_ctx]
        idx = _ball_query(xyz, centres, cfg.conv_radius, cfg.conv_samples)  # [B, S, k]
        rows = torch.arange(b, device=xyz.device)[:, None, None]
        h = torch.cat([xyz[rows, idx] - centres[:, :, None], emb[rows, idx]], dim=-1)
        h = h.permute(0, 3, 2, 1)  # [B, 3 + width, k, S]
        for conv in self.mlp_convs:
            # one random order of the neighbour axis per (sample, channel), as Shap-E draws it
            r = torch.rand(*h.shape[:3], 1, generator=generator, device=h.device)
            h = torch.gather(h, 2, r.sort(dim=2).indices.expand_as(h))
            h = F.silu(conv(h))
        return h.mean(dim=2).transpose(1, 2)


class _PixelEmbed(nn.Conv2d):
    """Per-pixel NeRF encodings of colour, ray origin and surface point → 3×3 conv."""

    def __init__(self, out_channels: int):
        features = 3 * posenc_nerf(torch.zeros(1, 3)).shape[-1]  # 279
        super().__init__(features, out_channels, kernel_size=3, padding=1)
        self.unk_token = nn.Parameter(torch.zeros(features))

    def forward(self, rgb, origins, positions, opaque) -> torch.Tensor:
        """:param rgb, origins, positions: [M, H, W, 3]. :param opaque: [M, H, W] bool.
        :return: [M, out_channels, H, W]."""
        x = torch.cat([posenc_nerf(rgb), posenc_nerf(origins), posenc_nerf(positions)], dim=-1)
        x = torch.where(opaque[..., None], x, self.unk_token)
        return super().forward(x.permute(0, 3, 1, 2))


class _CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(width, width)
        self.c_kv = nn.Linear(width, 2 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.c_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        # per-head interleaved rows [h0: k v | h1: k v | …], as Shap-E's c_kv
        kv = self.c_kv(data).view(b, data.shape[1], self.heads, -1).transpose(1, 2)
        k, v = kv.chunk(2, dim=-1)
        out = attention(q, k, v)  # 1/√d = Shap-E's d^(-1/4) on q and k
        return self.c_proj(out.transpose(1, 2).reshape(b, n, w))


class _CrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = _CrossAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)
        self.ln_3 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.ln_2(data))
        return x + self.mlp(self.ln_3(x))


class _Perceiver(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([_CrossAttentionBlock(width, heads)])

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, data)
        return x


class ShapeEncoder(nn.Module):
    """Point cloud + RGB-D views → Shap-E latent (the released ``transmitter``'s encoder)."""

    def __init__(self, cfg: ShapeEncoderConfig):
        super().__init__()
        if cfg.conv_hidden[-1] != cfg.width:
            raise ValueError(f"conv_hidden must end with width {cfg.width}: {cfg.conv_hidden}")
        self.cfg = cfg
        w = cfg.width
        self.input_proj = nn.Linear(posenc_nerf(torch.zeros(1, 6)).shape[-1], w)
        self.point_conv = _PointConv(cfg)
        self.mv_pcl_embed = _PixelEmbed(w // 2)
        self.patch_emb = nn.Conv2d(w // 2, w, kernel_size=cfg.patch, stride=cfg.patch)
        self.output_tokens = nn.Parameter(torch.randn(cfg.latent_ctx, w))
        self.ln_pre = nn.LayerNorm(w)
        self.encoder = nn.ModuleList([_Perceiver(w, cfg.heads) for _ in range(2)])
        self.processor = Backbone(w, cfg.layers - 1, cfg.heads)
        self.ln_post = nn.LayerNorm(w)
        self.output_proj = nn.Linear(w, cfg.channels)

    def backproject(
        self, origins: torch.Tensor, dirs: torch.Tensor, depth: torch.Tensor, camera_z: torch.Tensor
    ) -> torch.Tensor:
        """Surface points of depth images. :param origins, dirs: [..., H, W, 3] pixel rays (unit
        dirs). :param depth: [..., H, W] camera-z depth (clamped at ``max_depth``).
        :param camera_z: [..., 3] the cameras' forward axes. :return: [..., H, W, 3]."""
        along_ray = depth.clamp(max=self.cfg.max_depth) / (dirs * camera_z[..., None, None, :]).sum(
            -1
        )
        return origins + along_ray[..., None] * dirs

    def _view_tokens(self, views, alphas, origins, positions) -> torch.Tensor:
        """:return: [B, V, patches, width]."""
        b, v, h, w, _ = views.shape
        rgb = views.reshape(b * v, h, w, 3) * 2 - 1  # Shap-E's view colours are in [−1, 1]
        flat = [t.reshape(b * v, h, w, -1) for t in (origins, positions)]
        opaque = alphas.reshape(b * v, h, w) >= _ALPHA_OPAQUE
        out = []
        for i in range(0, b * v, _VIEW_CHUNK):  # bounded memory: 279 features per pixel
            s = slice(i, i + _VIEW_CHUNK)
            out.append(self.patch_emb(self.mv_pcl_embed(rgb[s], flat[0][s], flat[1][s], opaque[s])))
        tokens = torch.cat(out).flatten(2).transpose(1, 2)  # [B·V, patches, width]
        return tokens.reshape(b, v, -1, self.cfg.width)

    def encode_to_channels(
        self,
        points: torch.Tensor,
        views: torch.Tensor,
        alphas: torch.Tensor,
        origins: torch.Tensor,
        positions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pre-bottleneck latent tokens.

        :param points: [B, N, 6] xyz + rgb, FPS-ordered (N ≥ data_ctx).
        :param views: [B, V, H, W, 3] colours in [0, 1]. :param alphas: [B, V, H, W] in [0, 1].
        :param origins: [B, V, H, W, 3] each pixel's ray origin.
        :param positions: [B, V, H, W, 3] each pixel's surface point (``backproject``).
        :param generator: the random neighbour shuffles and the point/view subsets draw from it
            in Shap-E's order (a CPU generator seeded s = Shap-E after ``torch.manual_seed(s)``).
        :return: [B, latent_ctx, channels].
        """
        cfg = self.cfg
        b, n, _ = points.shape
        if n < cfg.data_ctx:
            raise ValueError(f"need at least {cfg.data_ctx} points (the conv centres), got {n}")
        size = views.shape[2:4]
        if tuple(size) != (cfg.image_size,) * 2:
            raise ValueError(f"views must be {cfg.image_size}² pixels, got {size[0]}×{size[1]}")
        emb = self.input_proj(posenc_nerf(points))  # [B, N, width]
        data = self.point_conv(points[..., :3], emb, generator)  # [B, data_ctx, width]
        h = self.ln_pre(torch.cat([data, self.output_tokens.expand(b, -1, -1)], dim=1))

        # Shap-E shuffles points and views (per sample) and attends to the first points_ctx /
        # views_ctx; attention ignores order, so the shuffle only matters for a subset.
        def subset(x: torch.Tensor, keep: int) -> torch.Tensor:
            perm = torch.stack([torch.randperm(x.shape[1], generator=generator) for _ in range(b)])
            if x.shape[1] <= keep:
                return x
            idx = perm[:, :keep].to(x.device)
            return x[torch.arange(b, device=x.device)[:, None], idx]

        emb = subset(emb, cfg.points_ctx)
        view_tokens = self._view_tokens(views, alphas, origins, positions)
        view_tokens = subset(view_tokens, cfg.views_ctx).flatten(1, 2)  # [B, V·patches, width]
        h = self.encoder[0](h, emb)
        h = self.encoder[1](h, view_tokens)
        h = self.processor(h)
        return self.output_proj(self.ln_post(h[:, -cfg.latent_ctx :]))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """``tanh`` of ``encode_to_channels`` (the inference bottleneck), flattened token-major:
        [B, latent_ctx·channels], the layout ``ShapeDecoder`` and the diffusion models use."""
        return torch.tanh(self.encode_to_channels(*args, **kwargs).flatten(1))
