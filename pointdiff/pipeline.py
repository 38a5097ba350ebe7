"""Text → coloured point cloud → mesh: the one place where the stages meet.

A pipeline is a text encoder, a list of diffusion ``Stage``s (base 1024 points, then the
upsampler adding 3072) and an optional SDF head for meshing. Checkpoint layouts understood by
``load_pipeline``:

* a **pipeline directory** with ``pipeline.json`` (``{"stages": {"base": "base", "upsampler":
  "upsampler", "sdf": "sdf"}}``; the shipped ``checkpoints/<name>/`` use this), each entry a model
  directory;
* a single **model directory** (``model.safetensors`` + ``config.json``, e.g. a training run's
  ``ckpt-*`` or a release export): a base-only pipeline.

A text tower trained jointly with the base model is stored beside it (``text.safetensors``);
otherwise ``TextConfig`` in the base config names a frozen open_clip model.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from pointdiff.checkpoint import CheckpointError, load_model
from pointdiff.conditioning.lexicon import (
    LexiconError,
    load_lexicon,
    rewrite,
    save_lexicon,
    vocab_counts,
)
from pointdiff.conditioning.text import TextEncoder, WordEncoder, text_condition
from pointdiff.config import DiffusionConfig, SampleConfig, TextConfig
from pointdiff.densify import project_to_surface, upsample_on_surface
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.diffusion.samplers import SAMPLERS, randn_rows
from pointdiff.diffusion.schedules import get_sigmas_karras
from pointdiff.meshing.mesh import MeshError, TriMesh, mesh_from_cloud, surface_fit
from pointdiff.pointcloud import PointCloud, relocate_strays


class PipelineError(ValueError):
    """Bad pipeline input or checkpoint, with the reason."""


@dataclass
class Stage:
    """One diffusion stage.

    :param name: ``base`` (text → points) or ``upsampler`` (points → more points).
    :param denoiser: ``model(x [B,N,6], sigma [B], **cond) -> denoised [B,N,6]``.
    :param num_points: points this stage generates.
    :param sample: sampler defaults (sampler, steps, guidance, churn, clamp).
    :param sigma_min, sigma_max, rho: the Karras σ grid.
    :param uses_text: the stage takes the prompt's condition (and is guided on it).
    :param cond_key: the extra-arg name of that condition: ``text_emb`` (a text vector) or
        ``grid`` (a CLIP image patch grid, point-e's image models).
    :param guide: ``guide(model, scale) -> model``; default: classifier-free guidance zeroing
        ``cond_key`` (point-e's image upsampler also zeroes its low-res cloud).
    """

    name: str
    denoiser: Callable
    num_points: int
    sample: SampleConfig
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    uses_text: bool = True
    cond_key: str = "text_emb"
    guide: Callable | None = None
    text_tokens: int = 0  # per-token text states the stage's model takes (DenoiserConfig)


@dataclass
class SurfaceUpsampler:
    """An upsampler stage without weights: ``num_points`` new points along the surface of the
    cloud so far (``densify.upsample_on_surface``). It cannot add detail the cloud lacks, nor
    points off its surface."""

    num_points: int
    name: str = "upsampler"
    uses_text: bool = False


@dataclass
class TextTo3D:
    """The full pipeline. Build with ``load_pipeline``; call ``sample_clouds`` / ``to_mesh``."""

    text_encoder: TextEncoder | None
    stages: list[Stage]
    sdf_model: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    known_captions: list[str] = field(default_factory=list)
    image_encoder: torch.nn.Module | None = None  # image prompts: ``embed(images) -> grid``
    aliases: dict[str, str] = field(default_factory=dict)  # unknown word -> known word (lexicon)

    def prompt_warnings(self, prompts: list[str]) -> list[str]:
        """Warnings for prompts far from everything the base model was trained on."""
        return prompt_warnings([self.read_prompt(p)[0] for p in prompts], self.known_captions)

    def read_prompt(self, prompt: str) -> tuple[str, dict[str, str]]:
        """The prompt the base model is given: words it never saw swapped for their lexicon
        alias (``lexicon.rewrite``; "a desk" -> "a table"), and ``{word: alias}`` swapped."""
        if not self.aliases or not self.known_captions:
            return prompt, {}
        return rewrite(prompt, self.aliases, _vocab(tuple(self.known_captions)))

    @torch.no_grad()
    def sample_clouds(
        self,
        prompts: list[str],
        seed: int = 0,
        stop_after: str | None = None,
        overrides: dict | None = None,
        bf16: bool = False,
        stage_overrides: dict[str, dict] | None = None,
    ) -> list[PointCloud]:
        """Sample one cloud per prompt (batched), deterministically: prompt i uses seed + i,
        whatever else is in the batch.

        :param prompts: text prompts; image files / PIL images when ``image_encoder`` is set.
        :param stop_after: a stage name to stop at (e.g. ``"base"`` for 1024 points).
        :param overrides: SampleConfig fields applied to every stage (e.g. ``{"steps": 32}``);
            ``guidance`` applies to text stages only.
        :param stage_overrides: SampleConfig fields per stage name, applied after ``overrides``
            (e.g. ``{"base": {"sampler": "heun", "steps": 64}}``).
        """
        unknown = set(stage_overrides or {}) - {s.name for s in self.stages}
        if unknown:
            raise PipelineError(f"stage_overrides for unknown stages {sorted(unknown)}")
        encoder = self.text_encoder if self.image_encoder is None else self.image_encoder
        if self.image_encoder is None:
            _check_prompts(prompts)
        # one generator per prompt (seed + index): a prompt's sample does not depend on the
        # other prompts of the batch, and prompt 0 of any batch equals that prompt alone
        g = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        text_emb = None
        if any(s.uses_text for s in self.stages):
            if encoder is None:
                raise PipelineError("a stage needs text but the pipeline has no text encoder")
            read = (
                prompts
                if self.image_encoder is not None
                else [self.read_prompt(p)[0] for p in prompts]
            )
            tokens = max(getattr(s, "text_tokens", 0) for s in self.stages if s.uses_text)
            text_emb = text_condition(encoder, read, tokens).to(self.device)
        x_prev = None
        for stage in self.stages:
            ov = {**(overrides or {}), **(stage_overrides or {}).get(stage.name, {})}
            x_new = self._run_stage(stage, len(prompts), text_emb, x_prev, g, ov, bf16)
            x_prev = x_new if x_prev is None else torch.cat([x_prev, x_new], dim=1)
            if stage.name == stop_after:
                break
        return [PointCloud.from_tensor(x) for x in x_prev]

    def _run_stage(self, stage, batch, text_emb, low_res, g, overrides, bf16) -> torch.Tensor:
        if isinstance(stage, SurfaceUpsampler):
            if low_res is None:
                raise PipelineError("the upsampler stage needs a base stage before it")
            return upsample_on_surface(low_res, stage.num_points, g)
        text_only = ("guidance", "guidance_interval")
        cfg = replace(stage.sample, **{k: v for k, v in overrides.items()
                                       if v is not None and (k not in text_only or stage.uses_text)})  # fmt: skip
        if cfg.sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {cfg.sampler!r}; choose from {sorted(SAMPLERS)}")
        if cfg.steps < 1:
            raise PipelineError(f"steps must be >= 1, got {cfg.steps}")
        cond = {}
        if stage.uses_text:  # text_emb has the most token states any stage takes: cut to this one's
            n = stage.text_tokens
            cond[stage.cond_key] = text_emb if text_emb.ndim == 2 else (
                text_emb[:, 0] if n == 0 else text_emb[:, : 1 + n])  # fmt: skip
        if stage.name == "upsampler":
            if low_res is None:
                raise PipelineError("the upsampler stage needs a base stage before it")
            cond["low_res"] = low_res
        model = stage.denoiser
        if cfg.clip_denoised:  # clamp each half before mixing, as point-e does (bit parity)
            model = clamp_denoised(model)
        if stage.uses_text and cfg.guidance != 1.0:
            interval = cfg.guidance_interval
            if interval is not None and stage.guide is not None:
                raise PipelineError(f"stage {stage.name!r} has its own guidance; "
                                    "guidance_interval applies to classifier-free guidance only")  # fmt: skip
            guide = stage.guide or partial(
                classifier_free_guidance, cond_keys=(stage.cond_key,),
                sigma_range=None if interval is None else tuple(interval),
            )  # fmt: skip
            model = guide(model, cfg.guidance)
        sigmas = get_sigmas_karras(cfg.steps, stage.sigma_min, stage.sigma_max, stage.rho)
        sigmas = sigmas.to(self.device)
        x = randn_rows((batch, stage.num_points, 6), g, self.device) * sigmas[0]
        kwargs = {"extra_args": cond, "disable": None}
        if cfg.sampler in ("heun", "euler"):
            kwargs.update(s_churn=cfg.s_churn, generator=g)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = SAMPLERS[cfg.sampler](model, x, sigmas, **kwargs)
        out = relocate_strays(out.float(), cfg.stray_ratio, context=low_res)
        return project_to_surface(out, cfg.surface_projection)

    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def to_mesh(
        self,
        cloud: PointCloud,
        grid_size: int = 64,
        bf16: bool = False,
        method: str = "auto",
        max_fit_error: float = 0.03,
        snap: bool = True,
    ) -> TriMesh:
        """Coloured mesh of a cloud (k-NN vertex colours).

        :param method: ``sdf`` (the SDF head, encoded once, queried coarse-to-fine),
            ``poisson`` (open3d screened Poisson) or ``auto``: the SDF head when the pipeline has
            one, falling back to Poisson (with a warning) when its field has no surface or its
            surface does not fit the cloud (``mesh.surface_fit``: either mean distance, cloud →
            mesh (the 5 % farthest stray points left out) or mesh → cloud, above
            ``max_fit_error`` object units).
        :param snap: move the SDF mesh's vertices onto the cloud's local planes
            (``mesh.snap_to_cloud``): the SDF head gives the topology, the points the position.
        """
        if method == "poisson" or (method == "auto" and self.sdf_model is None):
            return mesh_from_cloud(cloud, method="poisson")
        if self.sdf_model is None:
            raise PipelineError("this pipeline has no SDF head; use method='poisson' instead")
        n = self.sdf_model.cfg.num_points
        inputs = cloud.subsample(n) if len(cloud) > n else cloud
        sdf_fn = self.sdf_model.query_fn(torch.from_numpy(inputs.coords), bf16=bf16)
        try:
            mesh = mesh_from_cloud(cloud, sdf_fn, method="sdf", grid_size=grid_size, snap=snap)
        except MeshError as e:
            if method != "auto":
                raise
            problem = f"SDF head found no surface ({e})"
        else:
            if method != "auto":
                return mesh
            fit = surface_fit(mesh, cloud)
            if max(fit.values()) <= max_fit_error:
                return mesh
            problem = (
                f"SDF head's surface does not fit the cloud (mean distance cloud→mesh "
                f"{fit['cloud_to_mesh']:.3f}, mesh→cloud {fit['mesh_to_cloud']:.3f} > "
                f"{max_fit_error})"
            )
        warnings.warn(f"{problem}; meshing with Poisson instead", stacklevel=2)
        return mesh_from_cloud(cloud, method="poisson")


def _check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
        raise PipelineError("prompts must be a list of strings")
    if not prompts:
        raise PipelineError("the prompt list is empty")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PipelineError(f"every prompt must be a non-empty string; got {bad[:3]!r}")


# ----------------------------------------------------------------------------------------------
# Loading


def _stage_from_dir(path: Path, name: str, device: torch.device) -> tuple[Stage, dict]:
    net, configs = load_model(path, kind="upsampler" if name == "upsampler" else "denoiser")
    net.to(device).eval()
    dcfg = configs.get("diffusion", DiffusionConfig())
    scfg = configs.get("sample", SampleConfig())
    stage = Stage(
        name=name,
        denoiser=KarrasDenoiser(net, sigma_data=dcfg.sigma_data),
        num_points=net.cfg.num_points,
        sample=scfg,
        sigma_min=dcfg.sigma_min,
        sigma_max=dcfg.sigma_max,
        rho=dcfg.rho,
        uses_text=net.cfg.cond_dim > 0,
        text_tokens=getattr(net.cfg, "text_tokens", 0),
    )
    return stage, configs


def _surface_upsampler(entry: dict, root: Path) -> SurfaceUpsampler:
    n = entry.get("surface")
    if set(entry) != {"surface"} or not isinstance(n, int) or n < 1:
        raise CheckpointError(
            f'{root}/pipeline.json: an upsampler entry is a directory or {{"surface": N}} '
            f"with N > 0 new points, got {entry!r}"
        )
    return SurfaceUpsampler(num_points=n)


def _text_encoder_for(path: Path, configs: dict, device: torch.device) -> TextEncoder | None:
    if (path / "text.safetensors").is_file():
        return TextEncoder.load(path).to(device).eval()
    return TextEncoder.from_text_config(configs.get("text", TextConfig())).to(device).eval()


def load_pipeline(checkpoint: str | Path, device: str = "cpu") -> TextTo3D:
    """Build a ``TextTo3D`` from a pipeline directory or a single base-model directory."""
    root = Path(checkpoint)
    dev = torch.device(device)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if (root / "pipeline.json").is_file():
        spec = json.loads((root / "pipeline.json").read_text())
        entries = spec.get("stages", {})
    else:
        entries = {"base": "."}
    if "base" not in entries:
        raise CheckpointError(f"{root}/pipeline.json names no 'base' stage")
    stages, base_cfg = [], None
    for name in ("base", "upsampler"):
        if isinstance(entries.get(name), dict):  # {"surface": N}: no weights
            stages.append(_surface_upsampler(entries[name], root))
        elif name in entries:
            stage, configs = _stage_from_dir(root / entries[name], name, dev)
            stages.append(stage)
            base_cfg = base_cfg or configs
    text = None
    if stages[0].uses_text:
        text = _text_encoder_for(root / entries["base"], base_cfg, dev)
    sdf = None
    if "sdf" in entries:
        sdf, _ = load_model(root / entries["sdf"], kind="sdf")
        sdf.to(dev).eval()
    captions = []
    if (root / entries["base"] / "captions.json").is_file():
        captions = json.loads((root / entries["base"] / "captions.json").read_text())
    try:
        aliases = load_lexicon(root / entries["base"])
    except LexiconError as e:
        raise CheckpointError(str(e)) from None
    return TextTo3D(text, stages, sdf, dev, captions, aliases=aliases)


# ----------------------------------------------------------------------------------------------
# Prompts the model knows


def _words(text: str) -> set[str]:
    return set(WordEncoder.words(text))


@functools.lru_cache(maxsize=4)
def _vocab(known_captions: tuple[str, ...]) -> frozenset[str]:
    return frozenset(vocab_counts(known_captions))


def prompt_warnings(prompts: list[str], known_captions: list[str]) -> list[str]:
    """Warnings for prompts that share no word with anything the model was trained on.

    A model trained on a few hundred captions cannot generalise to unseen words; saying so beats
    silently returning noise. Empty when the training captions are unknown.
    """
    if not known_captions:
        return []
    vocab = _vocab(tuple(known_captions))
    return [
        f"prompt {p!r} shares no word with the {len(known_captions)} training captions; "
        "expect an arbitrary shape (see `pointdiff prompts`)"
        for p in prompts
        if not _words(p) & vocab
    ]


# ----------------------------------------------------------------------------------------------
# Writing results


def _slug(text: str, n: int = 40) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(filter(None, s.split("_")))[:n] or "sample"


def write_sample(out: Path, index: int, prompt: str, cloud: PointCloud, mesh=None) -> Path:
    """Write ``cloud.ply``, ``cloud.npz``, ``cloud.png`` (+ ``mesh.glb/.ply/.png``) and
    ``prompt.txt`` to a folder, replacing any folder of that name whole: the files are written to
    a hidden temporary folder that is then renamed into place, so a sample folder never mixes two
    runs' files (a mesh of another seed beside a new cloud) nor shows a half-written sample.

    :return: the folder ``out/<index>_<prompt slug>``.
    """
    from pointdiff.render import render_mesh_views, render_views

    folder = Path(out) / f"{index:02d}_{_slug(prompt)}"
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise PipelineError(f"cannot create output folder {folder}: {e.strerror}") from None
    try:
        cloud.save(tmp / "cloud.ply")
        cloud.save(tmp / "cloud.npz")
        render_views(cloud).save(tmp / "cloud.png")
        if mesh is not None:
            mesh.save(tmp / "mesh.glb")
            mesh.save(tmp / "mesh.ply")
            render_mesh_views(mesh.verts, mesh.faces, mesh.colors).save(tmp / "mesh.png")
        (tmp / "prompt.txt").write_text(prompt + "\n")
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        elif folder.exists() or folder.is_symlink():
            folder.unlink()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when writing failed
    return folder


_SAMPLE_DIR = re.compile(r"^\d{2,}_[a-z0-9_]+$")


def remove_samples(out: Path) -> list[Path]:
    """Remove the sample folders ``write_sample`` wrote into ``out`` (``<nn>_<slug>/`` holding a
    ``prompt.txt``), so a new run's samples are not mixed with an earlier run's; other files and
    folders are kept.

    :return: the folders removed.
    """
    out = Path(out)
    if not out.is_dir():
        return []
    found = sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink()
                   and _SAMPLE_DIR.match(p.name) and (p / "prompt.txt").is_file())  # fmt: skip
    for folder in found:
        shutil.rmtree(folder)
    return found


def mesh_cloud_file(
    cloud_path: str | Path,
    out_path: str | Path,
    method: str = "auto",
    checkpoint: str | Path | None = None,
    grid_size: int = 128,
    device: str = "cpu",
    snap: bool = True,
) -> Path:
    """Mesh a point-cloud file and save the mesh (format from the suffix: .glb, .ply, .obj).

    The cloud is meshed in the normalised frame the SDF head was trained in (bbox centred,
    largest side 1) and the mesh is mapped back to the cloud's own coordinates.

    :param method: ``auto`` (the checkpoint's SDF head, Poisson where it has none or its surface
        does not fit the cloud), ``sdf`` (the SDF head, no fallback) or ``poisson``.
    """
    from pointdiff.meshing.mesh import poisson_mesh
    from pointdiff.pointcloud import normalize_bbox

    out_path = Path(out_path)
    if out_path.suffix not in (".glb", ".ply", ".obj"):
        raise PipelineError(f"mesh output must end in .glb, .ply or .obj, got {out_path.name!r}")
    if method not in ("auto", "sdf", "poisson"):
        raise PipelineError(f"unknown meshing method {method!r} (auto | sdf | poisson)")
    cloud = PointCloud.load(cloud_path)
    coords, center, scale = normalize_bbox(cloud.coords)
    unit = PointCloud(coords, cloud.colors)
    if method == "poisson" or (method == "auto" and checkpoint is None):
        mesh = poisson_mesh(unit)
    else:
        if checkpoint is None:
            raise PipelineError("--method sdf needs a --checkpoint with an SDF head")
        mesh = load_pipeline(checkpoint, device=device).to_mesh(
            unit, grid_size=grid_size, method=method, snap=snap
        )
    mesh = TriMesh(mesh.verts * scale + center, mesh.faces, mesh.colors, mesh.normals)
    mesh.save(out_path)
    return out_path


# ----------------------------------------------------------------------------------------------
# Release


def export_pipeline(
    out_dir: str | Path,
    base: str | Path,
    upsampler: str | Path | None = None,
    sdf: str | Path | None = None,
    sample: SampleConfig | None = None,
    upsampler_sample: SampleConfig | None = None,
    captions: list[str] | None = None,
    dtype: torch.dtype = torch.float16,
    points: dict[str, dict[str, int]] | None = None,
    aliases: dict[str, str] | None = None,
    surface_upsampler: int | None = None,
) -> Path:
    """Write a shipped pipeline directory from training checkpoints (EMA weights, ``dtype``).

    Layout: ``pipeline.json`` + ``base/`` (+ ``upsampler/``, ``sdf/``), each a release directory;
    ``sample`` (the measured default sampler settings) is stored in the stage's config, and
    ``captions`` (what the base model was trained on) in ``base/captions.json``, ``aliases``
    (``lexicon.build_aliases`` of those captions) in ``base/lexicon.json``. Each stage's
    ``config.json`` records the SHA-256 of its weight files (checked when loading).

    :param points: per stage, model point counts to ship instead of the trained ones, e.g.
        ``{"base": {"num_points": 1024}}`` for a model trained on 256-point subsets (the
        denoisers have no positional embedding, so a set size is a sampling choice, not a
        weight shape).
    :param surface_upsampler: instead of a trained ``upsampler``, add this many points along
        the base cloud's surface (``SurfaceUpsampler``).
    """
    if upsampler is not None and surface_upsampler is not None:
        raise ValueError("give a trained upsampler or a surface upsampler, not both")
    from pointdiff.checkpoint import export_for_release, record_hashes
    from pointdiff.config import to_dict

    out = Path(out_dir)
    stages = {"base": base, "upsampler": upsampler, "sdf": sdf}
    settings = {"base": sample, "upsampler": upsampler_sample}
    for name, src in stages.items():
        if src is None:
            continue
        export_for_release(src, out / name, dtype=dtype)
        meta = json.loads((out / name / "config.json").read_text())
        for key, value in (points or {}).get(name, {}).items():
            if key not in ("num_points", "num_cond_points") or key not in meta["configs"]["model"]:
                raise ValueError(f"{name}: cannot set {key!r} of a {meta['configs']['model']}")
            meta["configs"]["model"][key] = int(value)
        if settings.get(name) is not None:
            meta["configs"]["sample"] = to_dict(settings[name])
        (out / name / "config.json").write_text(json.dumps(meta, indent=1))
    spec = {"stages": {k: k for k, v in stages.items() if v is not None}}
    if surface_upsampler is not None:
        spec["stages"]["upsampler"] = {"surface": int(surface_upsampler)}
    (out / "pipeline.json").write_text(json.dumps(spec, indent=1) + "\n")
    if captions is not None:
        (out / "base" / "captions.json").write_text(json.dumps(sorted(set(captions)), indent=0))
    if aliases is not None:
        save_lexicon(out / "base", aliases)
    for name, src in stages.items():  # last, once every file of the stage is written
        if src is not None:
            record_hashes(out / name)
    return out
