"""The batches of a training run, as functions of the step count, so that a resumed run reads
and draws what the uninterrupted one did.

* **Data order** is a function of (seed, epoch): ``pointdiff.data.ResumableSampler`` gives rank r
  its block of each global batch, and ``micro_batches`` starts from the position a step count
  implies. Augmentation is a function of (seed, epoch, index) (``dataset.set_epoch``).
* **Randomness** (σ, noise, condition dropout) is reseeded at every micro-step from
  (seed, step, slot) with slot = rank·grad_accum + micro (``micro_step_seed``), so one process
  with ``grad_accum = k·n`` draws what n ranks with ``grad_accum = k`` draw.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pointdiff.config import TrainConfig
from pointdiff.data import ResumableSampler


def micro_batches(
    dataset, sampler: ResumableSampler, cfg: TrainConfig, step: int, device: torch.device
) -> Iterator[dict]:
    """This rank's micro-batches from global step ``step`` on, epoch after epoch, on ``device``
    (sample indices stay on the CPU: reading them must not sync the GPU)."""
    epoch, start = divmod(step, sampler.steps_per_epoch)
    start *= sampler.global_batch
    while True:
        sampler.set_position(epoch, start)
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        for batch in loader:
            yield {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "index" else v
                for k, v in batch.items()
            }
        epoch, start = epoch + 1, 0


def micro_step_seed(seed: int, step: int, slot: int) -> int:
    """A well-mixed 63-bit seed for (run seed, step, global micro-batch slot)."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(2, np.uint64)[0] >> 1)
