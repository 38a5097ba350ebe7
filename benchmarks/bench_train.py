"""Training throughput of the real loop (``pointdiff.training.loop.train``), fp32 vs bf16 autocast.

    .venv/bin/python benchmarks/bench_train.py                       # CPU: small + base40M, ~3 min
    .venv/bin/python benchmarks/bench_train.py --device cuda --presets base40M,upsample40M \
        --batch 64 --steps 20 --compile                              # one GPU

Each row is one subprocess (clean peak memory) running ``train`` for 2×``--steps`` steps on an
in-memory dataset of random clouds with precomputed text embeddings (a frozen text tower is
outside the step, as in training). The first ``--steps`` are warm-up; the row reports the second
half: step time, samples/s, points/s (generated points per second), peak memory (CPU: process
max RSS; CUDA: max allocated) and MFU = model FLOPs / (step time × assumed peak).

Model FLOPs per sample = 3 × forward (forward + backward ≈ 2 × forward), forward =
2·T·(weights of every Linear) + 4·depth·T²·width (QKᵀ and AV), T = tokens (points + time +
text + low-res). Assumed peaks (dense): this CPU, AMD EPYC Zen 4 with 2 cores at 2.6 GHz: fp32
2 × 2.6e9 × 32 FLOP/cycle (two 256-bit FMA pipes) = 166 GFLOP/s, bf16 (AVX512-BF16 dot
products) 2× that = 333 GFLOP/s; NVIDIA H200/H100 SXM: bf16 989 TFLOP/s, fp32 (TF32 off)
67 TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import torch
from torch import nn

from pointdiff.config import DiffusionConfig, TrainConfig, get_preset
from pointdiff.models import count_params
from pointdiff.training.loop import train
from pointdiff.training.objectives import BaseLoss, UpsamplerLoss, build_diffusion_model

PEAKS = {
    ("cpu", "fp32"): 166e9,
    ("cpu", "bf16"): 333e9,
    ("cuda", "fp32"): 67e12,
    ("cuda", "bf16"): 989e12,
}


class RandomClouds(torch.utils.data.Dataset):
    """``n`` fixed random clouds [points, 6] with random unit text embeddings (no I/O)."""

    def __init__(self, n: int, points: int, cond_dim: int):
        g = torch.Generator().manual_seed(0)
        self.points = torch.randn(n, points, 6, generator=g) * 0.5
        self.emb = nn.functional.normalize(torch.randn(n, max(cond_dim, 1), generator=g), dim=-1)
        self.cond_dim, self.captions = cond_dim, []

    def __len__(self) -> int:
        return len(self.points)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, i: int) -> dict:
        item = {"points": self.points[i], "caption": "", "index": i}
        if self.cond_dim:
            item["text_emb"] = self.emb[i]
        return item


def model_flops_per_sample(model: nn.Module, cfg) -> float:
    """Training FLOPs of one sample: 3 × (2·T·linear weights + 4·depth·T²·width)."""
    tokens = cfg.num_points + 1 + (cfg.cond_dim > 0) + getattr(cfg, "num_cond_points", 0)
    tokens += cfg.grid_tokens
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 3 * (2 * tokens * linear + 4 * cfg.depth * tokens**2 * cfg.width)


def run_one(preset: str, dtype: str, batch: int, steps: int, device: str, compile_: bool) -> dict:
    """One measurement (called in a fresh process)."""
    cfg, diffusion = get_preset(preset), DiffusionConfig()
    torch.manual_seed(0)
    model = build_diffusion_model(cfg, diffusion)
    condition = "text_emb" if cfg.cond_dim else None
    if cfg.kind == "upsampler":
        loss_fn = UpsamplerLoss(diffusion, cfg.num_cond_points, condition)
    else:
        loss_fn = BaseLoss(diffusion, condition)
    points = cfg.num_points + getattr(cfg, "num_cond_points", 0)
    data = RandomClouds(4 * batch, points, cfg.cond_dim)
    tc = TrainConfig(
        batch_size=batch,
        max_steps=2 * steps,
        warmup_steps=1,
        log_every=steps,
        ckpt_every=10**9,
        keep_checkpoints=1,
        bf16=dtype == "bf16",
        compile=compile_,
    )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run:
        train(model, loss_fn, data, tc, run, {"model": cfg}, device=device)
        logs = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    sps = logs[1]["samples_per_s"]
    if device == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flops = model_flops_per_sample(model, cfg) * sps
    return {
        "preset": preset,
        "dtype": dtype,
        "batch": batch,
        "params_M": count_params(model) / 1e6,
        "step_s": batch / sps,
        "samples_s": sps,
        "points_s": sps * cfg.num_points,
        "peak_GiB": peak_mem,
        "TFLOP_s": flops / 1e12,
        "mfu": flops / PEAKS[(device, dtype)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", default="small,base40M")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batch", type=int, default=None, help="default: 8 (small) / 2 (others) on CPU")
    p.add_argument("--steps", type=int, default=3, help="measured steps (after as many warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        preset, dtype = args.one
        print(json.dumps(run_one(preset, dtype, args.batch, args.steps, args.device, args.compile)))
        return
    print(
        f"# torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"{args.steps} measured steps after {args.steps} warm-up"
    )
    columns = ["preset", "dtype", "batch", "params (M)", "step (s)", "samples/s", "points/s"]
    head = "| " + " | ".join([*columns, "peak (GiB)", "TFLOP/s", "MFU"]) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for preset in args.presets.split(","):
        for dtype in args.dtypes.split(","):
            if args.device == "cuda" and dtype == "fp32":
                continue  # the loop always autocasts to bf16 on CUDA (TrainConfig.bf16 doc)
            batch = args.batch or (8 if preset == "small" and args.device == "cpu" else 2)
            cmd = [sys.executable, __file__, "--one", preset, dtype, "--device", args.device]
            cmd += ["--batch", str(batch), "--steps", str(args.steps)]
            cmd += ["--compile"] if args.compile else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"| {preset} | {dtype} | {batch} | failed: {out.stderr.strip()[-200:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {preset} | {dtype} | {batch} | {r['params_M']:.1f} | {r['step_s']:.3f} | "
                f"{r['samples_s']:.2f} | {r['points_s']:.0f} | {r['peak_GiB']:.2f} | "
                f"{r['TFLOP_s']:.4f} | {100 * r['mfu']:.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
