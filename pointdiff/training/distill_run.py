"""A distillation run from the command line (``train/distill.py``): a teacher checkpoint (a
pointdiff base or upsampler, a distilled student, or a converted point-e model) → its frozen
denoiser and a student built from it → the method's loss (``training.distill``) → the ordinary
training loop (``training.loop.train``: DDP/FSDP, resume, preemption as every run).

The student is the teacher's network with the guidance scale as an input (``guidance_embed``,
zero-initialised: it starts as the teacher's conditional model) and no condition dropout; an
unguided stage (point-e's text upsampler) keeps its inputs. Its checkpoints carry a
``SampleConfig`` for the sampler it was made for, so ``pointdiff sample`` runs it as it runs the
teacher: ``guidance`` keeps the teacher's sampler; ``progressive`` samples with DDIM (Euler) on
its nested grid; ``trajectory`` with ``sample_consistency``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import torch

from pointdiff.checkpoint import load_model
from pointdiff.config import (
    DiffusionConfig,
    DistillConfig,
    SampleConfig,
    TextConfig,
    TrainConfig,
)
from pointdiff.data import PointCloudDataset
from pointdiff.diffusion.discrete import ALPHAS_CUMPROD, POINTE_SIGMAS, DiscreteEpsDenoiser
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.models import build_model, count_params
from pointdiff.training import distributed as dist
from pointdiff.training.distill import (
    METHODS,
    GuidanceDistillLoss,
    ProgressiveDistillLoss,
    Teacher,
    TrajectoryDataset,
    TrajectoryLoss,
    generate_trajectories,
    loss_weight,
)
from pointdiff.training.objectives import BaseLoss, UpsamplerLoss
from pointdiff.training.pointe_objective import pointe_info
from pointdiff.training.preemption import run_script
from pointdiff.training.run import add_run_args, build_text, route_overrides, train_run
from pointdiff.training.text_cache import cache_dir_for, set_text_table

#: point-e's text models read CLIP ViT-L/14 text vectors
POINTE_TEXT = "clip:ViT-L-14:openai"


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="distill.py",
        description="Distil a few-call student from a diffusion teacher (base or upsampler, "
        "pointdiff or converted point-e): --method guidance (the guidance scale becomes an "
        "input: one call replaces the guided pair), then progressive (halve the steps; repeat "
        "with the last student as teacher) or trajectory (the student predicts where the "
        "teacher's ODE trajectory ends, from any point on it). Launch with torchrun for "
        "several GPUs. Extra --key=value arguments override TrainConfig/DistillConfig fields.",
    )
    p.add_argument("--teacher", required=True, help="teacher model directory, checkpoint or run")
    p.add_argument("--method", required=True, choices=METHODS)
    add_run_args(p)
    p.add_argument(
        "--trajectory-dir",
        default=None,
        metavar="DIR",
        help="trajectory: where the teacher trajectories are stored (default RUN_DIR/trajectories;"
        " chunks already there are kept)",
    )
    p.add_argument("--split", default="train", help="shard split to train on ('all' = every one)")
    p.add_argument(
        "--num-points",
        type=int,
        default=None,
        help="points per training cloud (default: the teacher's; fewer is cheaper and, for a "
        "permutation-equivariant model, still teaches the full count)",
    )
    p.add_argument(
        "--text",
        default=None,
        help="the teacher's frozen text encoder (default: the one its config names; point-e: "
        f"{POINTE_TEXT})",
    )
    p.add_argument("--clip-weights", default=None, help="local weights file of the CLIP tag")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    return p.parse_known_args(argv)


def load_teacher(path: str | Path, device) -> tuple[Teacher, torch.nn.Module, dict, dict | None]:
    """(Teacher, its network, its configs, its point-e record or None)."""
    net, configs = load_model(path)
    net.to(device).eval().requires_grad_(False)
    cfg = configs["model"]
    if cfg.kind not in ("denoiser", "upsampler"):
        raise ValueError(f"--teacher {path} holds a {cfg.kind}; distil a denoiser or upsampler")
    if cfg.kind == "denoiser" and cfg.grid_tokens > 0:
        raise ValueError(
            f"--teacher {path} is an image-grid model: distilling it needs CLIP image grids in "
            "the data, which the shards do not hold; distil a text model (base40M-textvec)"
        )
    info = pointe_info(path)
    if info is not None:
        denoiser = DiscreteEpsDenoiser(net, ALPHAS_CUMPROD[info["schedule"]]())
        grid = POINTE_SIGMAS[info["schedule"]]
    else:
        dcfg = configs.get("diffusion", DiffusionConfig())
        denoiser = KarrasDenoiser(net, dcfg.sigma_data)
        grid = (dcfg.sigma_min, dcfg.sigma_max, dcfg.rho)
    # an upsampler with image-grid tokens is point-e's: in the text pipeline they stay zero and
    # it takes no prompt, as here
    cond_key = "text_emb" if cfg.cond_dim > 0 else None
    clamp = configs.get("sample", SampleConfig()).clip_denoised
    teacher = Teacher(denoiser, cond_key, getattr(cfg, "guidance_embed", False), *grid, clamp)
    return teacher, net, configs, info


def student_sample(teacher_sample: SampleConfig, dcfg: DistillConfig) -> SampleConfig:
    """The sampler settings a student is made for (see the module doc)."""
    if dcfg.method == "guidance":
        return teacher_sample
    sampler = "euler" if dcfg.method == "progressive" else "consistency"
    return dataclasses.replace(
        teacher_sample, sampler=sampler, steps=dcfg.steps, grid=dcfg.grid, s_churn=0.0
    )


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse(argv)
    configs = route_overrides({"train": TrainConfig(), "distill": DistillConfig()}, overrides)
    train_cfg, dcfg = configs["train"], configs["distill"]
    if dcfg.method != args.method:  # --method is the one place that says it
        dcfg = configs["distill"] = dataclasses.replace(dcfg, method=args.method)
    if dcfg.grid % dcfg.steps or (args.method == "progressive" and dcfg.grid % (2 * dcfg.steps)):
        raise ValueError(
            f"--grid={dcfg.grid} must be a multiple of --steps={dcfg.steps}"
            + (" × 2 (the teacher's steps)" * (args.method == "progressive"))
        )
    device = dist.init(args.device)
    teacher, teacher_net, tconfigs, pointe = load_teacher(args.teacher, device)
    tcfg = tconfigs["model"]
    if args.method != "guidance" and teacher.cond_key is not None and not teacher.takes_guidance:
        dist.print0(
            f"note: {args.teacher} takes no guidance input: its guided pair is the target here; "
            "distil guidance first (--method guidance) to halve this run's teacher calls"
        )
    guided = teacher.cond_key is not None
    model_cfg = dataclasses.replace(tcfg, cond_drop_prob=0.0, guidance_embed=guided)
    configs = {"model": model_cfg, **configs}
    if "diffusion" in tconfigs:
        configs["diffusion"] = tconfigs["diffusion"]
    configs["sample"] = student_sample(tconfigs.get("sample", SampleConfig()), dcfg)

    # the teacher's condition: its text encoder embeds the captions once (cached beside the run)
    spec = args.text
    text_cfg = tconfigs.get("text")
    if spec is None and text_cfg is None and tcfg.cond_dim > 0:
        spec = POINTE_TEXT if pointe else None
        if spec is None:
            raise ValueError(f"{args.teacher}: its config names no text encoder; pass --text")
    if spec is not None:
        text, text_cfg = build_text(spec, args.clip_weights, True, freeze=True)
    elif text_cfg is not None:
        text = _text_encoder(text_cfg, args.clip_weights)
    else:
        text = None
    if text_cfg is not None:
        configs["text"] = text_cfg
    is_up = tcfg.kind == "upsampler"
    dataset = PointCloudDataset(
        args.data,
        split=None if args.split == "all" else args.split,
        num_points=(args.num_points or tcfg.num_points) + getattr(tcfg, "num_cond_points", 0),
        augment=False,
        seed=train_cfg.seed,
    )
    condition = None
    if text is not None and tcfg.cond_dim > 0:
        cache = cache_dir_for(args.data, args.run_dir)
        set_text_table(dataset, text, getattr(tcfg, "text_tokens", 0), cache, device)
        condition = "text_emb"
    diff_cfg = configs.get("diffusion", DiffusionConfig())
    stage = (
        UpsamplerLoss(diff_cfg, tcfg.num_cond_points, condition)
        if is_up
        else BaseLoss(diff_cfg, condition)
    )

    student = _build_student(model_cfg, teacher, teacher_net)
    weight = lambda sigma: loss_weight(student, sigma)  # noqa: E731 - the student's wrapper
    w_range = (dcfg.guidance_min, dcfg.guidance_max)
    dist.print0(
        f"distil {args.method}: student {count_params(student) / 1e6:.2f} M params from "
        f"{args.teacher}; {len(dataset)} objects"
    )
    if args.method == "guidance":
        if not guided:
            raise ValueError(f"{args.teacher} takes no prompt: there is no guidance to distil")
        loss_fn, data = GuidanceDistillLoss(teacher, stage.inputs, weight, w_range), dataset
    elif args.method == "progressive":
        loss_fn = ProgressiveDistillLoss(
            teacher, stage.inputs, weight, w_range, dcfg.steps, dcfg.grid
        )
        data = dataset
    else:
        folder = Path(args.trajectory_dir or Path(args.run_dir) / "trajectories")
        generate_trajectories(
            teacher,
            dataset,
            stage.inputs,
            folder,
            dcfg.trajectories,
            dcfg.grid,
            w_range,
            seed=train_cfg.seed,
            rank=dist.rank(),
            world=dist.world_size(),
            device=device,
            bf16=train_cfg.bf16 or device.type == "cuda",
        )
        dist.barrier()
        loss_fn, data = TrajectoryLoss(weight, guided), TrajectoryDataset(folder)
    return train_run(args, student, loss_fn, data, configs, device, pointe)


def _text_encoder(cfg: TextConfig, clip_weights):
    from pointdiff.conditioning.text_loading import build_text_encoder

    return build_text_encoder(cfg, None, clip_weights, True).eval()


def _build_student(model_cfg, teacher: Teacher, teacher_net) -> torch.nn.Module:
    """The teacher's network (its loaded EMA weights; the guidance layers of a new student keep
    their zero init) with ``model_cfg``, in the teacher's wrapper."""
    net = build_model(model_cfg)
    state = net.state_dict()
    state.update({k: v.float() for k, v in teacher_net.state_dict().items()})
    net.load_state_dict(state)
    inner = teacher.denoiser
    if isinstance(inner, DiscreteEpsDenoiser):
        return DiscreteEpsDenoiser(net, inner.alphas_cumprod)
    return KarrasDenoiser(net, inner.sigma_data)


def cli(argv: list[str] | None = None) -> None:
    """``main`` for the script: bad input ends with one error line; a run stopped by
    SIGTERM/SIGUSR1 (after its checkpoint) exits with ``REQUEUE_EXIT_CODE``."""
    run_script("distill.py", functools.partial(main, argv))


__all__ = ["cli", "load_teacher", "main", "student_sample"]
