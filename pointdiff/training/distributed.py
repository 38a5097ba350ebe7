"""Process groups: torchrun-aware, one-process fallback (nanoGPT/DiT/EDM style).

``init()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, plus
``MASTER_ADDR``/``MASTER_PORT`` set by torchrun) and starts NCCL on CUDA, gloo on CPU. Without
those variables everything degrades to a single process: ``rank() == 0``, ``world_size() == 1``,
``barrier()`` is a no-op. Code that writes files does it on rank 0 (``is_main()``), then
``barrier()`` so the other ranks see the result.

Under SLURM without torchrun (``srun`` starting one task per GPU) the same variables are taken
from SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NTASKS_PER_NODE``);
``MASTER_ADDR``/``MASTER_PORT`` come from the job script.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist

_CPU_GROUP = None  # a gloo group for small host-side collectives (max_over_ranks)


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
    _env_from_slurm()
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
        global _CPU_GROUP
        _CPU_GROUP = tdist.new_group(backend="gloo") if use_cuda else None
    return dev


def _env_from_slurm() -> None:
    """torchrun's variables from SLURM's, for tasks that srun started directly (several tasks,
    ``MASTER_ADDR`` set by the job script, no torchrun variables)."""
    env = os.environ
    if "RANK" in env or "MASTER_ADDR" not in env or int(env.get("SLURM_NTASKS", 1)) < 2:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    env["LOCAL_WORLD_SIZE"] = per_node
    env.setdefault("MASTER_PORT", "29500")


def shutdown() -> None:
    global _CPU_GROUP
    if is_initialized():
        tdist.destroy_process_group()
    _CPU_GROUP = None


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


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of all ranks, computed on the CPU (gloo): no CUDA synchronisation."""
    if not is_initialized() or world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=_CPU_GROUP)
    return int(t.item())
