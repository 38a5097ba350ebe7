"""Fine-tuning point-e's released networks (as Cap3D did) with the loss they were trained on.

Point-e's diffusion models are discrete-time ε-predictors with a learned variance: 12 output
channels (ε̂ and v for 6 channels) on a 1024-step schedule, cosine for the base models and linear
for the upsampler. The EDM objective cannot train them (it wants a denoised cloud from a σ-net),
so a converted point-e network (``pointdiff convert-pointe``) is trained here as point-e's code
defines its loss (``GaussianDiffusion.training_losses``; the maths is
``pointdiff.diffusion.discrete.DiscreteDiffusion``): t uniform over the 1024 steps, x_t from
the clean cloud, loss = MSE(ε̂, ε) + L_vb. The network is trained bare (no preconditioner), so
its checkpoints hold the same weights and config as the converted model and load where it
does (``pointdiff sample --pointe-dir``).

Condition dropout (classifier-free guidance) is point-e's: in training mode the network zeroes a
sample's whole condition with probability ``cond_drop_prob`` (0.1 in every converted config).

Which checkpoints are point-e models: a converted one's ``config.json`` records
``{"pointe": {"name", "schedule"}}`` (``compat.pointe.save_converted``), and so do the
checkpoints of a run fine-tuned from it (``mark_pointe_checkpoints``); a network with twice as
many outputs as inputs (ε + variance) is one too, on its stage's schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pointdiff.atomic import write_json_atomic
from pointdiff.checkpoint import list_checkpoints, load_configs, resolve
from pointdiff.diffusion.discrete import ALPHAS_CUMPROD, DiscreteDiffusion
from pointdiff.training.objectives import split_low_res

POINTE_KEY = "pointe"  # config.json record of a point-e model (compat.pointe.save_converted)
#: point-e's schedule of each stage (``point_e/diffusion/configs.py``)
STAGE_SCHEDULES = {"denoiser": "cosine", "upsampler": "linear"}


class PointeLoss:
    """Point-e's hybrid loss per example (see the module doc), for the base stage or, with
    ``num_cond_points``, the upsampler (each cloud split by ``objectives.split_low_res``: the
    network denoises the other points given ``low_res``). t and the noise come from torch's
    global RNG (the training loop seeds it per micro-step).

    :param schedule: ``"cosine"`` (base models) or ``"linear"`` (upsampler).
    :param condition: the batch key the model is conditioned on (``text_emb``, ``caption``,
        None; see ``training.objectives``).
    :param num_cond_points: M low-res points of the upsampler; 0 for the base stage.
    """

    def __init__(self, schedule: str, condition: str | None = None, num_cond_points: int = 0):
        if schedule not in ALPHAS_CUMPROD:
            raise ValueError(f"unknown schedule {schedule!r}; one of {', '.join(ALPHAS_CUMPROD)}")
        self.diffusion = DiscreteDiffusion(ALPHAS_CUMPROD[schedule]())
        self.schedule, self.condition = schedule, condition
        self.num_cond_points = num_cond_points

    def terms(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """``{"mse", "vb", "loss"}``, each [B], for one batch (``{"points": [B, N, 6], …}``)."""
        x0 = batch["points"]
        extra = {} if self.condition is None else {self.condition: batch[self.condition]}
        if self.num_cond_points:
            extra["low_res"], x0 = split_low_res(x0, self.num_cond_points)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.add_noise(x0, t, noise)
        out = model(x_t, t.float(), **extra)  # the step index is the net's noise input
        # the loss in float32 even when the net ran under bf16 autocast
        return self.diffusion.training_losses(out.float(), x0, t, noise)

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """:return: [B] loss = MSE(ε̂, ε) + L_vb."""
        return self.terms(model, batch)["loss"]


def pointe_info(path: str | Path) -> dict | None:
    """``{"name", "schedule"}`` when the checkpoint at ``path`` (a converted directory, a
    checkpoint or a run) is a point-e model, else None.

    The ``config.json`` record comes first; without one, a network whose outputs are twice its
    inputs (ε + learned variance) is point-e's parameterisation on its stage's schedule.
    """
    ckpt = resolve(path)
    meta = json.loads((ckpt / "config.json").read_text())
    if isinstance(meta.get(POINTE_KEY), dict) and meta[POINTE_KEY].get("schedule"):
        return {"name": meta[POINTE_KEY].get("name"), "schedule": meta[POINTE_KEY]["schedule"]}
    cfg = load_configs(ckpt)["model"]
    is_eps_var = getattr(cfg, "out_channels", 0) == 2 * getattr(cfg, "in_channels", -1)
    if is_eps_var and cfg.kind in STAGE_SCHEDULES:
        return {"name": None, "schedule": STAGE_SCHEDULES[cfg.kind]}
    return None


def choose_objective(
    objective: str | None, init_from: str | Path | None, kind: str
) -> tuple[object | None, dict | None]:
    """What a training command asks for with ``--objective`` and ``--init-from``.

    :param objective: ``"pointe"``, ``"edm"`` or None (point-e when ``init_from`` is a point-e
        model, else EDM).
    :param kind: the stage's model kind (``"denoiser"`` or ``"upsampler"``).
    :return: (model config, point-e record): (None, None) for EDM (the model comes from the
        preset); for the point-e objective the record ``{"name", "schedule"}`` and the
        checkpoint's model config, or None when starting from scratch (from the preset).
    :raises ValueError: an objective that cannot train the checkpoint, or a checkpoint of another
        stage.
    """
    info = pointe_info(init_from) if init_from else None
    objective = objective or ("pointe" if info else "edm")
    if objective not in ("pointe", "edm"):
        raise ValueError(f"--objective {objective!r}: use pointe or edm")
    if objective == "edm":
        if info is not None:
            raise ValueError(
                f"--init-from {init_from} is a point-e model (ε and learned variance on a discrete "
                "schedule); the EDM objective cannot train it: use --objective pointe"
            )
        return None, None
    if init_from is None:  # from scratch: the preset needs the 2 × C outputs (checked later)
        return None, {"name": None, "schedule": STAGE_SCHEDULES[kind]}
    if info is None:
        raise ValueError(
            f"--objective pointe: --init-from {init_from} is not a point-e model (convert "
            "released weights with `pointdiff convert-pointe`)"
        )
    cfg = load_configs(init_from)["model"]
    if cfg.kind != kind:
        raise ValueError(f"--init-from {init_from} holds a {cfg.kind}, not a {kind}")
    return cfg, info


def mark_pointe_checkpoints(run_dir: str | Path, info: dict) -> None:
    """Record ``info`` (``{"name", "schedule"}``) in the ``config.json`` of each checkpoint of a
    run that lacks it, so they describe themselves as the converted model does. Rank 0 only."""
    for ckpt in list_checkpoints(run_dir):
        cfg_file = ckpt / "config.json"
        meta = json.loads(cfg_file.read_text())
        if POINTE_KEY not in meta:
            write_json_atomic(cfg_file, {**meta, POINTE_KEY: info}, sort_keys=False)


__all__ = [
    "POINTE_KEY",
    "PointeLoss",
    "STAGE_SCHEDULES",
    "choose_objective",
    "mark_pointe_checkpoints",
    "pointe_info",
]
