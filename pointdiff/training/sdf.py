"""Training the SDF head with ``pointdiff.training.loop.train``: dataset, loss, IoU.

**Data.** ``SDFDataset`` reads shard directories (``pointdiff.data``: ``coords`` [P, 3] and the
SDF samples ``sdf_points`` [Q, 3], ``sdf_values`` [Q], negative inside, object space). Objects
whose sign the converter flagged unreliable (``sdf_reliable: false``, e.g. open meshes where the
ray votes disagree) are skipped by default: a wrong sign teaches a wrong surface.

**Input augmentation** (so the head works on *generated* clouds, not only clean samples): the
generator's clouds are 4096 points with some positional noise, uneven density and a bbox
normalisation. Per item, as a function of (seed, epoch, index) only (exact resume):

1. a random rotation about the up axis (Z) of cloud *and* queries, then the bbox normalisation
   (xyz in [-0.5, 0.5]) of the rotated clean cloud applied to both, with SDF values scaled by the
   same factor (an SDF scales with its shape);
2. ``num_points`` points drawn at random (without replacement when possible);
3. "dropout": a fraction ~ U(0, dropout) of them replaced by copies of other points (clumps
   and holes, as diffusion samples have);
4. Gaussian noise with a per-cloud σ ~ U(0, noise) added to the cloud (never to the queries);
5. "outliers": a fraction ~ U(0, outliers) of the points moved by a further Gaussian of σ
   ``pointcloud.STRAY_SIGMA`` (the stray points a small generator scatters around thin parts:
   measured on the shipped model's samples, 2–4 % of points lie > 3× the median k-NN spacing
   from the rest, and the out-of-plane spread is σ ≈ 0.01–0.015 against ≈ 0.005–0.01 for real
   clouds).

**Loss** (``SDFLoss``): clamped L1, ``|f(x) - clamp(sdf(x), ±clamp)|`` averaged over queries
(DeepSDF's clamped L1 with δ = 0.1 object units, 10 % of the object). Marching cubes needs
precise values only near the surface; far away only the sign matters, so the target is clamped
and capacity goes to the band that becomes the mesh. Unlike DeepSDF the prediction is not
clamped: a far prediction with the wrong sign would otherwise get no gradient. A clamped target
also makes the learned field under-estimate far distances, which keeps coarse-to-fine meshing
(``mesh.evaluate_grid``) conservative. Inside and outside queries are weighted to equal totals
per cloud (``balance``, see ``SDFLoss``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pointdiff.data import ShardError, ShardReader, rotate_z
from pointdiff.pointcloud import STRAY_SIGMA

# ----------------------------------------------------------------------------------------------
# Dataset


class SDFDataset(torch.utils.data.Dataset):
    """Augmented clouds with SDF query samples from one or more shard directories.

    Items: ``{"points": [num_points, 3], "queries": [num_queries, 3], "sdf": [num_queries],
    "index": int}``, all float32, object space.

    :param split: keep objects of this split (None = all).
    :param reliable_only: skip objects with ``sdf_reliable == False`` in the index.
    :param noise: max per-cloud Gaussian σ (object units) added to the cloud.
    :param dropout: max fraction of cloud points replaced by duplicates of others.
    :param outliers: max fraction of cloud points displaced by σ ``STRAY_SIGMA``.
    :param rotate: random rotation about Z (+ re-normalisation) of cloud and queries.
    """

    def __init__(
        self,
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = "train",
        num_points: int = 4096,
        num_queries: int = 2048,
        noise: float = 0.01,
        dropout: float = 0.1,
        outliers: float = 0.0,
        rotate: bool = True,
        reliable_only: bool = True,
        seed: int = 0,
    ):
        roots = [roots] if isinstance(roots, str | os.PathLike) else list(roots)
        self.readers = [ShardReader(r) for r in roots]
        self.rows: list[tuple[int, int]] = []  # (reader, row)
        for k, reader in enumerate(self.readers):
            for i, e in enumerate(reader.entries):
                if split is not None and e["split"] != split:
                    continue
                if reliable_only and e.get("sdf_reliable") is False:
                    continue
                self.rows.append((k, i))
        if not self.rows:
            raise ShardError(f"{roots}: no objects with SDF samples in split {split!r}")
        self.num_points, self.num_queries = num_points, num_queries
        self.noise, self.dropout, self.rotate = noise, dropout, rotate
        self.outliers = outliers
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def entry(self, i: int) -> dict:
        k, row = self.rows[i]
        return self.readers[k].entries[row]

    def __getitem__(self, i: int) -> dict:
        k, row = self.rows[i]
        reader = self.readers[k]
        try:
            coords = reader.get(row, "coords").astype(np.float32)
            queries = reader.get(row, "sdf_points").astype(np.float32)
            sdf = reader.get(row, "sdf_values").astype(np.float32)
        except KeyError:
            raise ShardError(f"{reader.root}: objects have no SDF samples (sdf_points)") from None
        g = np.random.default_rng([self.seed, self.epoch, i])

        # 1. rotation about Z, then the bbox normalisation of the rotated clean cloud
        if self.rotate:
            angle = g.uniform(0, 2 * math.pi)
            coords, queries = rotate_z(coords, angle), rotate_z(queries, angle)
            lo, hi = coords.min(0), coords.max(0)
            center, scale = (lo + hi) / 2, float((hi - lo).max())
            coords, queries = (coords - center) / scale, (queries - center) / scale
            sdf = sdf / scale
        # 2. the input cloud: num_points at random
        n = len(coords)
        coords = coords[g.choice(n, self.num_points, replace=self.num_points > n)]
        # 3. dropout: some points become copies of others (clumps and holes)
        n_drop = int(g.uniform(0, self.dropout) * self.num_points)
        if n_drop:
            dropped = g.choice(self.num_points, n_drop, replace=False)
            coords[dropped] = coords[g.integers(0, self.num_points, n_drop)]
        # 4. per-cloud positional noise
        coords = coords + g.normal(0, g.uniform(0, self.noise), coords.shape).astype(np.float32)

        q = g.choice(len(queries), self.num_queries, replace=self.num_queries > len(queries))
        # 5. outliers: a few points scattered further (drawn last: the rest is as without)
        n_out = int(g.uniform(0, self.outliers) * self.num_points) if self.outliers else 0
        if n_out:
            moved = g.choice(self.num_points, n_out, replace=False)
            coords[moved] += g.normal(0, STRAY_SIGMA, (n_out, 3)).astype(np.float32)
        return {
            "points": torch.from_numpy(coords.astype(np.float32)),
            "queries": torch.from_numpy(queries[q]),
            "sdf": torch.from_numpy(sdf[q]),
            "index": i,
        }


# ----------------------------------------------------------------------------------------------
# Loss


class SDFLoss:
    """Clamped L1 per cloud, optionally sign-balanced (see the module doc):
    ``loss(model, batch) -> [B]`` for ``SDFDataset`` batches (``points`` [B, N, 3],
    ``queries`` [B, Q, 3], ``sdf`` [B, Q]).

    ``balance``: inside and outside queries each carry half of a cloud's weight. Most samples
    lie outside (about 3 : 1 in our shards), and where the head cannot yet tell inside from
    outside the L1 optimum is the *median* target, i.e. the majority sign: an unbalanced head
    first learns an unsigned distance (positive everywhere, nothing to mesh) and only slowly
    the sign. Balancing moves that optimum to the surface and rewards resolving the sign.
    """

    def __init__(self, clamp: float = 0.1, balance: bool = True):
        self.clamp, self.balance = clamp, balance

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        sdf = batch["sdf"]
        pred = model(batch["points"], batch["queries"]).float()  # [B, Q]
        err = (pred - sdf.clamp(-self.clamp, self.clamp)).abs()
        if not self.balance:
            return err.mean(dim=1)
        inside = (sdf < 0).float()
        frac = inside.mean(dim=1, keepdim=True).clamp(0.05, 0.95)  # [B, 1]
        weight = inside * (0.5 / frac) + (1 - inside) * (0.5 / (1 - frac))  # mean 1 per cloud
        return (weight * err).mean(dim=1)


# ----------------------------------------------------------------------------------------------
# Evaluation


def volumetric_iou(pred_sdf: torch.Tensor, true_sdf: torch.Tensor) -> torch.Tensor:
    """IoU of the inside regions (SDF < 0) over the same query points (uniform in the volume).

    :param pred_sdf: [..., Q]; true_sdf: [..., Q]. :return: [...].
    """
    pred_in, true_in = pred_sdf < 0, true_sdf < 0
    inter = (pred_in & true_in).sum(-1).float()
    union = (pred_in | true_in).sum(-1).float()
    return inter / union.clamp(min=1)
