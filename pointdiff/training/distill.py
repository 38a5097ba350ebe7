"""Few-call students distilled from a diffusion teacher: one loss callable per method, for the
ordinary training loop (``training.loop.train``), on any stage (base or upsampler) and any
denoiser (EDM ``KarrasDenoiser`` or point-e's ``DiscreteEpsDenoiser``).

* ``GuidanceDistillLoss`` (Meng et al., CVPR 2023, stage 1): the student takes the guidance
  scale w as an input (``guidance_embed``) and learns the teacher's guided output
  D_u + w·(D_c − D_u) in one call instead of a pair.
* ``ProgressiveDistillLoss`` (Salimans & Ho, ICLR 2022): one student step (DDIM, i.e. Euler on
  the probability-flow ODE) from σ_s to σ_e matches two teacher steps through the level between
  them on a nested grid; repeated, each round halves the steps.
* ``TrajectoryLoss`` (knowledge distillation of the ODE, Luhman & Luhman 2021, at every level
  of the trajectory as in consistency-trajectory models): from any state x(σ) of a teacher
  trajectory the student predicts where the trajectory ends. The trajectories are computed once
  (``generate_trajectories``) and read back as a dataset (``TrajectoryDataset``); sampled with
  ``diffusion.samplers.sample_consistency``.

σ is drawn along the sampler's Karras ramp (where a sampler evaluates the model), not from the
training law; each squared error is weighted by ``loss_weight`` (EDM's 1/c_out² for EDM models,
1/σ² — point-e's ε loss — for ε models).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pointdiff.atomic import atomic_path, write_json_atomic
from pointdiff.diffusion.discrete import DiscreteEpsDenoiser
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.diffusion.samplers import sample_dpmpp_2m
from pointdiff.diffusion.schedules import get_sigmas_karras, get_sigmas_subgrid, sample_grid_sigmas

METHODS = ("guidance", "progressive", "trajectory")


@dataclass(frozen=True)
class Teacher:
    """A frozen diffusion model and the σ grid it samples on.

    :param denoiser: ``denoiser(x [B,N,C], sigma [B], **cond) -> denoised``, in eval mode.
    :param cond_key: the condition it is guided on (``text_emb``/``grid``); None: unguided.
    :param takes_guidance: it takes the guidance scale as an input (a distilled student).
    :param sigma_min, sigma_max, rho: its Karras grid.
    :param clamp: clamp each denoised half to [-1, 1] before mixing, as its sampler does
        (``SampleConfig.clip_denoised``).
    """

    denoiser: Callable
    cond_key: str | None
    takes_guidance: bool
    sigma_min: float
    sigma_max: float
    rho: float
    clamp: bool = False

    def student_args(self, w: torch.Tensor) -> dict:
        """What a student of this teacher takes besides the condition: the scale, when guided."""
        return {} if self.cond_key is None else {"guidance": w}

    def guided(self, x, sigma, extra: dict, w: torch.Tensor) -> torch.Tensor:
        """The teacher's guided D(x; σ) at per-row scales ``w`` [B] (one call of 2B, or of B for
        a guidance-input teacher; an unguided stage ignores ``w``)."""
        model = clamp_denoised(self.denoiser) if self.clamp else self.denoiser
        if self.takes_guidance:
            return model(x, sigma, guidance=w, **extra)
        if self.cond_key is None:
            return model(x, sigma, **extra)
        return classifier_free_guidance(model, w, (self.cond_key,))(x, sigma, **extra)


def loss_weight(denoiser: nn.Module, sigma: torch.Tensor) -> torch.Tensor:
    """Per-example weight of a squared error in D at σ [B]: 1/c_out² = (σ² + σ_d²)/(σ·σ_d)² for
    an EDM model (unit-variance network target), 1/σ² for an ε model (its ε error)."""
    inner = getattr(denoiser, "module", denoiser)  # DDP wraps the student
    if isinstance(inner, KarrasDenoiser):
        sd = inner.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
    if isinstance(inner, DiscreteEpsDenoiser):
        return sigma**-2
    raise TypeError(f"no distillation weight for a {type(inner).__name__}")


def _mse(weight: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return weight * (out.float() - target.float()).pow(2).flatten(1).mean(1)


def _scales(b: int, lo: float, hi: float, device) -> torch.Tensor:
    """[B] guidance scales ~ U[lo, hi] (torch's global RNG)."""
    return lo + (hi - lo) * torch.rand(b, device=device)


def _rows(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))


