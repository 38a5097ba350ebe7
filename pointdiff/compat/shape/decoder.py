"""Shap-E's latent → implicit-function decoder: the per-row weight projection and the NeRSTF MLP.

A Shap-E latent is ``latent_ctx`` tokens × ``channels`` features. Each token becomes one row of
one weight matrix of the first ``meta_layers`` MLP layers: tokens ``[0, hidden)`` are the rows of
layer 0 (``hidden × 93``), the next ``hidden`` tokens the rows of layer 1 (``hidden × hidden``), …
Each row has its own linear map ``channels → in_features``, followed by a LayerNorm over the
row and then the projection bias (in that order). The remaining layers and all biases are
ordinary shared weights.

The MLP (7 layers, swish) takes the NeRF positional encoding of a point (3 + 2·3·15 = 93
features); before layer 4 it concatenates the encoding of a view direction, which Shap-E's
inference always leaves at zero, so those weight columns are skipped here (exact). It has 12
outputs: [0] SDF (tanh, > 0 inside), [1] coarse and [2] fine density (ReLU), [3:6] the texture
field, [6:9] coarse and [9:12] fine NeRF colour (sigmoid).

Parameter names are those of Shap-E's ``decoder`` checkpoint (``params_proj.*``, ``renderer.*``);
the transmitter's copy sits under ``encoder.params_proj.*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POS_DEGREES = 15  # NeRF encoding of positions: 2^0 … 2^14
DIR_DEGREES = 8  # of directions (zero at inference)


@dataclass(frozen=True)
class ShapeDecoderConfig:
    channels: int = 1024  # features per latent token
    hidden: int = 256  # MLP width
    hidden_layers: int = 6  # 7 linear layers in all
    meta_layers: int = 4  # leading layers whose weights come from the latent
    direction_layer: int = 4  # where the (zero) direction encoding is concatenated

    @property
    def latent_ctx(self) -> int:
        """Latent tokens: one per row of each latent-made weight matrix."""
        return self.hidden * self.meta_layers

    @property
    def pos_features(self) -> int:
        return 3 * (1 + 2 * POS_DEGREES)

    @property
    def dir_features(self) -> int:
        return 3 * (1 + 2 * DIR_DEGREES)


def posenc_nerf(x: torch.Tensor, degrees: int = POS_DEGREES) -> torch.Tensor:
    """``[x, sin(2^k x), cos(2^k x)]`` with k scale-major, coordinate-minor; cos as sin(· + π/2)
    (Shap-E's float rounding). :param x: [..., 3]. :return: [..., 3·(1 + 2·degrees)]."""
    scales = 2.0 ** torch.arange(degrees, dtype=x.dtype, device=x.device)
    xb = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.cat([xb, xb + math.pi / 2], dim=-1).sin()], dim=-1)


