"""Pinhole cameras and their rays (Shap-E's conventions: corner-aligned pixels, z forward)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Cameras:
    """V pinhole cameras: origin and unit axes x (right), y (down), z (forward), each [V, 3]."""

    origin: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    width: int
    height: int
    x_fov: float = 0.7  # radians
    y_fov: float = 0.7


def pan_cameras(
    size: int, views: int = 20, distance: float = 4.0, fov: float = 0.7, device="cpu"
) -> Cameras:
    """``views`` cameras on a circle above the object looking down at it (elevation ≈ 26.6°),
    angle θ = linspace(0, 2π, views) inclusive (Shap-E's pan: first and last view coincide)."""
    zs, xs = [], []
    for theta in np.linspace(0, 2 * math.pi, num=views):
        z = np.array([math.sin(theta), math.cos(theta), -0.5])
        zs.append(z / np.linalg.norm(z))
        xs.append(np.array([math.cos(theta), -math.sin(theta), 0.0]))
    z, x = np.stack(zs), np.stack(xs)
    y = np.cross(z, x)  # computed in float64, then stored as float32 (as Shap-E)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).float().to(device)

    return Cameras(t(-z * distance), t(x), t(y), t(z), size, size, fov, fov)


def camera_rays(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of every pixel, views then rows then columns.

    Pixel (col, row) maps to ``frac = 2·col/(W − 1) − 1`` (corners at ±tan(fov/2), no half-pixel
    offset). :return: (origins, unit directions), each [V·H·W, 3]."""
    w, h = cams.width, cams.height
    idx = torch.arange(h * w, device=cams.origin.device)
    coords = torch.stack([idx % w, torch.div(idx, w, rounding_mode="trunc")], dim=1).float()
    res = torch.tensor([w, h], dtype=torch.float32, device=idx.device)
    fov = torch.tensor([cams.x_fov, cams.y_fov], dtype=torch.float32, device=idx.device)
    fracs = (coords / (res - 1) * 2 - 1) * torch.tan(fov / 2)  # [HW, 2]
    d = (
        cams.z[:, None]
        + cams.x[:, None] * fracs[None, :, :1]
        + cams.y[:, None] * fracs[None, :, 1:]
    )
    d = d / d.norm(dim=-1, keepdim=True)
    o = cams.origin[:, None].expand_as(d)
    return o.reshape(-1, 3), d.reshape(-1, 3)
