"""Few-call students (``training.distill``): guidance as an input, progressive and trajectory
distillation, on tiny models and a Gaussian-mixture toy set whose exact denoiser is the teacher;
the command line end to end on a tiny pointdiff model and a tiny converted point-e model."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pointdiff.config import DenoiserConfig, DiffusionConfig, SampleConfig, TrainConfig
from pointdiff.diffusion.guidance import classifier_free_guidance
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.diffusion.samplers import sample_consistency, sample_dpmpp_2m, sample_euler
from pointdiff.diffusion.schedules import get_sigmas_karras, get_sigmas_subgrid
from pointdiff.models import build_model
from pointdiff.models.trunk import ModelInputError
from pointdiff.training.distill import (
    GuidanceDistillLoss,
    ProgressiveDistillLoss,
    Teacher,
    TrajectoryDataset,
    TrajectoryLoss,
    generate_trajectories,
    loss_weight,
)
from pointdiff.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (0.002, 80.0, 7.0)
TINY = DenoiserConfig(width=32, depth=2, heads=2, num_points=16, cond_dim=8)


# ----------------------------------------------------------------------------------------------
# The toy: points from a Gaussian mixture, and its exact denoiser


class MixtureDenoiser(torch.nn.Module):
    """The exact D(x; σ) = E[x0 | x] of i.i.d. points from Σ_k π_k N(μ_k, s²·I), per point."""

    def __init__(self, means: torch.Tensor, std: float):
        super().__init__()
        self.means, self.std = means, std  # [K, C]

    def forward(self, x, sigma, **_):
        s2, v = self.std**2, self.std**2 + sigma.reshape(-1, 1, 1, 1) ** 2  # v: [B,1,1,1]
        diff = x[:, :, None] - self.means  # [B, N, K, C]
        logp = -(diff**2).sum(-1, keepdim=True) / (2 * v)  # equal weights and variances
        r = torch.softmax(logp, dim=2)
        return (r * (self.means + s2 / v * diff)).sum(2)


MEANS = torch.tensor([[0.6, 0.6, 0.0], [-0.6, -0.6, 0.0], [0.6, -0.6, 0.5]]).repeat(1, 2) * 0.8
TOY_STD = 0.05


class ToyClouds(torch.utils.data.Dataset):
    """Clouds of 16 points drawn from the mixture (deterministic per index)."""

    def __len__(self):
        return 256

    def set_epoch(self, epoch):
        pass

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        k = torch.randint(0, len(MEANS), (16,), generator=g)
        return {"points": MEANS[k] + TOY_STD * torch.randn(16, 6, generator=g), "index": i}


def _toy_teacher():
    return Teacher(MixtureDenoiser(MEANS, TOY_STD), None, False, *GRID)


def _student(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(TINY, cond_dim=0, width=64, **kw)
    return KarrasDenoiser(build_model(cfg), 0.5)


def _fit(model, loss_fn, data, tmp_path, steps, lr=3e-3, batch=16):
    cfg = TrainConfig(
        batch_size=batch,
        max_steps=steps,
        warmup_steps=10,
        lr=lr,
        min_lr_ratio=0.1,
        ema_decay=0.0,
        ckpt_every=steps,
        log_every=steps,
        num_workers=0,
    )
    configs = {"model": model.net.cfg, "diffusion": DiffusionConfig()}
    train(model, loss_fn, data, cfg, tmp_path, configs=configs)
    return model.eval()


def _sample(model, sampler, sigmas, n=64, seed=1, **kw):
    noise = torch.randn(n, 16, 6, generator=torch.Generator().manual_seed(seed))
    return sampler(model, noise * sigmas[0], sigmas, disable=True, **kw)


# ----------------------------------------------------------------------------------------------
# Guidance as an input


def test_guidance_input_starts_as_the_conditional_model_and_is_checked():
    torch.manual_seed(0)
    teacher = build_model(TINY).eval()
    torch.nn.init.normal_(teacher.output_proj.weight, std=0.1)
    student = build_model(dataclasses.replace(TINY, guidance_embed=True)).eval()
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(("guidance_proj.", "guidance_out.")) for k in missing)
    x, t, c = torch.randn(3, 16, 6), torch.zeros(3), torch.randn(3, 8)
    for w in (0.0, 3.0, 7.5):
        out = student(x, t, text_emb=c, guidance=torch.full((3,), w))
        torch.testing.assert_close(out, teacher(x, t, text_emb=c))
    with pytest.raises(ModelInputError, match="takes the guidance scale"):
        student(x, t, text_emb=c)
    with pytest.raises(ModelInputError, match="no guidance input"):
        teacher(x, t, text_emb=c, guidance=torch.ones(3))


def test_guided_student_reproduces_its_teachers_guided_output(tmp_path):
    """After 600 steps the one-call student's output at scales inside its training range is
    within 20 % of the guidance effect ‖D_w − D_1‖ of the teacher's guided pair (it starts at
    100 %: the conditional model), at low, middle and high σ."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, cond_bias=True)  # a teacher whose condition matters
    net = build_model(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(net.output_proj.weight, std=0.3)
    torch.nn.init.normal_(net.text_bias.weight, std=0.3)
    teacher = Teacher(KarrasDenoiser(net, 0.5), "text_emb", False, *GRID)
    conds = torch.randn(4, 8)

    class Captioned(ToyClouds):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "text_emb": conds[i % 4]}

    cfg = dataclasses.replace(cfg, guidance_embed=True, cond_drop_prob=0.0)
    student = KarrasDenoiser(build_model(cfg), 0.5)
    student.net.load_state_dict(net.state_dict(), strict=False)
    inputs = lambda b: (b["points"], {"text_emb": b["text_emb"]})  # noqa: E731
    loss = GuidanceDistillLoss(teacher, inputs, lambda s: loss_weight(student, s), (1.0, 5.0))
    _fit(student, loss, Captioned(), tmp_path, steps=600, lr=1e-3)

    g = torch.Generator().manual_seed(5)
    x0 = torch.stack([Captioned()[i]["points"] for i in range(8)])
    c = conds[torch.arange(8) % 4]
    for sigma in (0.1, 1.0, 10.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        s = torch.full((8,), sigma)
        for w in (2.0, 4.0):
            guided = classifier_free_guidance(teacher.denoiser, w)(x, s, text_emb=c)
            plain = teacher.denoiser(x, s, text_emb=c)
            with torch.no_grad():
                out = student(x, s, text_emb=c, guidance=torch.full((8,), w))
            err = (out - guided).norm() / (guided - plain).norm()
            assert err < 0.2, (sigma, w, float(err))


# ----------------------------------------------------------------------------------------------
# Step distillation on the toy, against the exact teacher


def _toy_mse(a, b):
    return float((a - b).pow(2).mean())


def test_trajectory_student_one_step_lands_near_the_teachers_many_step_sample(tmp_path):
    """The exact teacher's 16-step DPM-Solver++ sample from some noise vs. a one-call sample from
    the same noise: the teacher's own one call (its mean, off the mixture) is far; the
    trajectory-distilled student is within a quarter of that distance (mean squared error) and
    its points lie on the mixture (within 3 std of a component mean for 90 % of them)."""
    teacher = _toy_teacher()
    inputs = lambda b: (b["points"], {})  # noqa: E731
    folder = generate_trajectories(
        teacher, ToyClouds(), inputs, tmp_path / "traj", 96, 16, (1.0, 1.0), chunk=32
    )
    data = TrajectoryDataset(folder)
    assert len(data) == 96 * 16 and data.sigmas[0] == pytest.approx(80.0)
    student = _student()
    _fit(
        student,
        TrajectoryLoss(lambda s: loss_weight(student, s), guided=False),
        data,
        tmp_path / "run",
        steps=400,
    )

    sigmas = get_sigmas_karras(16, *GRID)
    ref = _sample(teacher.denoiser, sample_dpmpp_2m, sigmas)
    one = torch.tensor([80.0, 0.0])
    teacher_1 = _sample(teacher.denoiser, sample_consistency, one)
    with torch.no_grad():
        student_1 = _sample(student, sample_consistency, one)
    assert _toy_mse(student_1, ref) < 0.25 * _toy_mse(teacher_1, ref)
    d = torch.cdist(student_1.reshape(-1, 6), MEANS).min(-1).values
    assert (d < 3 * TOY_STD * math.sqrt(6)).float().mean() > 0.9


def test_progressive_round_halves_the_steps_at_the_teachers_quality(tmp_path):
    """One round, 2 → 1 steps: the student's single DDIM step lands within half the distance of
    the teacher's own single step from the teacher's 2 steps (same noise, nested grid)."""
    teacher = _toy_teacher()
    student = _student()
    inputs = lambda b: (b["points"], {})  # noqa: E731
    loss = ProgressiveDistillLoss(
        teacher, inputs, lambda s: loss_weight(student, s), (1.0, 1.0), steps=1, grid=2
    )
    _fit(student, loss, ToyClouds(), tmp_path, steps=400)
    two, one = (get_sigmas_subgrid(n, 2, *GRID) for n in (2, 1))
    ref = _sample(teacher.denoiser, sample_euler, two)
    with torch.no_grad():
        student_1 = _sample(student, sample_euler, one)
    teacher_1 = _sample(teacher.denoiser, sample_euler, one)
    assert _toy_mse(student_1, ref) < 0.5 * _toy_mse(teacher_1, ref)


def test_subgrid_is_nested_and_checked():
    full = get_sigmas_karras(16, *GRID)
    for n in (1, 2, 4, 8, 16):
        sub = get_sigmas_subgrid(n, 16, *GRID)
        assert len(sub) == n + 1 and sub[-1] == 0
        assert torch.equal(sub[:-1], full[: 16 : 16 // n])
    with pytest.raises(ValueError, match="grid % steps"):
        get_sigmas_subgrid(3, 16, *GRID)


# ----------------------------------------------------------------------------------------------
# The command line: teacher -> guidance -> progressive / trajectory -> shipped beside the teacher


@pytest.fixture(scope="module")
def shards(synthetic_clouds, tmp_path_factory):
    from pointdiff.data import write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards([r for r in synthetic_clouds if r["id"] in ("torus", "cone", "box")], out)
    return out


def _counting(stage):
    """Wrap a stage's denoiser to record the batch size of every network call."""
    calls, inner = [], stage.denoiser

    def counted(x, sigma, **kw):
        calls.append(x.shape[0])
        return inner(x, sigma, **kw)

    stage.denoiser = counted
    return calls


def _distil(teacher, method: str, run_dir, *extra: str) -> dict:
    """``train/distill.py`` in this process: a ``method`` student of ``teacher`` in ``run_dir``."""
    from pointdiff.training.distill_run import main

    return main(["--teacher", str(teacher), "--method", method, "--run-dir", str(run_dir), *extra])


def test_distil_command_line_ships_a_fast_pipeline(shards, tmp_path):
    from pointdiff.checkpoint import load_configs
    from pointdiff.cli import main as pointdiff_main
    from pointdiff.pipeline import load_pipeline
    from pointdiff.release import add_fast_stages, export_pipeline
    from pointdiff.training.run import main as train_base

    common = "--batch_size=2 --max_steps=2 --ckpt_every=1 --warmup_steps=1 --log_every=1"
    teacher = tmp_path / "teacher"
    train_base(
        "base",
        [
            "tiny",
            "--data",
            str(shards),
            "--run-dir",
            str(teacher),
            "--text",
            "words-32",
            *common.split(),
        ],
    )
    guided = tmp_path / "guided"
    args = ["--data", str(shards), *common.split()]
    out = _distil(teacher, "guidance", guided, *args)
    assert out["step"] == 2
    configs = load_configs(guided)
    assert configs["model"].guidance_embed and configs["model"].cond_drop_prob == 0
    assert configs["distill"].method == "guidance" and configs["text"].arch == "words-32"
    # resumable as every run: two more steps continue the same run
    more = [a.replace("--max_steps=2", "--max_steps=4") for a in args]
    assert _distil(teacher, "guidance", guided, *more, "--resume")["step"] == 4

    pd = tmp_path / "pd"
    _distil(guided, "progressive", pd, *args, "--steps=1", "--grid=2")
    sample = load_configs(pd)["sample"]
    assert (sample.sampler, sample.steps, sample.grid) == ("euler", 1, 2)
    traj = tmp_path / "traj"
    _distil(guided, "trajectory", traj, *args, "--trajectories=5", "--steps=2", "--grid=4")
    assert len(list((traj / "trajectories").glob("traj-*.npz"))) == 1
    with pytest.raises(ValueError, match="must be a multiple of --steps=3"):
        _distil(guided, "progressive", tmp_path / "bad", *args, "--steps=3")

    shipped = export_pipeline(tmp_path / "ship", teacher, sample=SampleConfig(steps=4))
    add_fast_stages(shipped, {"base": traj})
    assert json.loads((shipped / "pipeline.json").read_text())["fast"] == {"base": "base_fast"}
    fast = load_pipeline(shipped, fast=True)
    stage = fast.stages[0]
    assert stage.takes_guidance and (stage.sample.sampler, stage.sample.steps) == ("consistency", 2)
    calls = _counting(stage)
    (cloud,) = fast.sample_clouds(["a torus"], seed=0)
    assert calls == [1, 1] and np.isfinite(cloud.coords).all()  # one call of B per step
    teacher_pipe = load_pipeline(shipped)
    calls = _counting(teacher_pipe.stages[0])
    teacher_pipe.sample_clouds(["a torus"], seed=0, overrides={"sampler": "dpmpp_2m"})
    assert calls == [2] * 4  # the guided pair, in one batched call per step
    with pytest.raises(Exception, match="no distilled stages"):
        load_pipeline(teacher, fast=True)
    rc = pointdiff_main(
        [
            "sample",
            "a box",
            "--checkpoint",
            str(shipped),
            "--fast",
            "--no-mesh",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 0 and (next((tmp_path / "s").iterdir()) / "cloud.ply").is_file()


def test_a_converted_pointe_model_distils_with_the_same_command(shards, tmp_path, converted_pointe):
    """A tiny "released" point-e base and upsampler: the base's guidance and steps, the text
    upsampler's steps (it takes no prompt); the students keep point-e's ε parameterisation and
    sample through the point-e pipeline with their own settings."""
    from pointdiff.compat.pointe_pipeline import load_pointe_pipeline
    from pointdiff.conditioning.words import WordEncoder
    from pointdiff.diffusion.discrete import DiscreteEpsDenoiser
    from pointdiff.training.pointe_objective import pointe_info

    conv = converted_pointe(tmp_path / "conv", 32, 64)
    common = ["--data", str(shards), *"--batch_size=2 --max_steps=2 --warmup_steps=1".split()]
    g = tmp_path / "g"
    _distil(conv / "base40M-textvec", "guidance", g, "--text", "words-32", *common)
    fast_base = tmp_path / "fb"
    _distil(g, "progressive", fast_base, "--steps=2", "--grid=4", *common)
    fast_up = tmp_path / "fu"
    _distil(
        conv / "upsample",
        "trajectory",
        fast_up,
        "--steps=1",
        "--grid=2",
        "--trajectories=3",
        *common,
    )
    assert pointe_info(fast_base)["schedule"] == "cosine"
    assert pointe_info(fast_up)["schedule"] == "linear"
    with pytest.raises(ValueError, match="no guidance to distil"):
        _distil(conv / "upsample", "guidance", tmp_path / "x", *common)

    pe = tmp_path / "pe"
    pe.mkdir()
    (pe / "base40M-textvec").symlink_to(fast_base / "ckpt-0000002")
    (pe / "upsample").symlink_to(fast_up / "ckpt-0000002")
    pipe = load_pointe_pipeline(pe, text_encoder=WordEncoder.from_arch("words-32"), sdf=False)
    base, up = pipe.stages
    assert isinstance(base.denoiser, DiscreteEpsDenoiser) and base.takes_guidance
    assert (base.sample.sampler, base.sample.steps, up.sample.sampler, up.sample.steps) == (
        "euler",
        2,
        "consistency",
        1,
    )
    calls = _counting(base), _counting(up)
    (cloud,) = pipe.sample_clouds(["a torus"], seed=0)
    assert calls == ([1, 1], [1]) and len(cloud) == 96 and np.isfinite(cloud.coords).all()