class ChannelsProj(nn.Module):
    """Row v of a weight matrix from latent token v: ``LN(W_v · x_v) + b_v``.

    :param vectors: rows (= tokens used). :param channels: row length. :param d_latent: token width.
    """

    def __init__(self, vectors: int, channels: int, d_latent: int):
        super().__init__()
        self.vectors, self.channels, self.d_latent = vectors, channels, d_latent
        self.proj = nn.Linear(d_latent, vectors * channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: [B, vectors, d_latent]. :return: [B, vectors, channels]."""
        w = self.proj.weight.view(self.vectors, self.channels, self.d_latent)
        h = torch.einsum("bvd,vcd->bvc", x, w)
        return self.norm(h) + self.proj.bias.view(1, self.vectors, self.channels)


class ParamsProj(nn.Module):
    """The latent-made weights of the MLP's first ``meta_layers`` layers."""

    def __init__(self, cfg: ShapeDecoderConfig):
        super().__init__()
        self.cfg = cfg
        ins = [cfg.pos_features] + [cfg.hidden] * (cfg.meta_layers - 1)
        self.projections = nn.ModuleDict(
            {_proj_name(i): ChannelsProj(cfg.hidden, d, cfg.channels) for i, d in enumerate(ins)}
        )

    def forward(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """:param latent: [B, latent_ctx·channels] (flat, token-major) or [B, latent_ctx, channels].
        :return: ``meta_layers`` weights, each [B, hidden, in_features]."""
        cfg = self.cfg
        x = latent.reshape(latent.shape[0], cfg.latent_ctx, cfg.channels)
        rows = x.split(cfg.hidden, dim=1)
        return [self.projections[_proj_name(i)](r) for i, r in enumerate(rows)]


def _proj_name(layer: int) -> str:
    return f"nerstf__mlp__{layer}__weight"


class _MetaLinear(nn.Module):
    """A layer whose weight is supplied per sample; the buffer is only a placeholder."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))


class NeRSTF(nn.Module):
    """The shared layers of the MLP; ``forward`` takes the latent-made weights."""

    def __init__(self, cfg: ShapeDecoderConfig):
        super().__init__()
        self.cfg = cfg
        h, n = cfg.hidden, cfg.hidden_layers
        ins = [cfg.pos_features] + [h] * n
        ins[cfg.direction_layer] += cfg.dir_features
        outs = [h] * n + [12]
        self.mlp = nn.ModuleList(
            _MetaLinear(i, o) if k < cfg.meta_layers else nn.Linear(i, o)
            for k, (i, o) in enumerate(zip(ins, outs, strict=True))
        )

    def forward(self, points: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """Raw (pre-activation) outputs. :param points: [B, Q, 3]. :param weights: from
        ``ParamsProj`` (one per meta layer, [B, out, in]). :return: [B, Q, 12]."""
        h = posenc_nerf(points)
        last = len(self.mlp) - 1
        for i, layer in enumerate(self.mlp):
            if i < self.cfg.meta_layers:
                h = torch.baddbmm(layer.bias, h, weights[i].transpose(1, 2))
            elif i == self.cfg.direction_layer:
                # the direction features are zero: only the position columns contribute
                h = F.linear(h, layer.weight[:, : h.shape[-1]], layer.bias)
            else:
                h = layer(h)
            if i < last:
                h = F.silu(h)
        return h


class _Void(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("background", torch.zeros(3))


class _Renderer(nn.Module):
    def __init__(self, cfg: ShapeDecoderConfig):
        super().__init__()
        self.nerstf = NeRSTF(cfg)
        self.void = _Void()


class ShapeDecoder(nn.Module):
    """Latent → field parameters → SDF, density and colour queries (Shap-E ``decoder``)."""

    def __init__(self, cfg: ShapeDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.params_proj = ParamsProj(cfg)
        self.renderer = _Renderer(cfg)

    def latent_to_params(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """:param latent: [B, latent_ctx·channels]. :return: per-sample weights (``ParamsProj``)."""
        return self.params_proj(latent)

    def query(self, points: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Raw outputs [B, Q, 12] at points [B, Q, 3] (see ``decode_outputs``)."""
        return self.renderer.nerstf(points, params)

    def fields(self, params: list[torch.Tensor]) -> ShapeFields:
        """The implicit functions of one sample, as ``pointdiff.nerf`` takes them.

        :param params: ``latent_to_params`` of one latent (batch 1)."""
        return ShapeFields(self, params)


class ShapeFields:
    """Point callables over one decoded latent: ``sdf`` and ``texture`` (STF mode, [P, 3] →
    [P] / [P, 3]) and ``nerf`` ([P, 3] → density [P, 2], rgb [P, 2, 3]; coarse and fine levels).
    Outputs are float32 whatever precision the MLP ran in (e.g. under bf16 autocast)."""

    def __init__(self, model: ShapeDecoder, params: list[torch.Tensor]):
        if params[0].shape[0] != 1:
            raise ValueError(f"fields take the params of one latent, got {params[0].shape[0]}")
        self.model, self.params = model, params

    def _out(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.model.query(points[None].to(self.params[0].device), self.params)
        return decode_outputs(raw[0].float())

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self._out(points)["sdf"]

    def texture(self, points: torch.Tensor) -> torch.Tensor:
        return self._out(points)["texture"]

    def nerf(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._out(points)
        density = torch.stack([out["density_coarse"], out["density_fine"]], dim=-1)
        return density, torch.stack([out["nerf_coarse"], out["nerf_fine"]], dim=-2)


def decode_outputs(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Name and activate the 12 raw outputs. :param raw: [..., 12].

    :return: ``sdf`` [...] (> 0 inside), ``density_coarse``/``density_fine`` [...],
        ``texture``, ``nerf_coarse``, ``nerf_fine`` [..., 3] colours in [0, 1] (sRGB)."""
    return {
        "sdf": torch.tanh(raw[..., 0]),
        "density_coarse": F.relu(raw[..., 1]),
        "density_fine": F.relu(raw[..., 2]),
        "texture": torch.sigmoid(raw[..., 3:6]),
        "nerf_coarse": torch.sigmoid(raw[..., 6:9]),
        "nerf_fine": torch.sigmoid(raw[..., 9:12]),
    }
