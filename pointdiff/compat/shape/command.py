"""``pointdiff convert-shape`` and ``pointdiff sample --shape-dir``: their arguments and runs
(``pointdiff.cli`` only wires them in).

A *Shap-E directory* holds the released ``.pt`` files under their Shap-E names
(``text300M.pt``, ``decoder.pt``, ``transmitter.pt``) or Shap-E's download names
(``text_cond.pt``, ``vector_decoder.pt``, ``transmitter.pt``), or directories converted once by
``pointdiff convert-shape`` (``text300M/``, ``decoder/``). Sampling needs ``text300M`` and a
decoder: ``decoder`` or, failing that, ``transmitter`` (its decoding half is the same network).

Per prompt and sample, ``OUT/<nn>_<prompt>/`` gets ``latent.npy`` (the flat [1024·1024] latent,
token-major, Shap-E's layout), ``mesh.glb`` + ``mesh.ply`` (the STF mesh with vertex colours),
``render.png`` (the turntable views in one sheet), ``turntable.gif`` and ``prompt.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from pointdiff.compat.shape.convert import (
    DOWNLOAD,
    SHAPE_MODELS,
    build_shape_model,
    convert_shape,
    convert_shape_state_dict,
    load_shape,
    load_shape_state_dict,
)
from pointdiff.compat.shape.sample import GUIDANCE, sample_latents
from pointdiff.compat.shape.transformer import cast_linears
from pointdiff.meshing import NoSurfaceError
from pointdiff.nerf import extract_mesh, pan_cameras, render_views
from pointdiff.nerf.turntable import render_mesh_views, save_turntable

CLIP_ARCH, CLIP_TAG = "ViT-L-14", "openai"  # Shap-E's text model: CLIP ViT-L/14 text features
#: Shap-E's download name of each model (the last part of its URL)
SHAPE_FILES = {name: url.rsplit("/", 1)[1] for name, url in DOWNLOAD.items()}


class ShapeFilesError(FileNotFoundError):
    """Shap-E checkpoints or CLIP missing: the message names each file and where to get it."""


# ----------------------------------------------------------------------------------------------
# Files


def find_shape_file(shape_dir: str | os.PathLike, name: str) -> Path | None:
    """``name/`` (converted), ``name.pt`` or Shap-E's download name in ``shape_dir``, or None."""
    root = Path(shape_dir)
    if (root / name / "config.json").is_file():
        return root / name
    for fname in (f"{name}.pt", SHAPE_FILES[name]):
        if (root / fname).is_file():
            return root / fname
    return None


def check_shape_files(shape_dir: str | os.PathLike) -> dict[str, Path]:
    """:return: ``{"text300M": path, "decoder": path}`` (the decoder may be the transmitter).
    :raises ShapeFilesError: naming every missing file, its URL and where to put it."""
    root = Path(shape_dir)
    text = find_shape_file(root, "text300M")
    dec = find_shape_file(root, "decoder") or find_shape_file(root, "transmitter")
    lines = [] if root.is_dir() else [f"the Shap-E directory {root} does not exist"]
    if text is None:
        lines.append(
            f"  text300M: {DOWNLOAD['text300M']}  (save as {root / SHAPE_FILES['text300M']})"
        )
    if dec is None:
        lines.append(
            f"  decoder: {DOWNLOAD['decoder']}  (save as {root / SHAPE_FILES['decoder']}; "
            f"or the transmitter, {DOWNLOAD['transmitter']})"
        )
    if lines:
        raise ShapeFilesError(
            "Shap-E: missing files; download them (Shap-E's public URLs) into the directory:\n"
            + "\n".join(lines)
            + f"\n  (or convert once: `pointdiff convert-shape FILE.pt {root}/NAME`)"
        )
    return {"text300M": text, "decoder": dec}


