"""A training run's directory: ``config.json`` (the resolved configs), ``log.jsonl`` (one line per
logged step) and the ``ckpt-*`` checkpoints (``pointdiff.checkpoint``).

``RunDir`` writes them on rank 0, gathers sharded weights first under FSDP, and resumes a run
where its latest checkpoint left it: weights, optimizer, LR schedule, RNG states, data position
and log. Checkpoints hold bare networks (``checkpoint_modules``), so a checkpoint does not depend
on how its network was trained.

**Asynchronous writes.** ``save`` copies the state into CPU memory (every rank takes part in the
gathers; a copy costs far less than writing it) and hands the copy to one background thread on
rank 0, which writes it with ``save_checkpoint`` (a temporary directory renamed into place, then
``latest.json``), so training continues meanwhile and ``latest.json`` only ever names a complete
checkpoint. At most one write is in flight: the next ``save`` first waits for the previous one,
so at most one copy is held. ``save(..., wait=True)`` (the run's last checkpoint, or a stop on a
signal) and ``close`` wait for the write to finish. A failed write is raised by the next
``save`` on every rank (the ranks agree on it, so none waits in a collective for a rank that
raised), or by ``close``: never lost. A process killed (SIGKILL, a node failure) during a write
loses that checkpoint only; the previous one stays whole and ``latest.json`` names it.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from pointdiff.atomic import write_json_atomic, write_text_atomic
from pointdiff.checkpoint import latest_checkpoint, load_into, load_training_state, save_checkpoint
from pointdiff.config import TrainConfig, to_dict
from pointdiff.diffusion.discrete import DiscreteEpsDenoiser
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.training import distributed as dist
from pointdiff.training import fsdp
from pointdiff.training.batches import ResumableSampler
from pointdiff.training.objectives import TextConditioned
from pointdiff.training.rng import get_rng_state, set_rng_state

LOG = "log.jsonl"


class TrainError(ValueError):
    """A training run that cannot start or continue as asked (the reason is named)."""


def checkpoint_modules(model: nn.Module, ema: nn.Module) -> dict[str, nn.Module]:
    """``save_checkpoint``'s module arguments for a trained module and its EMA copy: the
    network inside a diffusion model's preconditioner (which has no weights of its own; sampling
    wraps the network again), and a jointly trained text tower with files of its own."""
    if isinstance(model, TextConditioned):
        text = {"text_encoder": model.text, "text_ema": ema.text}
        return {**checkpoint_modules(model.denoiser, ema.denoiser), **text}
    if isinstance(model, (KarrasDenoiser, DiscreteEpsDenoiser)):  # distilled point-e students
        return {"model": model.net, "ema": ema.net}
    return {"model": model, "ema": ema}


def _load_weights(ckpt: Path, model, ema, text_encoder=None, text_ema=None) -> None:
    """Load what ``save_checkpoint`` wrote from ``checkpoint_modules`` back into them."""
    load_into(model, ckpt / "model.safetensors")
    load_into(ema, ckpt / "ema.safetensors")
    if text_encoder is not None:
        load_into(text_encoder.tower, ckpt / "text.safetensors")
        load_into(text_ema.tower, ckpt / "text_ema.safetensors")


# ----------------------------------------------------------------------------------------------
# CPU copies for the background writer


def _to_cpu(obj, clone: bool):
    """``obj`` (nested dicts/lists of tensors and numbers: a state dict) with every tensor in
    CPU memory; ``clone``: copied even where it already is (a live tensor training will change)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=clone)
    if isinstance(obj, dict):
        return {k: _to_cpu(v, clone) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v, clone) for v in obj)
    return copy.deepcopy(obj)


class _Frozen:
    """What ``save_checkpoint`` reads from a module, copied to CPU memory: ``state_dict()``, and
    for a text encoder (``conditioning.text.TextEncoder``) its ``tower``, ``spec`` and ``save``."""

    def __init__(self, module: nn.Module, clone: bool):
        if hasattr(module, "tower") and hasattr(module, "spec"):  # a text encoder
            self.tower, self.spec, self._save = (
                _Frozen(module.tower, clone),
                module.spec,
                module.save,
            )
            self._state = {}
        else:
            self._state = _to_cpu(module.state_dict(), clone)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def save(self, out_dir: str | Path) -> Path:
        # TextEncoder.save reads only ``self.tower`` and ``self.spec``: run it on the copy
        return self._save.__func__(self, out_dir)


def _write_checkpoint(run_dir: Path, step: int, **kwargs) -> Path:
    """``save_checkpoint`` in the writer thread; its exception names the checkpoint."""
    try:
        return save_checkpoint(run_dir, step, **kwargs)
    except BaseException as e:
        e.add_note(f"while writing checkpoint {step} of {run_dir} in the background")
        raise


# ----------------------------------------------------------------------------------------------
# The run directory


