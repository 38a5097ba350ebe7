"""What one web request asks for, checked, and the work that answers it.

``parse_request`` turns the browser's JSON into a ``Request`` or raises ``RequestError`` naming
the field, with the command line's messages and limits (``cli_checks``; a web demo shares one
machine, so samples per request, steps and the mesh grid have tighter caps than the CLI's).
``generate`` runs the pipeline for it and returns each result's files as bytes: nothing is
written where the browser could name it.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pointdiff.cli_checks import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    number_parser,
    parse_prompt,
)
from pointdiff.conditioning.prompts import PromptError, check_prompts
from pointdiff.diffusion.schedules import get_sigmas_karras
from pointdiff.outputs import slug
from pointdiff.pipeline import Stage, TextTo3D

from .jobs import Report, ResultStore

MAX_SAMPLES = 4  # per request: four 4096-point clouds and meshes keep a request under a minute
MAX_STEPS = 256  # the CLI allows 1000; one request must not hold the queue for long
MAX_GRID = 128  # marching-cubes grid (the CLI allows 512: 0.5 GB)
SAMPLERS = ("dpmpp_2m", "heun", "euler")
EXAMPLES = (
    "a red sofa",
    "a black office chair",
    "a wooden table",
    "a white bathtub",
    "a green armchair",
    "a floor lamp",
)


class RequestError(ValueError):
    """A request field the demo refuses; ``field`` names it for the form."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Request:
    """One prompt and its settings (None: the checkpoint's default)."""

    prompt: str
    seed: int = 0
    num_samples: int = 1
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    stray_ratio: float | None = None
    grid_size: int = 64
    mesh: bool = True


#: field -> argparse-style parser (the CLI's messages: "must be an integer from 1 to 4, got '7'")
_NUMBERS = {
    "seed": number_parser(int, 0, MAX_SEED),
    "num_samples": number_parser(int, 1, MAX_SAMPLES),
    "steps": number_parser(int, 1, MAX_STEPS),
    "guidance": number_parser(float, 0, MAX_GUIDANCE),
    "stray_ratio": number_parser(float, 0, 100),
    "grid_size": number_parser(int, 16, MAX_GRID),
}


def limits() -> dict:
    """What the form shows and enforces before a request is sent."""
    return {
        "prompt_chars": MAX_PROMPT_CHARS,
        "seed": [0, MAX_SEED],
        "num_samples": [1, MAX_SAMPLES],
        "steps": [1, MAX_STEPS],
        "guidance": [0, MAX_GUIDANCE],
        "stray_ratio": [0, 100],
        "grid_size": [16, MAX_GRID],
        "samplers": list(SAMPLERS),
    }


def parse_request(data) -> Request:
    """A ``Request`` from decoded JSON, or ``RequestError`` for the first bad field."""
    if not isinstance(data, dict):
        raise RequestError("request", "must be a JSON object")
    unknown = sorted(set(data) - {f for f in Request.__dataclass_fields__})
    if unknown:
        raise RequestError(unknown[0], "unknown field")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError("prompt", "give a text prompt")
    try:
        prompt = parse_prompt(prompt.strip())
        check_prompts([prompt])
    except (argparse.ArgumentTypeError, PromptError) as e:
        raise RequestError("prompt", str(e)) from None
    values = {"prompt": prompt}
    for name, parse in _NUMBERS.items():
        value = data.get(name)
        if value is None or value == "":
            continue  # the default
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise RequestError(name, f"must be a number, got {value!r}")
        try:
            values[name] = parse(str(value))
        except argparse.ArgumentTypeError as e:
            raise RequestError(name, str(e)) from None
    sampler = data.get("sampler") or None
    if sampler is not None and sampler not in SAMPLERS:
        raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    mesh = data.get("mesh", True)
    if not isinstance(mesh, bool):
        raise RequestError("mesh", f"must be true or false, got {mesh!r}")
    return Request(**values, sampler=sampler, mesh=mesh)


# ----------------------------------------------------------------------------------------------
# Progress: the pipeline's stages, seen through a proxy that reports stage and step


