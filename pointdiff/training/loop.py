"""The training loop: one function, DiT/EDM order (batch → loss → backward → clip → step → EMA →
log → checkpoint), distributed-aware (torchrun + DDP, or FSDP with ``TrainConfig.fsdp``; see
``pointdiff.training.fsdp``) and exactly resumable.

Exact resume and rank-count independence come from three rules:

* **Data order** is a pure function of (seed, epoch): ``data.ResumableSampler`` gives rank r
  its blocks of each global batch, and the position is derived from the step count.
* **Randomness** (σ, noise, conditioning dropout) is reseeded at every micro-step from
  (seed, step, slot) with slot = rank·grad_accum + micro, so one process with ``grad_accum = k·n``
  draws what n ranks with ``grad_accum = k`` draw, and a resumed run draws what the
  uninterrupted one drew. RNG states are still saved for anything outside the loop.
* **Augmentation** is a function of (seed, epoch, index) (``PointCloudDataset``).

Stages plug in through ``batch_to_inputs(batch) -> (x0, extra_args)``: the loss is then
``loss_fn(KarrasDenoiser(net, σ_data), x0, generator=…, **extra_args) -> [B]``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pointdiff.checkpoint import (
    get_rng_state,
    latest_checkpoint,
    load_into,
    load_training_state,
    save_checkpoint,
    set_rng_state,
)
from pointdiff.conditioning.text import text_condition
from pointdiff.config import DiffusionConfig, TrainConfig, to_dict
from pointdiff.data import ResumableSampler
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.pointcloud import farthest_point_sample
from pointdiff.training import distributed as dist
from pointdiff.training import fsdp


class TrainError(ValueError):
    """A training run that cannot start or continue as asked (the reason is named)."""


# ----------------------------------------------------------------------------------------------
# Stage hooks: batch -> (x0, extra_args)


def denoiser_inputs(batch: dict) -> tuple[torch.Tensor, dict]:
    """Base model: x0 = the cloud [B, N, 6]; condition ``text_emb`` [B, D] (or [B, 1+T, D]
    for ``text_tokens`` models) when present."""
    extra = {"text_emb": batch["text_emb"]} if "text_emb" in batch else {}
    return batch["points"], extra


def upsampler_inputs(batch: dict, num_cond_points: int) -> tuple[torch.Tensor, dict]:
    """Upsampler: the training cloud [B, M+N, 6] is split into its farthest-point subset of
    M points (``low_res``, what a base model generates: FPS keeps the coverage of a 1024-point
    cloud) and the remaining N points, which are the denoising target x0 [B, N, 6]. Final
    cloud = low_res ∪ new points, as point-e's upsampler (1024 + 3072 = 4096)."""
    points = batch["points"]
    b, n, c = points.shape
    idx = farthest_point_sample(points, num_cond_points)  # [B, M], FPS from point 0
    keep = torch.ones(b, n, dtype=torch.bool, device=points.device).scatter_(1, idx, False)
    low_res = torch.gather(points, 1, idx[..., None].expand(-1, -1, c))
    extra = {"low_res": low_res}
    if "text_emb" in batch:
        extra["text_emb"] = batch["text_emb"]
    return points[keep].view(b, n - num_cond_points, c), extra


def batch_to_inputs_for(model_cfg) -> Callable[[dict], tuple[torch.Tensor, dict]]:
    """The stage hook for a model config (by ``kind``)."""
    hooks = {
        "denoiser": lambda cfg: denoiser_inputs,
        "upsampler": lambda cfg: partial(upsampler_inputs, num_cond_points=cfg.num_cond_points),
    }
    if model_cfg.kind not in hooks:
        raise TrainError(f"no batch_to_inputs hook for {model_cfg.kind!r}; pass one to train()")
    return hooks[model_cfg.kind](model_cfg)


# ----------------------------------------------------------------------------------------------
# Pieces of the loop


