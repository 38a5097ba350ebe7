"""The batches of a training run, as functions of the step count, so that a resumed run reads
and draws what the uninterrupted one did.

* **Data order** is a function of (seed, epoch): ``ResumableSampler`` gives rank r its block of
  each global batch, and ``micro_batches`` starts from the position a step count implies.
  Augmentation is a function of (seed, epoch, index): each index travels to the DataLoader
  workers together with its epoch (``EpochItems``), so one loader with persistent workers
  serves every epoch (nothing is rebuilt at an epoch boundary, and a worker's dataset copy
  never misses a ``set_epoch``).
* **Randomness** (σ, noise, condition dropout) is reseeded at every micro-step from
  (seed, step, slot) with slot = rank·grad_accum + micro (``micro_step_seed``), so one process
  with ``grad_accum = k·n`` draws what n ranks with ``grad_accum = k`` draw.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from pointdiff.config import TrainConfig
from pointdiff.training import distributed as dist
from pointdiff.training.preemption import ignore_in_worker


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Seeded per-epoch order, split across ranks in blocks, that can start mid-epoch.

    Each epoch is a permutation seeded by (seed, epoch) (several concatenated ones when the
    dataset is smaller than one global batch), cut to a whole number of global batches of
    ``block * num_replicas`` indices (the tail is dropped, differently every epoch). Global batch
    ``s`` is ``order[s*G : (s+1)*G]``; rank r takes its r-th block of ``block`` indices. With
    ``block = batch_size * grad_accum`` one rank reads, step after step, exactly the samples a
    single process with ``grad_accum * num_replicas`` micro-steps would give to micro-steps
    ``r*grad_accum …``: the ranks are disjoint, their union is the epoch, and the split does not
    depend on the rank count beyond that.

    ``set_position(epoch, start)`` resumes after ``start`` samples (global) of ``epoch``.
    """

    def __init__(
        self,
        size: int,
        num_replicas: int = 1,
        rank: int = 0,
        block: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if size <= 0 or block <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"bad sampler args size={size} block={block} rank={rank}/{num_replicas}"
            )
        self.size, self.num_replicas, self.rank, self.block = size, num_replicas, rank, block
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self) -> int:
        return self.block * self.num_replicas

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        return max(1, self.size // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of ``epoch``: [steps_per_epoch * global_batch] indices."""
        reps = -(-self.global_batch // self.size)  # datasets smaller than one global batch
        perms = [
            np.random.default_rng([self.seed, epoch, j]).permutation(self.size)
            if self.shuffle
            else np.arange(self.size)
            for j in range(reps)
        ]
        return np.concatenate(perms)[: self.steps_per_epoch * self.global_batch]

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start: int) -> None:
        """Resume at global sample ``start`` (a multiple of the global batch) of ``epoch``."""
        if start % self.global_batch or not 0 <= start <= self.steps_per_epoch * self.global_batch:
            raise ValueError(
                f"start={start} is not a whole number of global batches ({self.global_batch})"
            )
        self.epoch, self.start = epoch, start

    def __iter__(self):
        blocks = self.order(self.epoch)[self.start :].reshape(-1, self.num_replicas, self.block)
        return iter(blocks[:, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch * self.global_batch - self.start) // self.num_replicas


class EpochItems(torch.utils.data.Dataset):
    """``dataset`` indexed by (epoch, index): sets the epoch of its copy (in this process or a
    DataLoader worker) before reading, so that item i of epoch e is the same wherever it is
    read."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[i]


def _positions(sampler: ResumableSampler, epoch: int, start: int) -> Iterator[tuple[int, int]]:
    """(epoch, index) of this rank's samples from global sample ``start`` of ``epoch`` on."""
    while True:
        sampler.set_position(epoch, start)
        yield from ((epoch, i) for i in sampler)
        epoch, start = epoch + 1, 0


def resolve_workers(num_workers: int) -> int:
    """DataLoader workers per rank: ``num_workers``, or for -1 (auto) min(4, the CPUs this
    process may use shared by the ranks of its node, less one for the training process)."""
    if num_workers >= 0:
        return num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(4, (cpus or 1) // local_ranks - 1))


def micro_batches(
    dataset, sampler: ResumableSampler, cfg: TrainConfig, step: int, device: torch.device
) -> Iterator[dict]:
    """This rank's micro-batches from global step ``step`` on, epoch after epoch, on ``device``
    (sample indices stay on the CPU: reading them must not sync the GPU).

    One DataLoader (``cfg.num_workers`` persistent workers, pinned memory on CUDA) reads an
    endless stream of (epoch, index); a rank's epoch is a whole number of micro-batches, so no
    batch spans two epochs.
    """
    epoch, start = divmod(step, sampler.steps_per_epoch)
    workers = resolve_workers(cfg.num_workers)
    loader = torch.utils.data.DataLoader(
        EpochItems(dataset),
        batch_size=cfg.batch_size,
        sampler=_positions(sampler, epoch, start * sampler.global_batch),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_in_worker,  # the main process decides when to stop
    )
    dist.print0(f"data: {workers} DataLoader worker(s) per rank")
    for batch in loader:
        yield {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "index" else v
            for k, v in batch.items()
        }


def micro_step_seed(seed: int, step: int, slot: int) -> int:
    """A well-mixed 63-bit seed for (run seed, step, global micro-batch slot)."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(2, np.uint64)[0] >> 1)
