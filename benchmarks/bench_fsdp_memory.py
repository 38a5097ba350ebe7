"""Per-rank memory of weights + EMA + AdamW state under DDP and FSDP, 2 ranks on the CPU (gloo).

    .venv/bin/python benchmarks/bench_fsdp_memory.py [--preset base40M] [--nproc 2]

Each mode is one ``torchrun --nproc_per_node=N`` job that sets the model up as
``pointdiff.training.loop.train`` does (the model on the device for DDP, on the CPU until
sharded for FSDP; the EMA copy; ``fsdp.wrap``; AdamW), takes one optimizer step (batch 1, 64
points: the state sizes do not depend on them) and counts the bytes of the tensors this rank
holds: parameters (their local shards under FSDP), the EMA copy, AdamW's two moments. It also
prints the process's peak RSS (on the CPU that includes the full model every rank builds before
sharding, so the tensor count is the figure that carries over to GPU memory).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys

import torch
from torch.distributed.tensor import DTensor

from pointdiff.config import DiffusionConfig, TrainConfig, get_preset
from pointdiff.training import distributed as dist
from pointdiff.training import fsdp
from pointdiff.training.objectives import BaseLoss, build_diffusion_model
from pointdiff.training.optim import build_optimizer


def _local_bytes(tensors) -> int:
    """Bytes of what this rank holds of ``tensors`` (a DTensor's local shard)."""
    return sum(
        (t.to_local() if isinstance(t, DTensor) else t).untyped_storage().nbytes() for t in tensors
    )


def worker(preset: str, sharded: bool) -> None:
    device = dist.init("cpu")
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = build_diffusion_model(cfg, DiffusionConfig())
    model.to("cpu" if sharded else device).train()  # as the loop places it
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    wrapped = fsdp.wrap(model, ema, device, sharded)
    optimizer, _ = build_optimizer(model, TrainConfig(), device)
    batch = {"points": torch.randn(1, 64, 6), "text_emb": torch.randn(1, cfg.cond_dim)}
    BaseLoss(DiffusionConfig())(wrapped, batch).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    moments = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
    out = {
        "rank": dist.rank(),
        "weights": _local_bytes(model.parameters()),
        "ema": _local_bytes(ema.parameters()),
        "adamw": _local_bytes(moments),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print("RESULT " + json.dumps(out), flush=True)
    dist.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="base40M")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.preset, args.worker == "fsdp")
        return
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# {args.preset}, {args.nproc} ranks, gloo on the CPU (load average {load})\n")
    print("| mode | rank | weights MiB | EMA MiB | AdamW MiB | total MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = {}
    for mode in ("ddp", "fsdp"):
        cmd = [*torchrun, f"--nproc_per_node={args.nproc}", __file__, "--worker", mode]
        run = subprocess.run(
            [*cmd, "--preset", args.preset], env=env, capture_output=True, text=True
        )
        if run.returncode:
            print(f"| {mode} | failed: {run.stderr.strip()[-300:]} |")
            continue
        rows = [json.loads(x[7:]) for x in run.stdout.splitlines() if x.startswith("RESULT ")]
        for r in sorted(rows, key=lambda r: r["rank"]):
            total = r["weights"] + r["ema"] + r["adamw"]
            totals.setdefault(mode, []).append(total)
            mib = [v / 2**20 for v in (r["weights"], r["ema"], r["adamw"], total, r["peak_rss"])]
            print(f"| {mode} | {r['rank']} | " + " | ".join(f"{v:.1f}" for v in mib) + " |")
    if len(totals) == 2:
        ratio = max(totals["fsdp"]) / max(totals["ddp"])
        print(f"\nFSDP / DDP, weights + EMA + AdamW per rank: {ratio:.3f}")


if __name__ == "__main__":
    main()