class _Objective(nn.Module):
    """Everything a micro-step differentiates (net + trainable text tower) in one module, so a
    single DDP wrapper (or FSDP root) synchronises all gradients.
    ``forward(batch) -> per-example loss [B]``."""

    def __init__(self, net, text_encoder, loss_fn, sigma_data, batch_to_inputs):
        super().__init__()
        self.net, self.text = net, text_encoder
        self.loss_fn, self.sigma_data, self.batch_to_inputs = loss_fn, sigma_data, batch_to_inputs

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x0, extra = self.batch_to_inputs(batch)
        if self.text is not None:  # trainable tower: embeddings with a graph, per batch
            extra["text_emb"] = self.text.embed(batch["caption"])
        denoiser = KarrasDenoiser(self.net, self.sigma_data)
        return self.loss_fn(denoiser, x0, generator=generator, **extra)


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1-decay)·model over matched named parameters; buffers are copied."""
    ema_params, params = dict(ema.named_parameters()), dict(model.named_parameters())
    assert ema_params.keys() == params.keys(), "EMA and model parameters differ"
    names = list(params)
    torch._foreach_lerp_(
        [ema_params[k] for k in names], [params[k].detach() for k in names], 1 - decay
    )
    for (name, b_ema), (_, b) in zip(ema.named_buffers(), model.named_buffers(), strict=True):
        assert name == _, "EMA and model buffers differ"
        b_ema.copy_(b)


def _step_seed(seed: int, step: int, slot: int) -> int:
    """A well-mixed 63-bit seed for (run seed, step, global micro-batch slot)."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(2, np.uint64)[0] >> 1)


