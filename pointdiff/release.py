"""Exporting a release: training checkpoints -> a shipped pipeline directory.

Layout (what ``pipeline.load_pipeline`` reads): ``pipeline.json`` + ``base/`` (+ ``upsampler/``,
``sdf/``), each a release directory of EMA weights and ``config.json``; the base stage's
``captions.json`` (what it was trained on) and ``lexicon.json`` (aliases for words it never saw)
sit beside its weights. Every file is written atomically (``pointdiff.atomic``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pointdiff.atomic import write_text_atomic
from pointdiff.checkpoint import export_for_release, record_hashes
from pointdiff.conditioning.lexicon import save_lexicon
from pointdiff.config import SampleConfig, to_dict

#: model fields a release may change: set sizes (the denoisers have no positional embedding)
# The pipeline this repository ships, which the command line and the web demo load by default.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "pointdiff-small"
POINT_FIELDS = ("num_points", "num_cond_points")


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

    ``sample`` (the measured default sampler settings) is stored in the base stage's config,
    ``upsampler_sample`` in the upsampler's; ``captions`` go to ``base/captions.json`` and
    ``aliases`` (``lexicon.build_aliases`` of those captions) to ``base/lexicon.json``. Each
    stage's ``config.json`` records the SHA-256 of its weight files (checked when loading).

    :param points: per stage, model point counts to ship instead of the trained ones, e.g.
        ``{"base": {"num_points": 1024}}`` for a model trained on 256-point subsets (a set size
        is a sampling choice, not a weight shape).
    :param surface_upsampler: instead of a trained ``upsampler``, add this many points along
        the base cloud's surface (``pipeline.SurfaceUpsampler``).
    :return: ``out_dir``.
    """
    if upsampler is not None and surface_upsampler is not None:
        raise ValueError("give a trained upsampler or a surface upsampler, not both")
    out = Path(out_dir)
    stages = {"base": base, "upsampler": upsampler, "sdf": sdf}
    settings = {"base": sample, "upsampler": upsampler_sample}
    for name, src in stages.items():
        if src is None:
            continue
        export_for_release(src, out / name, dtype=dtype)
        meta = json.loads((out / name / "config.json").read_text())
        model = meta["configs"]["model"]
        for key, value in (points or {}).get(name, {}).items():
            if key not in POINT_FIELDS or key not in model:
                raise ValueError(f"{name}: cannot set {key!r} of a {model}")
            model[key] = int(value)
        if settings.get(name) is not None:
            meta["configs"]["sample"] = to_dict(settings[name])
        write_text_atomic(out / name / "config.json", json.dumps(meta, indent=1))
    spec = {"stages": {k: k for k, v in stages.items() if v is not None}}
    if surface_upsampler is not None:
        spec["stages"]["upsampler"] = {"surface": int(surface_upsampler)}
    write_text_atomic(out / "pipeline.json", json.dumps(spec, indent=1) + "\n")
    if captions is not None:
        write_text_atomic(
            out / "base" / "captions.json", json.dumps(sorted(set(captions)), indent=0)
        )
    if aliases is not None:
        save_lexicon(out / "base", aliases)
    for name, src in stages.items():  # last, once every file of the stage is written
        if src is not None:
            record_hashes(out / name)
    return out


def add_fast_stages(
    out_dir: str | Path,
    students: dict[str, str | Path],
    sample: dict[str, dict] | None = None,
    points: dict[str, dict[str, int]] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Add distilled students to a shipped pipeline directory: ``<stage>_fast/`` each, named in
    ``pipeline.json`` under ``"fast"`` (what ``load_pipeline(fast=True)`` and ``pointdiff sample
    --fast`` load in place of the teacher stage). The teachers stay as they are.

    :param students: stage name (``base``/``upsampler``) -> the student's run or checkpoint.
    :param sample: per stage, ``SampleConfig`` fields replacing the student's own (e.g. the
        measured ``{"steps": 2}``).
    :param points: per stage, set sizes to ship (as ``export_pipeline``).
    :return: ``out_dir``.
    """
    out = Path(out_dir)
    spec_file = out / "pipeline.json"
    if not spec_file.is_file():
        raise ValueError(f"{out} is not a pipeline directory (no pipeline.json)")
    spec = json.loads(spec_file.read_text())
    for name, src in students.items():
        if name not in spec.get("stages", {}):
            raise ValueError(f"{out} has no {name!r} stage to add a distilled student for")
        folder = out / f"{name}_fast"
        export_for_release(src, folder, dtype=dtype)
        meta = json.loads((folder / "config.json").read_text())
        configs = meta["configs"]
        for key, value in (points or {}).get(name, {}).items():
            if key not in POINT_FIELDS or key not in configs["model"]:
                raise ValueError(f"{name}: cannot set {key!r} of a {configs['model']}")
            configs["model"][key] = int(value)
        configs["sample"] = {
            **configs.get("sample", to_dict(SampleConfig())),
            **(sample or {}).get(name, {}),
        }
        write_text_atomic(folder / "config.json", json.dumps(meta, indent=1))
        teacher = out / spec["stages"][name]
        for extra in ("captions.json", "lexicon.json"):  # the prompt reader of its teacher
            if (teacher / extra).is_file():
                write_text_atomic(folder / extra, (teacher / extra).read_text())
        record_hashes(folder)
        spec.setdefault("fast", {})[name] = folder.name
    write_text_atomic(spec_file, json.dumps(spec, indent=1) + "\n")
    return out
