"""Distributed training on CPU (gloo): ``torchrun --nproc_per_node=2`` against one process.

One 2-rank job (per-rank batch 2, global batch 4) is killed by rank 1 after step 5 (its last
checkpoint is step 4) and resumed; a single process with grad_accum=2 (same global batch) is
the reference. Tolerance for "matches": float reduction order differs ((a+b)/2 across ranks vs
a/2 + b/2 accumulated), so losses agree to rtol 1e-4 and weights to atol 1e-5 after 6 steps.
A second pair of 2-rank jobs compares FSDP (``TrainConfig.fsdp``) with DDP and resumes an FSDP
checkpoint under both. A third job is stopped by a SIGTERM sent to one rank from outside (a
scheduler's preemption) and resumed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pointdiff.data import write_shards
from pointdiff.training.batches import ResumableSampler

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test runs several 2-process jobs (~1 min each on 2 cores)

WORKER = r"""
import json, os, sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
from pointdiff.training import distributed as dist
from pointdiff.config import DiffusionConfig, TextConfig, TrainConfig, get_preset
from pointdiff.data import PointCloudDataset
from pointdiff.conditioning.text_loading import build_text_encoder
from pointdiff.training.loop import train
from pointdiff.training.objectives import BaseLoss, TextConditioned, build_diffusion_model
from pointdiff.training import run_dir

write, write_sleep = run_dir._write_checkpoint, float(os.environ.get("WRITE_SLEEP", 0))
def slow_write(*args, **kwargs):  # a slow disk: the background write is still going on
    time.sleep(write_sleep)
    return write(*args, **kwargs)
run_dir._write_checkpoint = slow_write

shards, run, out, batch, accum, kill_at, resume = sys.argv[1:8]
fsdp = sys.argv[8:] == ["fsdp"]
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = get_preset("tiny")
net = build_diffusion_model(cfg, DiffusionConfig())
text = build_text_encoder(TextConfig(arch="tiny", trainable=True), seed=0)
model = TextConditioned(net, text)
ds = PointCloudDataset(shards, num_points=64, subsample="random", augment=True)
steps, sleep = int(os.environ.get("MAX_STEPS", 6)), float(os.environ.get("STEP_SLEEP", 0))
tc = TrainConfig(batch_size=int(batch), grad_accum=int(accum), lr=1e-3, warmup_steps=2,
                 max_steps=steps, log_every=1, ckpt_every=2, ema_decay=0.9, fsdp=fsdp,
                 grad_checkpointing=os.environ.get("GRAD_CKPT") == "1")
rank = dist.rank()
seen = open(Path(out) / f"seen-rank{rank}.jsonl", "a")
(Path(out) / f"pid-rank{rank}").write_text(str(os.getpid()))

def callback(step, info):
    seen.write(json.dumps({"step": step, "indices": info["indices"]}) + "\n")
    seen.flush()
    time.sleep(sleep)
    if step == int(kill_at) and rank == 1:
        os._exit(1)  # a node failure: no cleanup, no checkpoint

result = train(model, BaseLoss(DiffusionConfig(), "caption"), ds, tc, run, {"model": cfg},
               resume=resume == "1", callback=callback)
