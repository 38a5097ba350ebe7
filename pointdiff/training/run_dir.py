"""A training run's directory: ``config.json`` (the resolved configs), ``log.jsonl`` (one line per
logged step) and the ``ckpt-*`` checkpoints (``pointdiff.checkpoint``).

``RunDir`` writes them on rank 0 while the other ranks wait, gathers sharded weights first under
FSDP, and resumes a run where its latest checkpoint left it: weights, optimizer, LR schedule, RNG
states, data position and log. Checkpoints hold bare networks (``checkpoint_modules``), so a
checkpoint does not depend on how its network was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

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
        if self.log_file is not None:
            self.log_file.close()

    def save(self, step: int, root: nn.Module, optimizer, scheduler) -> None:
        """Collective: write checkpoint ``step`` on rank 0 while the others wait. A sharded run
        first gathers full CPU tensors onto rank 0 (every rank takes part), so the files are
        those of an unsharded run.

        :param root: the module ``optimizer`` updates (sharded or not).
        """
        rng = dist.all_gather_object(get_rng_state())  # RNG states of every rank
        modules, optimizer = self.modules, fsdp.gather_optimizer_state(root, optimizer)
        if self.twins is not None:
            modules = {k: fsdp.gather_module(m, self.twins[k]) for k, m in modules.items()}
        if dist.is_main():
            epoch, in_epoch = divmod(step, self.sampler.steps_per_epoch)
            position = {
                "epoch": epoch,
                "samples_in_epoch": in_epoch * self.sampler.global_batch,
                "global_batch": self.sampler.global_batch,
                "dataset_size": self.sampler.size,
                "world_size": dist.world_size(),
            }
            save_checkpoint(
                self.path,
                step,
                optimizer=optimizer,
                scheduler=scheduler,
                configs=self.configs,
                extra=position,
                rng_states=rng,
                keep_last=self.keep,
                **modules,
            )
        for twin in (self.twins or {}).values():
            twin.to("meta")  # drop rank 0's full copies until the next checkpoint
        dist.barrier()