class RunDir:
    """The files of one run (see the module doc). Create it before sharding ``model``.

    :param configs: resolved configs (``{"model": …, "train": …}``), written to ``config.json``
        and to every checkpoint.
    :param sampler: the run's data order (its position goes into each checkpoint).
    :param sharded: FSDP: gather full weights onto rank 0 before writing.
    """

    def __init__(
        self,
        path: str | Path,
        model: nn.Module,
        ema: nn.Module,
        configs: dict,
        sampler: ResumableSampler,
        cfg: TrainConfig,
        sharded: bool,
    ):
        self.path, self.configs, self.sampler = Path(path), configs, sampler
        self.keep = cfg.keep_checkpoints
        self.modules = checkpoint_modules(model, ema)
        # FSDP: shape-only copies that receive the gathered full weights at checkpoints (made
        # now: a sharded module cannot be copied)
        self.twins = {k: fsdp.meta_twin(m) for k, m in self.modules.items()} if sharded else None
        self.log_file = None
        # rank 0's checkpoint writer (one thread: one write in flight) and its latest write
        self._writer = ThreadPoolExecutor(1, "checkpoint-writer") if dist.is_main() else None
        self._pending: Future | None = None

    def resume(self, allowed: bool) -> dict | None:
        """Load the latest checkpoint's weights and this rank's RNG states (every rank reads the
        checkpoint: a shared filesystem) and return its training state (``step``, ``optimizer``,
        ``scheduler``); None for a new run.

        :param allowed: resuming was asked for; otherwise a run with checkpoints is an error.
        """
        ckpt = latest_checkpoint(self.path)
        if ckpt is None:
            return None
        if not allowed:
            raise TrainError(
                f"{self.path} already has checkpoints ({ckpt.name}); pass --resume or use a new "
                "run dir"
            )
        state = load_training_state(ckpt)
        was = state["extra"].get("global_batch"), state["extra"].get("dataset_size")
        if was != (self.sampler.global_batch, self.sampler.size):
            raise TrainError(
                f"cannot resume {ckpt} exactly: it was trained with global batch {was[0]} on "
                f"{was[1]} objects, this run has {self.sampler.global_batch} (batch_size × "
                f"grad_accum × ranks) on {self.sampler.size}"
            )
        _load_weights(ckpt, **self.modules)
        if len(state["rng"]) == dist.world_size():
            set_rng_state(state["rng"][dist.rank()])
        dist.print0(f"resumed from {ckpt} at step {state['step']}")
        return state

    def open_log(self, step: int) -> None:
        """Write ``config.json`` and open the log at ``step``, dropping lines past it (written
        by an interrupted run after its last checkpoint)."""
        if dist.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            configs = {k: v if isinstance(v, dict) else to_dict(v) for k, v in self.configs.items()}
            write_json_atomic(self.path / "config.json", configs)
            log = self.path / LOG
            if log.is_file():
                lines = [ln for ln in log.read_text().splitlines() if ln]
                kept = [ln + "\n" for ln in lines if json.loads(ln)["step"] <= step]
                write_text_atomic(log, "".join(kept))
            self.log_file = open(log, "a")  # noqa: SIM115 - closed by close()
        dist.barrier()

    def log(self, step: int, **values: float) -> None:
        """Append ``{"step", "epoch", **values}`` to the log (rank 0)."""
        if self.log_file is not None:
            epoch = (step - 1) // self.sampler.steps_per_epoch  # the epoch of step's batch
            record = {"step": step, "epoch": epoch, **values}
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def latest(self) -> Path | None:
        """The newest checkpoint (None before the first)."""
        return latest_checkpoint(self.path)

    def close(self) -> None:
        """Wait for a checkpoint still being written (raising its failure), close the log."""
        try:
            if self._writer is not None:
                error = self._wait()
                self._writer.shutdown()
                if error is not None:
                    raise error
        finally:
            if self.log_file is not None:
                self.log_file.close()

    def _wait(self) -> BaseException | None:
        """Rank 0: wait for the write in flight; its exception (None when it succeeded)."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.exception()

    def _raise_failed_write(self) -> None:
        """Collective: wait for the write in flight; if it failed, raise on every rank."""
        error = self._wait() if self._writer is not None else None
        if dist.max_over_ranks(int(error is not None)):
            raise error or RuntimeError("rank 0 failed to write a checkpoint (see its error)")

    def save(self, step: int, root: nn.Module, optimizer, scheduler, wait: bool = False) -> None:
        """Collective: copy checkpoint ``step`` to CPU memory (a sharded run gathers full
        tensors onto rank 0 first, so the files are those of an unsharded run) and write it on
        rank 0 in the background (see the module doc).

        :param root: the module ``optimizer`` updates (sharded or not).
        :param wait: return only once the checkpoint is on disk (the run's last one).
        :raises: the exception of a failed write (this one with ``wait``, else the previous one).
        """
        self._raise_failed_write()  # also: at most one write in flight
        rng = dist.all_gather_object(get_rng_state())  # RNG states of every rank
        modules, optimizer = self.modules, fsdp.gather_optimizer_state(root, optimizer)
        if self.twins is not None:
            modules = {k: fsdp.gather_module(m, self.twins[k]) for k, m in modules.items()}
        if dist.is_main():
            # live tensors are cloned; gathered ones (FSDP) are fresh CPU copies already
            clone = self.twins is None
            epoch, in_epoch = divmod(step, self.sampler.steps_per_epoch)
            position = {
                "epoch": epoch,
                "samples_in_epoch": in_epoch * self.sampler.global_batch,
                "global_batch": self.sampler.global_batch,
                "dataset_size": self.sampler.size,
                "world_size": dist.world_size(),
            }
            self._pending = self._writer.submit(
                _write_checkpoint,
                self.path,
                step,
                optimizer=_to_cpu(optimizer, clone),
                scheduler=_to_cpu(scheduler.state_dict(), True),
                configs=self.configs,
                extra=position,
                rng_states=rng,
                keep_last=self.keep,
                **{k: _Frozen(m, clone) for k, m in modules.items()},
            )
        for twin in (self.twins or {}).values():
            twin.to("meta")  # rank 0's full copies now live in the writer's copy only
        if wait:
            self._raise_failed_write()
