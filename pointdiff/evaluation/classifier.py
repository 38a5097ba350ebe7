"""PointNet++ SSG point-cloud classifier (pure PyTorch) and loaders for its weights.

The architecture is point-e's evaluator (``point_e/evals/pointnet2_cls_ssg.py``, after
yanx27/Pointnet_Pointnet2_pytorch): three set-abstraction (SA) levels, then an MLP head. Point-e
uses ``width_mult=2`` and 40 classes; its P-FID features are ``bn2(fc2(·))`` (pre-ReLU,
256·width dims; point-e's ``feature_dim`` property says 256 but the tensor is 512-d).

Differences from point-e's code, none of which change the maths:

* channels-last tensors and ``nn.Linear`` instead of 1×1 ``Conv2d`` (``load_pointe_evaluator``
  reshapes the conv weights);
* inputs are always normalised inside ``forward`` (centroid, unit sphere: point-e's
  ``normalize_point_clouds``), so callers cannot forget it;
* optional colour input (``in_channels=6``) is fed like point-e's ``normal_channel`` features.

Checkpoints written here: ``model.safetensors`` + ``config.json`` (the config and class names).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.atomic import atomic_path, write_json_atomic
from pointdiff.checkpoint import record_hashes, verify_hashes
from pointdiff.pointcloud import farthest_point_sample


class ClassifierError(ValueError):
    """A classifier checkpoint or input that cannot be used, with the reason."""


@dataclass(frozen=True)
class ClassifierConfig:
    """PointNet++ SSG classifier."""

    num_classes: int = 40  # output classes
    in_channels: int = 3  # 3 = xyz; 6 = xyz + rgb (colour in [0, 1] after the xyz channels)
    width_mult: float = 2.0  # channel multiplier on PointNet++'s [64, 64, 128] … widths
    num_centroids: tuple[int, int] = (512, 128)  # SA1, SA2 centroids (farthest points)
    radii: tuple[float, float] = (0.2, 0.4)  # ball-query radii on the unit sphere
    num_neighbors: tuple[int, int] = (32, 64)  # points gathered per ball
    dropout: float = 0.4
    eval_fps_start: str = "batch_index"  # point-e: FPS starts at index b in eval; or "zero"
    class_names: tuple[str, ...] = field(default_factory=tuple)  # label names, len num_classes

    @property
    def feature_dim(self) -> int:
        """Size of the P-FID feature vector (bn2(fc2(·)))."""
        return int(256 * self.width_mult)


CLASSIFIER_PRESETS = {
    # point-e's released evaluator: PointNet++ SSG, width × 2, 40 classes, xyz only
    "pointe": ClassifierConfig(),
    # trained here on a 2-core CPU (~8x cheaper than "pointe"): width × 0.5, 256/64 centroids
    "small": ClassifierConfig(width_mult=0.5, num_centroids=(256, 64), eval_fps_start="zero"),
    # tests: seconds on a CPU
    "tiny": ClassifierConfig(
        width_mult=0.25, num_centroids=(64, 16), num_neighbors=(16, 16), eval_fps_start="zero"
    ),
}


# ----------------------------------------------------------------------------------------------
# Model


def normalize_unit_sphere(xyz: torch.Tensor) -> torch.Tensor:
    """Centre [B, N, 3] clouds on their centroid and scale the farthest point to radius 1."""
    xyz = xyz - xyz.mean(dim=1, keepdim=True)
    radius = xyz.norm(dim=-1).amax(dim=1).clamp_min(1e-9)
    return xyz / radius[:, None, None]


def _ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """The k lowest-index points within ``radius`` of each centre (point-e's ``query_ball_point``).

    Balls with fewer than k points repeat their first point. :return: [B, S, k] indices.
    """
    n = xyz.shape[1]
    # |c|² + |x|² − 2 c·x, in point-e's order of operations (ball membership at the boundary)
    d2 = -2 * centers @ xyz.transpose(1, 2)
    d2 += centers.square().sum(-1)[..., None]
    d2 += xyz.square().sum(-1)[:, None]  # [B, S, N]
    idx = torch.arange(n, device=xyz.device).expand_as(d2).masked_fill(d2 > radius**2, n)
    idx = idx.topk(min(k, n), dim=-1, largest=False, sorted=True).values
    if idx.shape[-1] < k:
        idx = torch.cat([idx, idx.new_full((*idx.shape[:2], k - idx.shape[-1]), n)], dim=-1)
    return torch.where(idx == n, idx[..., :1], idx)  # centre itself is always in its ball


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B, N, C] at idx [B, ...] -> [B, ..., C]."""
    b = torch.arange(points.shape[0], device=points.device).view(-1, *[1] * (idx.dim() - 1))
    return points[b, idx]


class _SharedMLP(nn.Module):
    """Per-point Linear → BatchNorm → ReLU stack (point-e's 1×1 Conv2d + BatchNorm2d)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(channels, channels[1:], strict=False)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in channels[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # BatchNorm over every point of every group
        for lin, norm in zip(self.linears, self.norms, strict=True):
            x = F.relu(norm(lin(x)))
        return x.reshape(*shape, -1)


class SetAbstraction(nn.Module):
    """One SSG level: farthest-point centroids, ball grouping, shared MLP, max-pool.

    ``num_centroids=None`` groups everything into one set (point-e's ``group_all``).
    """

    def __init__(self, num_centroids, radius, num_neighbors, in_channels, channels, fps_start):
        super().__init__()
        self.num_centroids, self.radius, self.num_neighbors = num_centroids, radius, num_neighbors
        self.fps_start = fps_start
        self.mlp = _SharedMLP([in_channels + 3, *channels])

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor | None):
        """:param xyz: [B, N, 3]; :param feats: [B, N, C] or None.
        :return: ([B, S, 3], [B, S, C'])."""
        if self.num_centroids is None:
            grouped = xyz[:, None]  # [B, 1, N, 3]; point-e does not centre the group_all set
            if feats is not None:
                grouped = torch.cat([grouped, feats[:, None]], dim=-1)
            return xyz.new_zeros(xyz.shape[0], 1, 3), self.mlp(grouped).amax(dim=2)
        b, n, _ = xyz.shape
        if self.training:
            start = torch.randint(n, (b,), device=xyz.device)
        elif self.fps_start == "batch_index":
            start = torch.arange(b, device=xyz.device) % n
        else:
            start = torch.zeros(b, dtype=torch.long, device=xyz.device)
        centers = _gather(xyz, farthest_point_sample(xyz, min(self.num_centroids, n), start))
        idx = _ball_query(xyz, centers, self.radius, self.num_neighbors)  # [B, S, K]
        grouped = _gather(xyz, idx) - centers[:, :, None]  # [B, S, K, 3] relative positions
        if feats is not None:
            grouped = torch.cat([grouped, _gather(feats, idx)], dim=-1)
        return centers, self.mlp(grouped).amax(dim=2)


class PointNet2Classifier(nn.Module):
    """PointNet++ SSG classifier.

    ``forward(points [B, N, 3 or 6]) -> {"logits": [B, C], "features": [B, 256·w]}``; xyz are
    normalised to the unit sphere inside; channels 3:6 (colour) are used when ``in_channels=6``.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if cfg.in_channels not in (3, 6):
            raise ClassifierError(
                f"in_channels must be 3 (xyz) or 6 (xyz+rgb), got {cfg.in_channels}"
            )
        if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
            raise ClassifierError(
                f"{len(cfg.class_names)} class names for {cfg.num_classes} classes"
            )
        self.cfg = cfg
        w = cfg.width_mult
        c = [int(v * w) for v in (64, 64, 128, 128, 128, 256, 256, 512, 1024, 512, 256)]
        extra = cfg.in_channels - 3
        start = cfg.eval_fps_start
        self.sa1 = SetAbstraction(
            cfg.num_centroids[0], cfg.radii[0], cfg.num_neighbors[0], extra, c[0:3], start
        )
        self.sa2 = SetAbstraction(
            cfg.num_centroids[1], cfg.radii[1], cfg.num_neighbors[1], c[2], c[3:6], start
        )
        self.sa3 = SetAbstraction(None, None, None, c[5], c[6:9], start)
        self.fc1, self.bn1 = nn.Linear(c[8], c[9]), nn.BatchNorm1d(c[9])
        self.fc2, self.bn2 = nn.Linear(c[9], c[10]), nn.BatchNorm1d(c[10])
        self.fc3 = nn.Linear(c[10], cfg.num_classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        if points.dim() != 3 or points.shape[-1] < self.cfg.in_channels:
            raise ClassifierError(
                f"expected points [B, N, >={self.cfg.in_channels}], got {tuple(points.shape)}"
            )
        xyz = normalize_unit_sphere(points[..., :3].float())
        feats = points[..., 3:6].float() if self.cfg.in_channels == 6 else None
        xyz, feats = self.sa1(xyz, feats)
        xyz, feats = self.sa2(xyz, feats)
        _, feats = self.sa3(xyz, feats)
        x = self.drop(F.relu(self.bn1(self.fc1(feats[:, 0]))))
        features = self.bn2(self.fc2(x))  # point-e's P-FID features (pre-ReLU)
        logits = self.fc3(self.drop(F.relu(features)))
        return {"logits": logits, "features": features}


# ----------------------------------------------------------------------------------------------
# Checkpoints: ours (safetensors + config.json) and point-e's released `pointnet`


def save_classifier(
    model: PointNet2Classifier,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
    dtype: torch.dtype | None = None,
):
    """Write ``model.safetensors`` and ``config.json`` (config + ``extra``, e.g. accuracy).

    :param dtype: cast floating-point tensors (e.g. ``torch.float16`` for shipping); loading
        casts back to the model's float32.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
        for k, v in model.state_dict().items()
    }
    state = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    meta = {"config": asdict(model.cfg), **(extra or {})}
    write_json_atomic(out / "config.json", meta, sort_keys=False)
    record_hashes(out)  # the weights' SHA-256 in config.json, checked by load_classifier


def load_classifier(path: str | os.PathLike, device: str = "cpu") -> PointNet2Classifier:
    """Load a classifier directory written by ``save_classifier`` (eval mode)."""
    from safetensors.torch import load_file

    root = Path(path)
    if not (root / "config.json").is_file() or not (root / "model.safetensors").is_file():
        raise ClassifierError(
            f"{root}: expected model.safetensors and config.json (train one with "
            "train/train_classifier.py, or load point-e's with load_pointe_evaluator)"
        )
    verify_hashes(root)  # a CheckpointError naming a corrupt or changed file
    d = json.loads((root / "config.json").read_text())["config"]
    for k in ("num_centroids", "radii", "num_neighbors", "class_names"):
        d[k] = tuple(d[k])
    model = PointNet2Classifier(ClassifierConfig(**d))
    _load_state(model, load_file(str(root / "model.safetensors")), str(root))
    return model.to(device).eval()


def _load_state(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ClassifierError(f"{source}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ClassifierError(
                f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
    model.load_state_dict(state)


def pointe_key_map(cfg: ClassifierConfig) -> dict[str, str]:
    """Our parameter/buffer name -> point-e's (``sa1.mlp_convs.0.weight``,
    ``bn1.running_mean`` …)."""
    out = {}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for s in ("sa1", "sa2", "sa3"):
        for i in range(3):
            for p in ("weight", "bias"):
                out[f"{s}.mlp.linears.{i}.{p}"] = f"{s}.mlp_convs.{i}.{p}"
            for p in bn:
                out[f"{s}.mlp.norms.{i}.{p}"] = f"{s}.mlp_bns.{i}.{p}"
    for i in (1, 2, 3):
        out[f"fc{i}.weight"], out[f"fc{i}.bias"] = f"fc{i}.weight", f"fc{i}.bias"
    for i in (1, 2):
        for p in bn:
            out[f"bn{i}.{p}"] = f"bn{i}.{p}"
    return out


def load_pointe_evaluator(path: str | os.PathLike, device: str = "cpu") -> PointNet2Classifier:
    """Load point-e's released ``pointnet`` evaluator (PointNet++ SSG, width × 2, 40 classes).

    :param path: the checkpoint file as point-e downloads it (a torch file holding
        ``{"model_state_dict": ...}``; read with ``weights_only=True``, so no code runs), or a
        ``.safetensors`` file with point-e's parameter names.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: no such file (point-e's evaluator checkpoint 'pointnet')")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ClassifierError(f"{path}: not a loadable torch checkpoint ({e})") from None
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    cfg = CLASSIFIER_PRESETS["pointe"]
    model = PointNet2Classifier(cfg)
    converted = {}
    for ours, theirs in pointe_key_map(cfg).items():
        if theirs not in state and theirs.endswith("num_batches_tracked"):
            state[theirs] = torch.tensor(0)  # absent in checkpoints from torch < 0.4.1; unused
        if theirs not in state:
            raise ClassifierError(f"{path}: point-e key {theirs!r} is missing")
        v = state[theirs]
        converted[ours] = v.reshape(v.shape[:2]) if v.dim() == 4 else v  # 1×1 conv -> linear
    _load_state(model, converted, str(path))
    return model.to(device).eval()


def with_classes(cfg: ClassifierConfig, class_names: list[str]) -> ClassifierConfig:
    """``cfg`` resized to the given label names."""
    return replace(cfg, num_classes=len(class_names), class_names=tuple(class_names))
