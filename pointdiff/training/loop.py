"""The training loop: one function, in DiT/EDM order (batch → loss → backward → clip → step →
EMA → log → checkpoint), distributed-aware (torchrun + DDP, or FSDP) and exactly resumable.

It knows no stages: ``loss_fn(model, batch) -> [B]`` (``training.objectives``, ``training.sdf``)
decides what a batch means. A resumed run equals an uninterrupted one, on any number of ranks:
data order and randomness are functions of the step count (``training.batches``), and a
checkpoint holds the rest (``training.run_dir``). On SIGTERM/SIGUSR1 every rank finishes its
step, a checkpoint is written and the loop returns (``training.preemption``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pointdiff.config import TrainConfig
from pointdiff.training import distributed as dist
from pointdiff.training import fsdp
from pointdiff.training.batches import ResumableSampler, micro_batches, micro_step_seed
from pointdiff.training.optim import build_optimizer, ema_decay, update_ema
from pointdiff.training.preemption import StopSignal
from pointdiff.training.run_dir import RunDir


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    data: torch.utils.data.Dataset,
    cfg: TrainConfig,
    run_dir: str | Path,
    configs: dict | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    stop_at: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``model`` to minimise ``loss_fn(model, batch).mean()`` over ``data``.

    :param data: a map dataset of dict items with ``set_epoch(epoch)`` (``PointCloudDataset``).
    :param configs: resolved configs to record (at least ``{"model": …}``); ``"train"`` = ``cfg``.
    :param resume: continue from ``run_dir``'s latest checkpoint (step, LR, data order, RNG).
    :param stop_at: stop (with a checkpoint) after this step although the LR schedule runs to
        ``max_steps`` (time-limited jobs); resume later.
    :param callback: ``callback(step, info)`` on every rank after each optimizer step;
        ``info`` has this rank's sample ``indices`` and its ``loss``.
    :return: ``{"step", "loss", "checkpoint", "stopped"}`` (loss: last logged, mean over
        ranks; stopped: the signal that ended the run early, e.g. ``"SIGTERM"``, else None).
    """
    device = dist.init(device)
    rank, world = dist.rank(), dist.world_size()
    block = cfg.batch_size * cfg.grad_accum  # this rank's samples per optimizer step
    sampler = ResumableSampler(len(data), world, rank, block=block, seed=cfg.seed)

    # --- model and EMA; the run directory; resume (before sharding: weights are full on disk).
    # FSDP: both stay on the CPU until sharded, so no GPU ever holds them in full
    sharded = cfg.fsdp and world > 1  # one process: nothing to shard
    model.to("cpu" if sharded else device).train()
    if cfg.grad_checkpointing:
        fsdp.set_grad_checkpointing(model)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    run = RunDir(run_dir, model, ema, {**(configs or {}), "train": cfg}, sampler, cfg, sharded)
    state = run.resume(allowed=resume)
    step = state["step"] if state is not None else 0

    # --- wrap (DDP / FSDP), then optimizer and LR schedule over the (possibly sharded) params
    wrapped = fsdp.wrap(model, ema, device, sharded)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    optimizer, scheduler = build_optimizer(model, cfg, device)
    if state is not None:  # the optimizer state is unsharded on disk; FSDP keeps its shard
        fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    run.open_log(step)
    bf16 = device.type == "cuda" or cfg.bf16  # autocast: always on CUDA, on CPU when asked
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    batches = micro_batches(data, sampler, cfg, step, device)
    end = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not dist.is_main(), dynamic_ncols=True)
    timer, steps_timed, last_loss, stopped = time.perf_counter(), 0, None, None
    running = torch.zeros((), device=device)  # summed step losses since the last log

    stop = StopSignal()  # SIGTERM/SIGUSR1: recorded, acted on after the step

    try:
        stop.install()
        while step < end:
            # --- batch -> loss -> backward (grad_accum micro-steps; gradients are reduced
            # across ranks on the last one only: DDP all-reduce / FSDP reduce-scatter)
            loss_sum, indices = torch.zeros((), device=device), []
            for micro in range(cfg.grad_accum):
                batch = next(batches)
                indices += batch["index"].tolist() if "index" in batch else []
                # σ, noise and condition dropout: a function of (seed, step, slot), see batches
                torch.manual_seed(micro_step_seed(cfg.seed, step, rank * cfg.grad_accum + micro))
                last = micro == cfg.grad_accum - 1
                with nullcontext() if last else fsdp.no_grad_sync(wrapped):
                    with autocast:
                        loss = loss_fn(forward, batch).float().mean() / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            running += loss_sum

            # --- clip -> step -> EMA (FSDP: the norm of sharded grads is all-reduced, a DTensor)
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = fsdp.to_local_scalar(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            update_ema(ema, model, ema_decay(step, cfg.ema_decay))
            steps_timed += 1
            if callback is not None:
                callback(step, {"indices": indices, "loss": loss_sum.item()})
            stopped = stop.requested()  # the ranks agree: all stop after this same step

            # --- log the mean loss since the last log (all ranks all-reduce; rank 0 writes)
            if step % cfg.log_every == 0 or step == end or stopped:
                last_loss = dist.all_reduce_mean(running / steps_timed).item()
                running.zero_()
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss {last_loss} at step {step}: lower lr?")
                now = time.perf_counter()
                rate = sampler.global_batch * steps_timed / (now - timer)  # samples per second
                run.log(step, loss=last_loss, lr=lr, grad_norm=float(grad_norm), samples_per_s=rate)
                timer, steps_timed = now, 0
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)

            # --- checkpoint (copied to CPU memory now, written by a background thread on rank 0;
            # the last one is waited for)
            if step % cfg.ckpt_every == 0 or step == end or stopped:
                run.save(step, model, optimizer, scheduler, wait=step == end or bool(stopped))
            if stopped:
                dist.print0(f"{stopped}: stopped after step {step} (checkpoint written); --resume")
                break
    finally:
        try:
            # wait for a checkpoint still being written while a SIGTERM is only recorded: a
            # failed rank makes torchrun SIGTERM the others, and the write in flight must land
            run.close()
        finally:
            stop.restore()
            batches.close()  # shuts the DataLoader workers down
            bar.close()
    return {"step": step, "loss": last_loss, "checkpoint": run.latest(), "stopped": stopped}
