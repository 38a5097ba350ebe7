"""Process groups: torchrun-aware, one-process fallback (nanoGPT/DiT/EDM style).

``init()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, plus
``MASTER_ADDR``/``MASTER_PORT`` set by torchrun) and starts NCCL on CUDA, gloo on CPU. Without
those variables everything degrades to a single process: ``rank() == 0``, ``world_size() == 1``,
``barrier()`` is a no-op. Code that writes files does it on rank 0 (``is_main()``), then
``barrier()`` so the other ranks see the result.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        tdist.barrier()


def init(device: str | torch.device | None = None, timeout_s: int = 1800) -> torch.device:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    :param device: ``"cuda"``/``"cpu"``/None (None: CUDA when available). Under torchrun each
        rank takes ``cuda:LOCAL_RANK``.
    :return: the device this rank computes on.
    """
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    dev = torch.device(f"cuda:{local_rank()}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_initialized():
        tdist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": dev} if use_cuda else {}),
        )
    return dev


def shutdown() -> None:
    if is_initialized():
        tdist.destroy_process_group()


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (a list of length ``world_size()``; ``[obj]`` without a group)."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a copy; ``t`` is unchanged)."""
    t = t.detach().clone()
    if is_initialized() and world_size() > 1:
        tdist.all_reduce(t)
        t /= world_size()
    return t