def _batches(dataset, sampler: ResumableSampler, cfg: TrainConfig, step: int, device) -> Iterator:
    """This rank's micro-batches from global step ``step`` on, epoch after epoch."""
    epoch, start = divmod(step, sampler.steps_per_epoch)
    start *= sampler.global_batch
    while True:
        sampler.set_position(epoch, start)
        dataset.set_epoch(epoch)  # augmentation randomness = f(seed, epoch, index)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        for batch in loader:
            # sample indices stay on the CPU (bookkeeping; reading them must not sync the GPU)
            yield {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "index" else v
                for k, v in batch.items()
            }
        epoch, start = epoch + 1, 0


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (nanoGPT): not on biases, norms or scalars."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _save(run_dir, step, modules, emas, optimizer, scheduler, configs, position, cfg, twins, root):
    """Rank 0 writes a checkpoint while the others wait. A sharded run first gathers full CPU
    tensors onto rank 0 (``twins``: meta copies of ``modules + emas``; every rank takes part),
    so the files are those of an unsharded run."""
    rng = dist.all_gather_object(get_rng_state())  # RNG states of every rank
    if twins is not None:
        full = [fsdp.gather_module(m, t) for m, t in zip(modules + emas, twins, strict=True)]
        modules, emas = full[: len(modules)], full[len(modules) :]
        optimizer = fsdp.StateDictOf(fsdp.gather_optimizer_state(root, optimizer))
    saved = None
    if dist.is_main():
        saved = save_checkpoint(
            run_dir, step, modules[0], emas[0], optimizer, scheduler, configs, position,
            text_encoder=modules[1] if len(modules) > 1 else None,
            text_ema=emas[1] if len(emas) > 1 else None,
            rng_states=rng, keep_last=cfg.keep_checkpoints,
        )  # fmt: skip
    for twin in twins or []:
        twin.to("meta")  # drop rank 0's full copies until the next checkpoint
    dist.barrier()
    return saved


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by an interrupted run after its last checkpoint)."""
    if path.is_file():
        lines = [
            ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        path.write_text("".join(ln + "\n" for ln in lines))


# ----------------------------------------------------------------------------------------------
# The loop


def train(
    run_dir: str | Path,
    model: nn.Module,
    loss_fn: Callable,
    dataset,
    train_cfg: TrainConfig,
    configs: dict,
    text_encoder: nn.Module | None = None,
    resume: bool = False,
    batch_to_inputs: Callable[[dict], tuple[torch.Tensor, dict]] | None = None,
    device: str | torch.device | None = None,
    stop_at: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` (a ``PointCloudDataset``-like map dataset); see module doc.

    :param configs: resolved configs, at least ``{"model": …}`` (+ ``"diffusion"``, ``"text"``);
        written with every checkpoint. ``"train"`` is set to ``train_cfg``.
    :param text_encoder: a ``TextEncoder``. Frozen: one embedding per caption, computed once
        (``dataset.set_text_embeddings``). Trainable: optimised jointly, embedded per batch.
    :param resume: continue from ``run_dir``'s latest checkpoint (step, LR, data order, RNG).
    :param stop_at: stop (with a checkpoint) after this step although the LR schedule runs to
        ``max_steps`` (time-limited jobs); resume later.
    :param callback: ``callback(step, info)`` on every rank after each optimizer step;
        ``info`` has this rank's sample ``indices`` and its ``loss``.
    :return: ``{"step", "loss", "checkpoint"}`` (loss: last logged, mean over ranks).
    """
    cfg, run_dir = train_cfg, Path(run_dir)
    device = dist.init(device)
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    configs = {**configs, "train": cfg}
    sigma_data = configs.get("diffusion", DiffusionConfig()).sigma_data
    batch_to_inputs = batch_to_inputs or batch_to_inputs_for(configs["model"])

    # --- model, text, EMA
    model.to(device).train()
    text_trainable = text_encoder is not None and text_encoder.trainable
    if text_encoder is not None:
        text_encoder.to(device)
        if not text_trainable:  # frozen: each caption once, outside the graph
            captions = dataset.captions
            tokens = getattr(configs["model"], "text_tokens", 0)
            table = text_condition(text_encoder, captions, tokens).cpu()
            dataset.set_text_embeddings(dict(zip(captions, table, strict=True)))
    modules = [model, text_encoder] if text_trainable else [model]
    sharded = cfg.fsdp and world > 1  # one process: nothing to shard
    for m in modules if sharded else []:
        fsdp.broadcast_from_rank0(m)  # DDP does this itself
    emas = [copy.deepcopy(m).requires_grad_(False).eval() for m in modules]
    # FSDP: shape-only copies that receive the gathered full weights at checkpoints
    twins = [fsdp.meta_twin(m) for m in modules + emas] if sharded else None
    sampler = ResumableSampler(
        len(dataset), world, rank, block=cfg.batch_size * cfg.grad_accum, seed=cfg.seed
    )

    # --- resume weights (every rank reads the checkpoint: shared filesystem; before sharding)
    step, state, ckpt = 0, None, latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise TrainError(
            f"{run_dir} already has checkpoints ({ckpt.name}); pass --resume or use a new run dir"
        )
    if resume and ckpt is not None:
        state = load_training_state(ckpt)
        extra = state["extra"]
        if (extra.get("global_batch"), extra.get("dataset_size")) != (
            sampler.global_batch,
            len(dataset),
        ):
            raise TrainError(
                f"cannot resume {ckpt} exactly: it was trained with global batch "
                f"{extra.get('global_batch')} on {extra.get('dataset_size')} objects, this run has "
                f"{sampler.global_batch} (batch_size × grad_accum × ranks) on {len(dataset)}"
            )
        load_into(model, ckpt / "model.safetensors")
        load_into(emas[0], ckpt / "ema.safetensors")
        if text_trainable:
            load_into(text_encoder.tower, ckpt / "text.safetensors")
            load_into(emas[1].tower, ckpt / "text_ema.safetensors")
        step = state["step"]
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])

    # --- wrap (DDP / FSDP), then optimizer and LR schedule over the (possibly sharded) params
    objective = _Objective(
        torch.compile(model) if cfg.compile else model,
        text_encoder if text_trainable else None,
        loss_fn,
        sigma_data,
        batch_to_inputs,
    )
    wrapped = fsdp.wrap(objective, modules, emas, device, sharded)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        _param_groups(modules, cfg.weight_decay),
        lr=cfg.lr,
        betas=cfg.betas,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            lr_factor, warmup=cfg.warmup_steps, max_steps=cfg.max_steps, min_ratio=cfg.min_lr_ratio
        ),
    )
    if state is not None:  # the optimizer state is unsharded on disk; FSDP keeps its shard
        if sharded:
            fsdp.load_optimizer_state(objective, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        dist.print0(f"resumed from {ckpt} at step {step}")
    log_path = run_dir / "log.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {k: to_dict(v) if not isinstance(v, dict) else v for k, v in configs.items()}
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
        _truncate_log(log_path, step)
    dist.barrier()
    log_file = open(log_path, "a") if main else None  # noqa: SIM115 - closed below
    # bf16 autocast: always on CUDA, on CPU when asked (TrainConfig.bf16)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cfg.bf16
    )
    data = _batches(dataset, sampler, cfg, step, device)
    end = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not main, dynamic_ncols=True)
    timer, steps_timed, last_loss, saved = time.perf_counter(), 0, None, ckpt
    running = torch.zeros((), device=device)  # summed step losses since the last log

    try:
        while step < end:
            # --- batch -> loss -> backward (grad_accum micro-steps; gradients are reduced
            # across ranks on the last one only: DDP all-reduce / FSDP reduce-scatter)
            loss_sum, indices = torch.zeros((), device=device), []
            for micro in range(cfg.grad_accum):
                batch = next(data)
                indices += batch["index"].tolist() if "index" in batch else []
                seed = _step_seed(cfg.seed, step, rank * cfg.grad_accum + micro)
                torch.manual_seed(seed)  # model-internal randomness (condition dropout)
                generator = torch.Generator(device).manual_seed(seed)  # σ and noise
                sync = world == 1 or micro == cfg.grad_accum - 1
                with nullcontext() if sync else fsdp.no_grad_sync(wrapped):
                    with autocast:
                        loss = wrapped(batch, generator).float().mean() / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            running += loss_sum

            # --- clip -> step -> EMA (FSDP: the norm of sharded grads is all-reduced, a DTensor)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            )
            grad_norm = fsdp.to_local_scalar(grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warmup for short runs
            for ema, m in zip(emas, modules, strict=True):
                update_ema(ema, m, decay)
            steps_timed += 1
            if callback is not None:
                callback(step, {"indices": indices, "loss": loss_sum.item()})

            # --- log the mean loss since the last log (all ranks all-reduce; rank 0 writes)
            if step % cfg.log_every == 0 or step == end:
                last_loss = dist.all_reduce_mean(running / steps_timed).item()
                running.zero_()
                if not math.isfinite(last_loss):
                    raise FloatingPointError(
                        f"loss is {last_loss} at step {step}; lower lr or check data"
                    )
                now = time.perf_counter()
                rec = {
                    "step": step,
                    "epoch": (step - 1) // sampler.steps_per_epoch,
                    "loss": last_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "samples_per_s": sampler.global_batch * steps_timed / (now - timer),
                }
                timer, steps_timed = now, 0
                if main:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)

            # --- checkpoint (rank 0 writes full tensors, the others wait)
            if step % cfg.ckpt_every == 0 or step == end:
                epoch, in_epoch = divmod(step, sampler.steps_per_epoch)
                position = {"epoch": epoch, "samples_in_epoch": in_epoch * sampler.global_batch,
                            "global_batch": sampler.global_batch, "dataset_size": len(dataset),
                            "world_size": world}  # fmt: skip
                saved = _save(run_dir, step, modules, emas, optimizer, scheduler, configs,
                              position, cfg, twins, objective) or saved  # fmt: skip
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    return {"step": step, "loss": last_loss, "checkpoint": latest_checkpoint(run_dir) or saved}
