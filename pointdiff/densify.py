"""Surface operations on sampled clouds: pull points onto their local surface, and densify a
cloud along its surface (the shipped pipeline's upsampler).

Both work on model-space batches ``[B, N, 6]`` (xyz × 2, rgb × 2 − 1) and fit a plane to each
point's ``k`` nearest neighbours (the eigenvector of the smallest eigenvalue of their
covariance is the normal, as in Hoppe et al. 1992).

* ``project_to_surface``: move each point onto its neighbours' plane (repeatedly: ``passes``).
  A diffusion sample's residual noise is mostly along the normal (it makes the surface
  "thick"); this removes that part and leaves the tangential layout.
* ``upsample_on_surface``: new points between a point and one of its nearest neighbours, on the
  point's plane, colour interpolated. Unlike a diffusion upsampler it cannot add detail that the
  low-res cloud lacks, and it cannot spray points off the surface either.
"""

from __future__ import annotations

import math

import torch

#: neighbours of the plane fit (the surface-spread metric's neighbourhood size too)
PLANE_NEIGHBOURS = 16
#: a new point lies between its parent and one of the parent's nearest few neighbours
BRIDGE_NEIGHBOURS = 6


def _knn(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """[N, 3] → [N, k] indices of each point's nearest neighbours (itself first)."""
    return torch.cdist(xyz, xyz).topk(min(k, len(xyz)), largest=False).indices


def _planes(xyz: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3] → (centroids [N, 3], unit normals [N, 3]) of each point's k-neighbourhood."""
    nb = xyz[_knn(xyz, k)]  # [N, k, 3]
    mu = nb.mean(1)
    c = nb - mu[:, None]
    cov = (c.transpose(1, 2) @ c).double()
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mu, vecs[:, :, 0].to(xyz.dtype)


def project_to_surface(x: torch.Tensor, passes: float, k: int = PLANE_NEIGHBOURS) -> torch.Tensor:
    """Pull each point onto its neighbours' plane, ``passes`` times.

    A pass moves every point onto the plane fitted to its ``k`` nearest neighbours (all points
    at once; the planes are refitted each pass); a fractional last pass moves it that fraction
    of the way (``0.5``: half-way once, ``2``: fully twice). Each pass removes part of the
    noise along the normal, so a diffuse shell thins towards a surface.

    :param x: [B, N, 6] model-space clouds (colours are kept).
    :return: [B, N, 6]; ``passes`` 0 returns ``x`` itself.
    """
    if not (passes >= 0.0 and math.isfinite(passes)):
        raise ValueError(f"surface projection passes must be a finite number >= 0, got {passes}")
    if passes == 0.0 or x.shape[1] < 4:
        return x
    out = x.clone()
    for b in range(x.shape[0]):
        xyz = x[b, :, :3].float()
        left = passes
        while left > 0:
            mu, n = _planes(xyz, k)
            off = ((xyz - mu) * n).sum(-1, keepdim=True)
            xyz = xyz - min(left, 1.0) * off * n
            left -= 1.0
        out[b, :, :3] = xyz.to(x.dtype)
    return out


def upsample_on_surface(
    low_res: torch.Tensor, num_new: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """``num_new`` new points per cloud along the surface of ``low_res``.

    Point ``i`` of the low-res cloud parents new points ``i, i + N, i + 2N, …`` (every point
    gets ⌊num_new / N⌋ or one more); each lies a uniform fraction in [0.2, 0.8] of the way to a
    random one of the parent's ``BRIDGE_NEIGHBOURS`` nearest neighbours, projected onto the
    parent's neighbourhood plane; its colour is interpolated the same way.

    :param low_res: [B, N, 6] model-space clouds.
    :param generators: one CPU generator per cloud (the pipeline's per-prompt generators).
    :return: [B, num_new, 6], the new points only.
    """
    batch, n, _ = low_res.shape
    if len(generators) != batch:
        raise ValueError(f"need one generator per cloud: {len(generators)} for {batch}")
    if n < BRIDGE_NEIGHBOURS + 1:
        raise ValueError(f"a cloud of {n} points is too small to upsample along its surface")
    parent = torch.arange(num_new) % n
    out = []
    for b in range(batch):
        pts = low_res[b].float().cpu()
        xyz = pts[:, :3]
        mu, normal = _planes(xyz, PLANE_NEIGHBOURS)
        near = _knn(xyz, BRIDGE_NEIGHBOURS + 1)[:, 1:]  # without the point itself
        pick = torch.randint(0, near.shape[1], (num_new,), generator=generators[b])
        t = torch.empty(num_new, 1).uniform_(0.2, 0.8, generator=generators[b])
        mate = near[parent, pick]
        new = pts[parent] + t * (pts[mate] - pts[parent])
        nrm = normal[parent]
        off = ((new[:, :3] - mu[parent]) * nrm).sum(-1, keepdim=True)
        new[:, :3] = new[:, :3] - off * nrm
        out.append(new)
    return torch.stack(out).to(low_res.device, low_res.dtype)
