"""Labelled clouds for the evaluation classifier, its training loop and held-out accuracy.

Sources: the ShapeNet subset clouds (``shared/data/shapenet_core_v2_subset_pc4096/*.npz``,
Y-up, converted to the project's Z-up frame) labelled by ShapeNet synset name, and pointdiff
shard directories whose index entries carry a ``category`` (e.g. Sweet Home 3D). Splits are the
sources' own (``train`` vs everything else = held out).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pointdiff.data import ShardReader
from pointdiff.evaluation.classifier import PointNet2Classifier
from pointdiff.pointcloud import STRAY_SIGMA, y_up_to_z_up


@dataclass
class LabelledClouds:
    """Clouds with category labels.

    :param coords: [K, P, 3] float32 object space, Z-up. :param colors: [K, P, 3] in [0, 1].
    :param labels: [K] category names. :param splits: [K] ``train``/``val``/``test``.
    """

    coords: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)

    def subset(self, mask: np.ndarray) -> LabelledClouds:
        return LabelledClouds(
            *(a[mask] for a in (self.coords, self.colors, self.labels, self.splits, self.source))
        )


def load_shapenet_subset(
    root: str | Path, num_points: int = 4096, yaw: float = 0.0
) -> LabelledClouds:
    """The derived ShapeNet clouds (one ``<synset>_<name>.npz`` per synset), labelled by synset
    name.

    :param yaw: rotate about the up axis by this many degrees (180 turns ShapeNet's chair backs
        from −y to +y, where Sweet Home 3D's are).
    """
    files = sorted(Path(root).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{root}: no ShapeNet .npz files")
    parts = []
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            xyz = y_up_to_z_up(d["xyz"][:, :num_points].astype(np.float32))
            if yaw:
                c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
                xyz = xyz @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], np.float32)
            rgb = d["rgb"][:, :num_points].astype(np.float32) / 255.0
            n = len(xyz)
            name = str(d["synset_name"])
            parts.append(
                (xyz, rgb, np.full(n, name), d["split"].astype(str), np.full(n, "shapenet"))
            )
    return LabelledClouds(*(np.concatenate(a) for a in zip(*parts, strict=True)))


def load_shard_categories(
    root: str | Path, key: str = "category", num_points: int = 4096
) -> LabelledClouds:
    """Objects of a shard directory that have a ``key`` label in their index entry."""
    reader = ShardReader(root)
    rows = [i for i, e in enumerate(reader.entries) if e.get(key)]
    if not rows:
        raise ValueError(f"{root}: no index entries with a {key!r} label")
    coords = np.stack([reader.get(i, "coords")[:num_points] for i in rows]).astype(np.float32)
    colors = np.stack([reader.get(i, "colors")[:num_points] for i in rows]).astype(np.float32) / 255
    labels = np.array([str(reader.entries[i][key]) for i in rows])
    splits = np.array([reader.entries[i]["split"] for i in rows])
    return LabelledClouds(coords, colors, labels, splits, np.full(len(rows), Path(root).name))


def concat_clouds(parts: list[LabelledClouds]) -> LabelledClouds:
    p = min(x.coords.shape[1] for x in parts)
    return LabelledClouds(
        np.concatenate([x.coords[:, :p] for x in parts]),
        np.concatenate([x.colors[:, :p] for x in parts]),
        *(np.concatenate([getattr(x, k) for x in parts]) for k in ("labels", "splits", "source")),
    )


# ----------------------------------------------------------------------------------------------
# Training


def perturb(data: LabelledClouds, noise: float, outliers: float, seed: int = 0) -> LabelledClouds:
    """A copy of ``data`` with generator-like defects, fixed by ``seed``: every point jittered by
    N(0, ``noise``²) and a fraction ``outliers`` of each cloud's points moved by σ ``STRAY_SIGMA``.
    For measuring how a classifier copes with generated rather than scanned clouds."""
    rng = np.random.default_rng(seed)
    coords = data.coords + rng.normal(0, noise, data.coords.shape).astype(np.float32)
    k = int(round(outliers * coords.shape[1]))
    for c in coords if k else []:  # each view is written through into ``coords``
        idx = rng.choice(len(c), k, replace=False)
        c[idx] += rng.normal(0, STRAY_SIGMA, (k, 3)).astype(np.float32)
    return LabelledClouds(coords, data.colors, data.labels, data.splits, data.source)


def _augment(
    coords: torch.Tensor,
    g: torch.Generator,
    rotation: float = 180.0,
    noise: float = 0.0,
    outliers: float = 0.0,
) -> torch.Tensor:
    """Random rotation about the up axis (uniform in ±``rotation`` degrees), anisotropic scale
    in [0.8, 1.25], jitter σ = 0.005; then, if asked, generator-like defects: per cloud, jitter
    σ ~ U(0, ``noise``) and a fraction ~ U(0, ``outliers``) of points moved by σ ``STRAY_SIGMA``.

    :param coords: [B, P, 3]. :return: [B, P, 3].
    """
    b = coords.shape[0]
    a = (torch.rand(b, generator=g) * 2 - 1) * math.radians(rotation)
    c, s = a.cos(), a.sin()
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
    scale = torch.exp(torch.empty(b, 1, 3).uniform_(math.log(0.8), math.log(1.25), generator=g))
    jitter = 0.005 * torch.randn(coords.shape, generator=g)
    out = (coords @ rot.transpose(1, 2)) * scale + jitter
    if noise:
        out = out + torch.rand(b, 1, 1, generator=g) * noise * torch.randn(out.shape, generator=g)
    if outliers:
        frac = torch.rand(b, 1, 1, generator=g) * outliers
        moved = torch.rand(out.shape[:2] + (1,), generator=g) < frac
        out = out + moved * STRAY_SIGMA * torch.randn(out.shape, generator=g)
    return out


def _batch(
    data: LabelledClouds,
    idx,
    num_points,
    in_channels,
    g,
    train,
    rotation=180.0,
    noise=0.0,
    outliers=0.0,
    fps_share=0.0,
):
    p = data.coords.shape[1]
    if train:  # a fresh random subset of points each time, or (fps_share) the FPS prefix
        pick = torch.stack([torch.randperm(p, generator=g)[:num_points] for _ in idx])
        prefix = torch.rand(len(idx), generator=g) < fps_share
        pick[prefix] = torch.arange(num_points)
    else:  # clouds are stored in farthest-point order: the first points are a good subsample
        pick = torch.arange(num_points).expand(len(idx), -1)
    coords = torch.from_numpy(data.coords[idx]).gather(1, pick[..., None].expand(-1, -1, 3))
    if train:
        coords = _augment(coords, g, rotation, noise, outliers)
    if in_channels == 3:
        return coords
    colors = torch.from_numpy(data.colors[idx]).gather(1, pick[..., None].expand(-1, -1, 3))
    return torch.cat([coords, colors], dim=-1)


@torch.no_grad()
def predict(model: PointNet2Classifier, data: LabelledClouds, num_points=1024, batch_size=32):
    """Logits [K, C] for every cloud (deterministic subsample, no augmentation)."""
    model.eval()
    out = []
    for s in range(0, len(data), batch_size):
        idx = np.arange(s, min(s + batch_size, len(data)))
        out.append(
            model(_batch(data, idx, num_points, model.cfg.in_channels, None, False))["logits"]
        )
    return torch.cat(out)


def accuracy(model: PointNet2Classifier, data: LabelledClouds, num_points=1024) -> dict:
    """Top-1 accuracy overall and per category (labels unknown to the model count as wrong)."""
    names = list(model.cfg.class_names)
    pred = predict(model, data, num_points).argmax(-1).numpy()
    hit = np.array([names[p] == lab for p, lab in zip(pred, data.labels, strict=True)])
    per = {c: float(hit[data.labels == c].mean()) for c in sorted(set(data.labels))}
    return {"acc": float(hit.mean()) if len(hit) else float("nan"), "n": len(hit), "per_class": per}


def train_classifier(
    model: PointNet2Classifier,
    data: LabelledClouds,
    epochs: int = 60,
    batch_size: int = 16,
    num_points: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    log_path: str | Path | None = None,
    held_out: LabelledClouds | None = None,
    log_every: int = 10,
    rotation: float = 180.0,
    noise: float = 0.0,
    outliers: float = 0.0,
    fps_share: float = 0.0,
) -> list[dict]:
    """Train on ``data`` (labels must be in ``model.cfg.class_names``) with AdamW + cosine LR.

    :param rotation: augmentation rotates about the up axis by up to ± this many degrees (180:
        any orientation; small values for generators trained in canonical orientation).
    :param noise, outliers: generator-like defects added by the augmentation (max jitter σ, max
        stray fraction; see ``_augment``), so generated clouds are judged by shape, not by noise.
    :param fps_share: the share of training clouds subsampled as their farthest-point prefix (as
        at evaluation) instead of a random subset: both subsets are then judged alike.

    Classes are balanced by sampling each epoch's clouds with weights 1 / class frequency.
    :return: one dict per logged epoch (loss, train accuracy, held-out accuracy if given).
    """
    names = list(model.cfg.class_names)
    unknown = sorted(set(data.labels) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {names}")
    y = torch.tensor([names.index(lab) for lab in data.labels])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(data) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    weights = 1.0 / torch.bincount(y, minlength=len(names)).float()[y]
    history, t0 = [], time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.multinomial(weights, steps_per_epoch * batch_size, True, generator=g)
        total, correct, count = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size].numpy()
            x = _batch(
                data,
                idx,
                num_points,
                model.cfg.in_channels,
                g,
                True,
                rotation,
                noise,
                outliers,
                fps_share,
            )
            logits = model(x)["logits"]
            loss = F.cross_entropy(logits, y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == y[idx]).sum())
            count += len(idx)
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            rec = {
                "epoch": epoch + 1,
                "loss": total / count,
                "train_acc_aug": correct / count,
                "time_s": round(time.time() - t0, 1),
            }
            if held_out is not None and len(held_out):
                rec["held_out_acc"] = accuracy(model, held_out, num_points)["acc"]
            history.append(rec)
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    model.eval()
    return history