def infer_shape_name(path: str | os.PathLike) -> str:
    """The released model a file holds, from its name (Shap-E's or its download name)."""
    stem = Path(path).name.removesuffix(".pt").removesuffix(".safetensors")
    for name, fname in SHAPE_FILES.items():
        if stem in (name, fname.removesuffix(".pt")):
            return name
    raise ValueError(
        f"cannot tell which Shap-E model {Path(path).name} is; pass --name "
        f"({', '.join(SHAPE_MODELS)})"
    )


def load_shape_model(path: Path, name: str) -> torch.nn.Module:
    """A converted directory, or a released ``.pt`` (read with ``weights_only``, checked key by
    key). A transmitter serves as the decoder (its encoder weights are left out)."""
    if path.is_dir():
        return load_shape(path)[0]
    state, cfg, _ = convert_shape_state_dict(load_shape_state_dict(path), name)
    model = build_shape_model(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Arguments


def add_convert_shape_parser(sub) -> None:
    p = sub.add_parser(
        "convert-shape",
        help="convert a released Shap-E .pt file to a safetensors directory",
        description="Convert once: OUT_DIR gets model.safetensors (+ encoder.safetensors for the "
        "transmitter) and config.json with SHA-256s; no pickle is executed reading the .pt. Put "
        "OUT_DIR at <shape-dir>/<name> for `pointdiff sample --shape-dir`.",
    )
    p.add_argument("file", help="Shap-E checkpoint, e.g. text_cond.pt or transmitter.pt")
    p.add_argument("out_dir", help="output directory")
    p.add_argument(
        "--name", choices=list(SHAPE_MODELS), default=None, help="(default: from the file name)"
    )


def run_convert_shape(args) -> int:
    name = args.name or infer_shape_name(args.file)
    print(convert_shape(args.file, args.out_dir, name))
    return 0


def add_shape_sample_args(p: argparse.ArgumentParser) -> None:
    """``--shape-dir`` and its options, on ``pointdiff sample``'s parser."""
    g = p.add_argument_group(
        "Shap-E checkpoints",
        "Sample with OpenAI's released Shap-E weights: text -> text300M latent (64 Heun steps, "
        f"guidance {GUIDANCE['text']:g}) -> STF mesh (--grid-size; Shap-E uses 128) and a "
        "turntable render. Uses --steps, --guidance, --seed, --num-samples, --out, "
        "--clip-weights, --download, --device and --precision (bf16 for the diffusion model).",
    )
    g.add_argument("--shape-dir", default=None, help="directory with Shap-E's .pt files")
    g.add_argument(
        "--shape-render",
        choices=["stf", "nerf", "none"],
        default="stf",
        help="turntable of the mesh (stf, fast) or NeRF volume rendering of the field (nerf: "
        "192 network queries per pixel, minutes on a CPU) (default stf)",
    )
    g.add_argument(
        "--dense-grid",
        action="store_true",
        help="evaluate the SDF on every grid sample, as Shap-E does (default: coarse-to-fine, "
        "the same mesh unless a feature thinner than 8 voxels, which no queried sample comes "
        "near, is 1.5x steeper than the field anywhere else; see pointdiff.nerf.stf)",
    )
    g.add_argument("--render-size", type=int, default=128, help="turntable pixels (default 128)")
    g.add_argument("--render-views", type=int, default=20, help="pan camera views (default 20)")
    g.add_argument(
        "--clip-features",
        default=None,
        metavar="FILE.npy",
        help="precomputed CLIP ViT-L/14 text features, one L2-normalised 768-d row per prompt "
        "(instead of running CLIP)",
    )


# ----------------------------------------------------------------------------------------------
# Sampling


def _text_features(args, prompts: list[str], dim: int, device: str) -> torch.Tensor:
    """[len(prompts), dim] L2-normalised CLIP ViT-L/14 text features (Shap-E's condition)."""
    if args.clip_features:
        feats = torch.from_numpy(np.load(args.clip_features)).float()
        if feats.shape != (len(prompts), dim):
            raise ValueError(
                f"--clip-features: expected [{len(prompts)}, {dim}] (one row per prompt), "
                f"got {list(feats.shape)}"
            )
        return feats.to(device)
    from pointdiff.conditioning.text import TextEncoder, TextEncoderError

    try:
        enc = TextEncoder.from_pretrained(
            CLIP_ARCH, CLIP_TAG, weights=args.clip_weights, download=args.download
        )
    except TextEncoderError as e:
        raise ShapeFilesError(
            "Shap-E's text300M is conditioned on CLIP ViT-L/14 text features (768-d, "
            f"L2-normalised): {e}\n  or pass --clip-features FILE.npy with one row per prompt"
        ) from e
    return enc.to(device).eval().embed(prompts)


def _folder(out: Path, i: int, prompt: str) -> Path:
    s = "".join(c if c.isalnum() else "_" for c in prompt.lower())
    return out / f"{i:02d}_{'_'.join(filter(None, s.split('_')))[:40] or 'sample'}"


def run_shape_sample(args, device: str, bf16: bool) -> int:
    """``pointdiff sample --shape-dir DIR PROMPT…`` (usage already checked by the CLI)."""
    if args.pointe_dir:
        raise ValueError("argument --shape-dir: not allowed with --pointe-dir")
    files = check_shape_files(args.shape_dir)
    prompts = [str(p) for p in args.prompts]
    denoiser = load_shape_model(files["text300M"], "text300M").to(device)
    cond = _text_features(args, prompts, denoiser.cfg.cond_dim, device)
    decoder_name = "decoder" if "decoder" in files["decoder"].name else "transmitter"
    decoder = load_shape_model(files["decoder"], decoder_name).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cams = pan_cameras(args.render_size, args.render_views, device=device)
    autocast = contextlib.nullcontext()
    if bf16:  # the linear weights cast once instead of by autocast on every call (same output)
        autocast = torch.autocast(torch.device(device).type, torch.bfloat16)
        cast_linears(denoiser)
    n = args.num_samples
    for i, (prompt, c) in enumerate((p, c) for p, c in zip(prompts, cond, strict=True)):
        gen = torch.Generator(device).manual_seed(args.seed + i)  # one seed per prompt
        with autocast:  # the diffusion model only (Shap-E: use_fp16); decoding stays fp32
            latents = sample_latents(
                denoiser,
                c[None].expand(n, -1),
                args.guidance,
                steps=args.steps or 64,
                generator=gen,
            ).float()
        for j, latent in enumerate(latents):
            folder = _folder(out, i * n + j, prompt)
            folder.mkdir(exist_ok=True)
            _write_sample(folder, prompt, latent, decoder, cams, args)
            print(folder)
    return 0


@torch.no_grad()
def _write_sample(folder: Path, prompt: str, latent, decoder, cams, args) -> None:
    np.save(folder / "latent.npy", latent.cpu().numpy())
    (folder / "prompt.txt").write_text(prompt + "\n")
    fields = decoder.fields(decoder.latent_to_params(latent[None]))
    try:
        stride = 1 if args.dense_grid else 8
        mesh = extract_mesh(
            fields.sdf, fields.texture, grid_size=args.grid_size, coarse_stride=stride
        )
    except NoSurfaceError:  # Shap-E returns a 3-vertex placeholder here; we say so instead
        mesh = None
        print(f"warning: {folder.name}: the SDF is nowhere inside; no mesh", file=sys.stderr)
    if mesh is not None:
        mesh.save(folder / "mesh.glb")
        mesh.save(folder / "mesh.ply")
    if args.shape_render == "nerf":
        images = render_views(fields.nerf, cams)
    elif args.shape_render == "stf" and mesh is not None:
        images = render_mesh_views(mesh, cams)
    else:
        return
    save_turntable(images, folder / "render.png", folder / "turntable.gif")