(Path(out) / f"result-rank{rank}.json").write_text(json.dumps({**result, "checkpoint": None}))
full = lambda v: (v.full_tensor() if hasattr(v, "full_tensor") else v).contiguous()  # FSDP: DTensor
sharded = all(hasattr(v, "full_tensor") for v in model.parameters())
(Path(out) / f"sharded-rank{rank}").write_text(str(sharded))
state = {k: full(v) for k, v in net.net.state_dict().items()}
state.update({"text." + k: full(v) for k, v in text.state_dict().items()})
save_file(state, str(Path(out) / f"final-rank{rank}.safetensors"))
dist.shutdown()
"""


@pytest.fixture(scope="module")
def shards(synthetic_clouds, tmp_path_factory):
    """12 clouds (conftest's synthetic shapes), distinct captions."""
    assert len(synthetic_clouds) == 12
    out = tmp_path_factory.mktemp("dshards")
    write_shards(synthetic_clouds, out)
    return out


def _start(args: list[str], nproc: int, tmp: Path, **env) -> subprocess.Popen:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts=0"]
    launcher = [*torchrun, f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [*launcher, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(args: list[str], nproc: int, tmp: Path, **env) -> subprocess.CompletedProcess:
    proc = _start(args, nproc, tmp, **env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _seen(out: Path, rank: int) -> dict[int, list[int]]:
    """Step -> sample indices of a rank; a redone step keeps its last (resumed) record."""
    recs = [json.loads(line) for line in (out / f"seen-rank{rank}.jsonl").open()]
    return {r["step"]: r["indices"] for r in recs}


def test_torchrun_two_ranks_match_one_process_and_resume_after_a_kill(shards, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    # reference: 1 process, batch 2 x grad_accum 2 = global batch 4
    r = _run([str(shards), str(one / "run"), str(one), "2", "2", "0", "0"], 1, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # 2 ranks x batch 2: killed on rank 1 after step 5 (checkpoint at 4), then resumed. The
    # checkpoint of step 4 is still being written when rank 1 dies (a slow disk): rank 0, told
    # to stop by torchrun's SIGTERM, finishes that write before it exits
    args = [str(shards), str(two / "run"), str(two), "2", "1", "5", "0"]
    r = _run(args, 2, tmp_path, WRITE_SLEEP="3")
    assert r.returncode != 0 and not (two / "final-rank0.safetensors").exists()
    assert json.loads((two / "run" / "latest.json").read_text())["step"] == 4
    killed_step5 = _seen(two, 1)[5]
    r = _run([str(shards), str(two / "run"), str(two), "2", "1", "0", "1"], 2, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    # identical weights on both ranks; equal (to reduction-order tolerance) to one process
    w0, w1 = (load_file(str(two / f"final-rank{r}.safetensors")) for r in (0, 1))
    ref = load_file(str(one / "final-rank0.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    for k in ref:
        torch.testing.assert_close(w0[k], ref[k], atol=1e-5, rtol=1e-4)

    # loss trajectory: the resumed run's log continues the killed one's at step 5
    log1 = [json.loads(line) for line in (one / "run" / "log.jsonl").open()]
    log2 = [json.loads(line) for line in (two / "run" / "log.jsonl").open()]
    assert [x["step"] for x in log2] == [x["step"] for x in log1] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([x["loss"] for x in log2], [x["loss"] for x in log1], rtol=1e-4)

    # data: rank 0 + rank 1 of each step = the one-process batch; the resumed run redid step 5
    # with the same samples; each epoch (3 steps x 4) covers the 12 objects exactly once
    ref_seen, s0, s1 = _seen(one, 0), _seen(two, 0), _seen(two, 1)
    assert s1[5] == killed_step5
    for step in range(1, 7):
        assert s0[step] + s1[step] == ref_seen[step]
    for epoch in range(2):
        steps = range(3 * epoch + 1, 3 * epoch + 4)
        assert sorted(i for s in steps for i in s0[s] + s1[s]) == list(range(12))


def _ckpt(run: Path, step: int) -> dict:
    """Weights (prefixed ``model.``, ``ema.``, ``text.``, ``text_ema.``) and state.pt of a ckpt."""
    d = run / f"ckpt-{step:07d}"
    files = ("model", "ema", "text", "text_ema")
    out = {f"{f}.{k}": v for f in files for k, v in load_file(str(d / f"{f}.safetensors")).items()}
    return {"weights": out, "state": torch.load(d / "state.pt", weights_only=True)}


def test_fsdp_matches_ddp_and_its_checkpoints_resume_with_or_without_fsdp(shards, tmp_path):
    """2 ranks x batch 2 x grad_accum 2 (global batch 8; micro-step 1 skips the reduce-scatter).

    FSDP2 on gloo shards every parameter of the net and the trained text tower (their EMA too).
    Against the same job under DDP, losses and gradient norms agree to rtol 1e-5, weights, EMA
    and AdamW moments to atol 1e-6 (measured: losses equal, weights within 3e-8; gradients are
    reduced by reduce-scatter instead of all-reduce and the clip norm is summed from shards, so
    only float summation order differs). The FSDP job also recomputes its blocks in backward
    (``grad_checkpointing``), which changes no number. An FSDP run killed after step 5 resumes
    from its step-4 checkpoint under FSDP and, from a copy, under DDP.
    """
    ddp, fsdp, cross = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "cross"
    for d in (ddp, fsdp, cross):
        d.mkdir()
    r = _run([str(shards), str(ddp / "run"), str(ddp), "2", "2", "0", "0"], 2, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = {"GRAD_CKPT": "1"}  # activation checkpointing under FSDP: same numbers
    r = _run(
        [str(shards), str(fsdp / "run"), str(fsdp), "2", "2", "5", "0", "fsdp"], 2, tmp_path, **ckpt
    )
    assert r.returncode != 0 and not (fsdp / "final-rank0.safetensors").exists()
    assert json.loads((fsdp / "run" / "latest.json").read_text())["step"] == 4
    shutil.copytree(fsdp / "run", cross / "run")
    r = _run(
        [str(shards), str(fsdp / "run"), str(fsdp), "2", "2", "0", "1", "fsdp"], 2, tmp_path, **ckpt
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([str(shards), str(cross / "run"), str(cross), "2", "2", "0", "1"], 2, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    # same loss trajectory (the resumed FSDP log continues at step 5)
    logs = {d: [json.loads(x) for x in (d / "run" / "log.jsonl").open()] for d in (ddp, fsdp)}
    assert [x["step"] for x in logs[fsdp]] == [x["step"] for x in logs[ddp]] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(
            [x[key] for x in logs[fsdp]], [x[key] for x in logs[ddp]], rtol=1e-5
        )
    assert [(d / "sharded-rank0").read_text() for d in (ddp, fsdp, cross)] == [
        "False",
        "True",
        "False",
    ]

    # final weights: the gathered FSDP weights agree across ranks and with DDP, as does the run
    # that resumed the FSDP checkpoint under DDP
    ref = load_file(str(ddp / "final-rank0.safetensors"))
    w0, w1 = (load_file(str(fsdp / f"final-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in ref)
    for w in (w0, load_file(str(cross / "final-rank0.safetensors"))):
        assert w.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(w[k], ref[k], atol=1e-6, rtol=1e-5)

    # checkpoints have the DDP format: full tensors, integer-keyed AdamW state (weights_only)
    a, b = _ckpt(ddp / "run", 6), _ckpt(fsdp / "run", 6)
    assert a["weights"].keys() == b["weights"].keys()
    for k, v in a["weights"].items():
        torch.testing.assert_close(b["weights"][k], v, atol=1e-6, rtol=1e-5)
    opt_a, opt_b = a["state"]["optimizer"], b["state"]["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and len(opt_a["state"]) > 0
    for i, s in opt_a["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert type(opt_b["state"][i][name]) is torch.Tensor  # not a DTensor
            torch.testing.assert_close(opt_b["state"][i][name], s[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(opt_b["state"][i]["step"], s["step"])


def test_sigterm_to_one_rank_stops_both_after_the_same_step_and_resume_loses_nothing(
    shards, tmp_path
):
    """2 ranks x batch 2, 12 steps (4 epochs of 3): SIGTERM reaches rank 1 from outside while
    the job runs. Both ranks finish the step, write one checkpoint at it and return; --resume
    continues at the next step. Every step's samples (rank 0 + rank 1) are the one-process
    reference's, and each step was trained exactly once."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    steps = {"MAX_STEPS": "12"}
    r = _run([str(shards), str(one / "run"), str(one), "2", "2", "0", "0"], 1, tmp_path, **steps)
    assert r.returncode == 0, r.stderr[-3000:]
    job = _start(
        [str(shards), str(two / "run"), str(two), "2", "1", "0", "0"],
        2,
        tmp_path,
        STEP_SLEEP="0.3",  # slow steps: the signal lands mid-run
        **steps,
    )
    seen1 = two / "seen-rank1.jsonl"
    deadline = time.monotonic() + 300
    while not (seen1.is_file() and len(seen1.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(int((two / "pid-rank1").read_text()), signal.SIGTERM)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    results = [json.loads((two / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    stop = results[0]["step"]
    assert [(x["step"], x["stopped"]) for x in results] == [(stop, "SIGTERM")] * 2
    assert 2 <= stop < 12
    assert json.loads((two / "run" / "latest.json").read_text())["step"] == stop
    first = {
        r: [s["step"] for s in map(json.loads, (two / f"seen-rank{r}.jsonl").open())]
        for r in (0, 1)
    }
    assert first[0] == first[1] == list(range(1, stop + 1))

    r = _run([str(shards), str(two / "run"), str(two), "2", "1", "0", "1"], 2, tmp_path, **steps)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):  # each step once, in order, across the two halves
        records = [json.loads(line) for line in (two / f"seen-rank{rank}.jsonl").open()]
        assert [x["step"] for x in records] == list(range(1, 13))
    ref, s0, s1 = _seen(one, 0), _seen(two, 0), _seen(two, 1)
    for step in range(1, 13):
        assert s0[step] + s1[step] == ref[step], step
    w0 = load_file(str(two / "final-rank0.safetensors"))
    ref_w = load_file(str(one / "final-rank0.safetensors"))
    for k in ref_w:
        torch.testing.assert_close(w0[k], ref_w[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size, world, block", [(12, 2, 2), (12, 3, 1), (10, 2, 2), (3, 2, 4)])
def test_sampler_gives_ranks_disjoint_blocks_covering_the_epoch(size, world, block):
    samplers = [ResumableSampler(size, world, r, block=block, seed=3) for r in range(world)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(samplers[0])
        order = samplers[0].order(epoch).tolist()
        flat = [
            i
            for step in range(samplers[0].steps_per_epoch)
            for p in parts
            for i in p[step * block : (step + 1) * block]
        ]
        assert flat == order  # rank r holds block r of every global batch
        if size % (world * block) == 0:
            assert sorted(flat) == list(range(size))  # disjoint, union = dataset
        elif size >= world * block:
            assert len(set(flat)) == len(flat)  # disjoint; the tail is dropped
        else:
            assert set(flat) == set(range(size))  # tiny dataset: repeated to fill one batch
    assert samplers[0].order(0).tolist() != samplers[0].order(1).tolist() or size < 4


def test_sampler_resumes_mid_epoch():
    full = ResumableSampler(24, 2, 1, block=3, seed=0)
    full.set_epoch(2)
    whole = list(full)
    part = ResumableSampler(24, 2, 1, block=3, seed=0)
    part.set_position(2, 12)  # two global batches (2 x 6 samples) already consumed
    assert list(part) == whole[6:] and len(part) == 6
    with pytest.raises(ValueError, match="whole number of global batches"):
        part.set_position(2, 5)