class _ReportingStage:
    """A pipeline stage that reports ``(name, step, steps)`` as it samples. Diffusion stages
    run on a copy whose denoiser reports the step of each σ it is called with; the shared
    pipeline is never modified."""

    def __init__(self, stage, report: Report):
        self._stage = stage
        self._report = report

    def __getattr__(self, name):
        return getattr(self._stage, name)

    def run(self, inputs, cfg, bf16: bool = False) -> torch.Tensor:
        stage, name = self._stage, self._stage.name
        if not isinstance(stage, Stage):  # no sampler (the surface upsampler): one step
            self._report(name, 0, 1)
            return stage.run(inputs, cfg, bf16)
        sigmas = get_sigmas_karras(cfg.steps, stage.sigma_min, stage.sigma_max, stage.rho)
        log_grid = sigmas[:-1].log()  # the trailing 0 is never a model input
        done = [0]
        denoiser = stage.denoiser

        def model(x, sigma, **kwargs):
            s = float(torch.as_tensor(sigma).reshape(-1)[0])
            # the step this σ belongs to; second-order samplers also call at σ_{i+1}
            step = int((log_grid - np.log(max(s, 1e-12))).abs().argmin()) + 1
            done[0] = max(done[0], step)
            self._report(name, done[0], cfg.steps)
            return denoiser(x, sigma, **kwargs)

        self._report(name, 0, cfg.steps)
        return replace(stage, denoiser=model).run(inputs, cfg, bf16)


# ----------------------------------------------------------------------------------------------
# The work of one request


def _cloud_view(cloud) -> bytes:
    """The viewer's cloud: N float32 xyz (glTF's Y-up, as ``meshing.export`` writes meshes)
    followed by N sRGB bytes."""
    xyz = cloud.coords.astype(np.float32)
    y_up = np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], axis=1)
    rgb = np.round(np.clip(cloud.colors, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(y_up).tobytes() + rgb.tobytes()


def _files(cloud, mesh) -> dict[str, bytes]:
    """The result's downloads and viewer data, written through the library's writers into a
    private temporary folder and read back."""
    with tempfile.TemporaryDirectory(prefix="pointdiff-demo-") as tmp:
        names = ["cloud.ply", "cloud.npz"]
        for name in names:
            cloud.save(Path(tmp) / name)
        if mesh is not None:
            names += ["mesh.glb", "mesh.ply"]
            for name in names[2:]:
                mesh.save(Path(tmp) / name)
        files = {name: (Path(tmp) / name).read_bytes() for name in names}
    files["cloud.bin"] = _cloud_view(cloud)
    return files


def generate(
    pipe: TextTo3D, request: Request, report: Report, store: ResultStore, bf16: bool = False
) -> list[dict]:
    """Sample ``request.num_samples`` clouds (and meshes) and store them.

    :return: each stored result's description (``ResultStore.add``): prompt, seed, point and
        face counts, how the mesh was made, the reader's notes and warnings.
    """
    report("reading the prompt", 0, 0)
    prompt = pipe.read_prompts([request.prompt])[0]
    notes = [*prompt.notes(), *prompt.warnings]
    view = replace(pipe, stages=[_ReportingStage(s, report) for s in pipe.stages])
    overrides = {
        "steps": request.steps,
        "guidance": request.guidance,
        "sampler": request.sampler,
        "stray_ratio": request.stray_ratio,
    }
    batch = [prompt] * request.num_samples
    clouds = view.sample_clouds(batch, seed=request.seed, overrides=overrides, bf16=bf16)
    out = []
    for i, cloud in enumerate(clouds):
        mesh, how = None, "no mesh"
        if request.mesh:
            report("mesh", i + 1, len(clouds))
            result = pipe.to_mesh(cloud, grid_size=request.grid_size, bf16=bf16)
            mesh, how = result.mesh, result.method
            if result.fallback:
                how = f"{result.method} ({result.reason})"
        report("writing files", i + 1, len(clouds))
        info = {
            "prompt": request.prompt,
            "read_as": prompt.read,
            "seed": request.seed + i,
            "points": len(cloud),
            "faces": 0 if mesh is None else int(mesh.num_faces),
            "mesh": how,
            "notes": notes,
            "name": f"{slug(request.prompt)}_seed{request.seed + i}",
        }
        out.append(store.add(info, _files(cloud, mesh)))
    return out