class GuidanceDistillLoss:
    """Student(x, σ, c, w) ≈ the teacher's guided D_w(x; σ, c), w ~ U[lo, hi], x = x0 + σ·ε.

    :param inputs: ``inputs(batch) -> (x0 [B,N,C], condition kwargs)`` (the stage's loss,
        ``objectives.BaseLoss``/``UpsamplerLoss``).
    """

    def __init__(self, teacher: Teacher, inputs: Callable, weight: Callable, w_range):
        self.teacher, self.inputs, self.weight, self.w_range = teacher, inputs, weight, w_range

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        x0, extra = self.inputs(batch)
        t = self.teacher
        sigma = sample_grid_sigmas(x0.shape[0], t.sigma_min, t.sigma_max, t.rho, x0.device)
        w = _scales(x0.shape[0], *self.w_range, x0.device)
        x = x0 + torch.randn_like(x0) * _rows(sigma, x0.ndim)
        with torch.no_grad():
            target = t.guided(x, sigma, extra, w)
        out = model(x, sigma, **t.student_args(w), **extra)
        return _mse(self.weight(sigma), out, target)


class ProgressiveDistillLoss:
    """One student DDIM step σ_s → σ_e lands where two teacher DDIM steps σ_s → σ_m → σ_e do.

    The teacher's grid is every (grid / (2·steps))-th level of the Karras grid of ``grid``
    steps; the student's (``steps``) every other level of it. The target is the denoised value
    that makes the student's DDIM step exact: D̂ = (x_e − (σ_e/σ_s)·x_s) / (1 − σ_e/σ_s).

    :param steps: the student's steps (the teacher takes 2·steps on the same grid).
    """

    def __init__(self, teacher: Teacher, inputs, weight, w_range, steps: int, grid: int):
        self.teacher, self.inputs, self.weight, self.w_range = teacher, inputs, weight, w_range
        self.steps = steps
        self.sigmas = get_sigmas_subgrid(
            2 * steps, grid, teacher.sigma_min, teacher.sigma_max, teacher.rho
        )

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        x0, extra = self.inputs(batch)
        b, dev = x0.shape[0], x0.device
        i = 2 * torch.randint(0, self.steps, (b,), device="cpu")
        s, m, e = (self.sigmas[i + k].to(dev) for k in (0, 1, 2))
        w = _scales(b, *self.w_range, dev)
        x = x0 + torch.randn_like(x0) * _rows(s, x0.ndim)
        with torch.no_grad():
            d = self.teacher.guided(x, s, extra, w)
            x_m = d + _rows(m / s, x.ndim) * (x - d)
            d = self.teacher.guided(x_m, m, extra, w)
            x_e = d + _rows(e / m, x.ndim) * (x_m - d)
            ratio = _rows(e / s, x.ndim)
            target = (x_e - ratio * x) / (1 - ratio)
        out = model(x, s, **self.teacher.student_args(w), **extra)
        return _mse(self.weight(s), out, target)


class TrajectoryLoss:
    """Student(x(σ), σ, c, w) ≈ the end of the teacher trajectory through x(σ) (a batch of
    ``TrajectoryDataset``: ``x``, ``sigma``, ``target``, ``guidance`` and the condition)."""

    def __init__(self, weight: Callable, guided: bool, cond_keys=("text_emb", "grid", "low_res")):
        self.weight, self.guided, self.cond_keys = weight, guided, cond_keys

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        extra = {k: batch[k] for k in self.cond_keys if k in batch}
        if self.guided:
            extra["guidance"] = batch["guidance"]
        out = model(batch["x"], batch["sigma"], **extra)
        return _mse(self.weight(batch["sigma"]), out, batch["target"])


# ----------------------------------------------------------------------------------------------
# Teacher trajectories


@torch.no_grad()
def generate_trajectories(
    teacher: Teacher,
    dataset,
    inputs: Callable,
    out_dir: str | Path,
    count: int,
    grid: int,
    w_range: tuple[float, float],
    chunk: int = 32,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> Path:
    """Solve the teacher's guided ODE (DPM-Solver++(2M), ``grid`` steps on its Karras grid) for
    ``count`` (item, noise, w) triples and store every state x(σ_k) with the end point.

    Chunk j (``traj-{j:05d}.npz``: ``x`` [K, grid, N, C] fp16, ``target`` [K, N, C], ``guidance``
    [K], and the condition arrays) holds items j·chunk …; rank r of ``world`` writes the chunks
    j ≡ r (mod world). A chunk on disk is kept (a killed run resumes where it stopped). Item i
    uses dataset item i mod len, its noise and w from ``seed + i``.

    :param inputs: the stage's ``inputs(batch) -> (x0, condition kwargs)`` (x0 gives the shape).
    :return: ``out_dir`` (with ``trajectories.json``: the σ levels and the count).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sigmas = get_sigmas_karras(grid, teacher.sigma_min, teacher.sigma_max, teacher.rho)
    meta = {"count": count, "grid": grid, "chunk": chunk, "sigmas": sigmas[:-1].tolist()}
    if rank == 0:
        write_json_atomic(out / "trajectories.json", meta)
    n_chunks = -(-count // chunk)
    todo = [j for j in range(rank, n_chunks, world) if not (out / f"traj-{j:05d}.npz").is_file()]
    for j in tqdm(todo, desc="teacher trajectories", disable=rank != 0):
        ids = list(range(j * chunk, min(count, (j + 1) * chunk)))
        items = [dataset[i % len(dataset)] for i in ids]
        batch = torch.utils.data.default_collate(items)
        x0, extra = inputs({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        gens = [torch.Generator().manual_seed(seed + i) for i in ids]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(device)
        w = torch.tensor(
            [
                w_range[0] + (w_range[1] - w_range[0]) * torch.rand(1, generator=g).item()
                for g in gens
            ],
            device=device,
        )
        states = []  # x(σ_k) before each step, from the sampler's callback
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            end = sample_dpmpp_2m(
                partial(_guided_call, teacher, w),
                noise * sigmas[0],
                sigmas.to(device),
                extra,
                callback=partial(_keep_state, states),
                disable=True,
            )
        arrays = {
            "x": torch.stack(states, 1).numpy(),  # [K, grid, N, C]
            "target": end.float().cpu().numpy(),
            "guidance": w.float().cpu().numpy(),
            **{k: v.float().cpu().numpy() for k, v in extra.items() if torch.is_tensor(v)},
        }
        with atomic_path(out / f"traj-{j:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return out


def _guided_call(teacher: Teacher, w: torch.Tensor, x, sigma, **extra) -> torch.Tensor:
    return teacher.guided(x, sigma, extra, w)


def _keep_state(states: list, info: dict) -> None:
    states.append(info["x"].detach().to(torch.float16).cpu())


class TrajectoryDataset(torch.utils.data.Dataset):
    """The states of stored teacher trajectories (``generate_trajectories``), one item per
    (trajectory, level): ``{"x", "sigma", "target", "guidance", <condition>}``; the whole
    folder is read into memory (fp16 states)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta_file = folder / "trajectories.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{folder} holds no teacher trajectories (trajectories.json)")
        meta = json.loads(meta_file.read_text())
        files = sorted(folder.glob("traj-*.npz"))
        if not files:
            raise FileNotFoundError(f"{folder}: no traj-*.npz chunks")
        parts = [dict(np.load(f)) for f in files]  # plain arrays only: no pickles
        self.arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.sigmas = np.asarray(meta["sigmas"], dtype=np.float32)
        self.levels = len(self.sigmas)

    def __len__(self) -> int:
        return len(self.arrays["target"]) * self.levels

    def set_epoch(self, epoch: int) -> None:  # items do not depend on the epoch
        pass

    def __getitem__(self, j: int) -> dict:
        k, level = divmod(int(j), self.levels)
        item = {
            "x": torch.from_numpy(self.arrays["x"][k, level].astype(np.float32)),
            "sigma": torch.tensor(self.sigmas[level]),
            "index": k,
        }
        for name, arr in self.arrays.items():
            if name != "x":
                item[name] = torch.from_numpy(np.asarray(arr[k], dtype=np.float32))
        return item


__all__ = [
    "METHODS",
    "GuidanceDistillLoss",
    "ProgressiveDistillLoss",
    "Teacher",
    "TrajectoryDataset",
    "TrajectoryLoss",
    "generate_trajectories",
    "loss_weight",
]
