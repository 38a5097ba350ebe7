"""The ``pointdiff`` command: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import sys
from functools import partial

from pointdiff.cli_checks import (
    MAX_GUIDANCE,
    MAX_MESH_GRID,
    MAX_NUM_SAMPLES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    add_device_args,
    device_and_bf16,
    mesh_usage_error,
    number_parser,
    parse_prompt,
    sample_usage_error,
)
from pointdiff.compat.shape.command import (
    add_convert_shape_parser,
    add_shape_sample_args,
    run_convert_shape,
    run_shape_sample,
)
from pointdiff.demo.command import add_demo_parser, run_demo
from pointdiff.release import DEFAULT_CHECKPOINT


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="text -> coloured point cloud (-> mesh)",
        description="Sample coloured point clouds (and meshes) from text prompts. Writes, per "
        "sample, OUT/<nn>_<prompt>/cloud.ply, cloud.npz, cloud.png, prompt.txt and (with an SDF "
        "stage) mesh.glb, mesh.ply, mesh.png. OUT must be empty or new unless --overwrite.",
    )
    # fmt: off
    # One argument per line or two: the table reads better than the formatter's layout.
    p.add_argument("prompts", nargs="*", type=parse_prompt,
                   help="one or more text prompts (batched together; at most "
                        f"{MAX_PROMPT_CHARS} characters each)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="pipeline or model directory (default: the shipped checkpoint)")
    p.add_argument("--out", default="runs/samples",
                   help="output directory; must be empty or not exist yet, unless --overwrite "
                        "(default: runs/samples)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: once the new samples are written, remove "
                        "the sample folders of earlier runs (<nn>_<prompt>/ holding a "
                        "prompt.txt), so no stale file stays beside the new ones; other files "
                        "in OUT are kept")
    p.add_argument("--num-samples", type=number_parser(int, 1, MAX_NUM_SAMPLES), default=1,
                   help=f"samples per prompt (1 to {MAX_NUM_SAMPLES})")
    p.add_argument("--steps", type=number_parser(int, 1, MAX_STEPS), default=None,
                   help=f"sampler steps, 1 to {MAX_STEPS} (default: checkpoint's)")
    p.add_argument("--sampler", choices=["heun", "euler", "dpmpp_2m", "consistency"],
                   default=None, help="(default: checkpoint's)")
    p.add_argument("--fast", action="store_true",
                   help="the checkpoint's distilled stages (few network calls, the guidance scale "
                        "an input; pipeline.json \"fast\") in place of their teachers")
    p.add_argument("--guidance", type=number_parser(float, 0, MAX_GUIDANCE), default=None,
                   help=f"classifier-free guidance scale, 0 to {MAX_GUIDANCE:g} (1: conditional "
                        "model only; default: checkpoint's)")
    p.add_argument("--guidance-interval", type=number_parser(float, 0, finite=False), nargs=2,
                   default=None, metavar=("LO", "HI"),
                   help="guide only where LO < sigma <= HI (0 <= LO < HI; HI may be inf), "
                        "conditional elsewhere (default: checkpoint's)")
    p.add_argument("--stray-ratio", type=number_parser(float, 0), default=None,
                   help="move points farther than this × the median neighbour spacing onto the "
                        "cloud after each stage (default: checkpoint's; 0: keep them)")
    p.add_argument("--seed", type=number_parser(int, 0, MAX_SEED), default=0,
                   help="sample i of the batch uses seed + i (independent of the other prompts)")
    add_device_args(p)
    p.add_argument("--clip-weights", default=None, metavar="FILE",
                   help="local CLIP weights file for a checkpoint with a frozen CLIP text encoder "
                        "(checked against its recorded SHA-256), or point-e's ViT-L/14 (default: "
                        "$POINTDIFF_CLIP_WEIGHTS, the local caches, then a download)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="fetch frozen CLIP weights missing locally (--no-download: fail, naming "
                        "the file to fetch and where to put it)")
    p.add_argument("--stop-after", choices=["base", "upsampler"], default=None,
                   help="stop after this stage (no mesh)")
    p.add_argument("--grid-size", type=number_parser(int, 8, 512), default=64,
                   help="marching-cubes grid for the mesh (8 to 512)")
    p.add_argument("--no-mesh", action="store_true", help="skip meshing")
    g = p.add_argument_group(
        "point-e checkpoints",
        "Sample with OpenAI's released Point-E weights: text -> base40M-textvec -> upsample -> "
        "sdf, or --image -> base40M (base300M, base1B) -> upsample -> sdf. Point-e's sampler by "
        "default (64 Heun steps per stage); faster: --sampler dpmpp_2m --steps 32 --bf16.",
    )
    g.add_argument("--pointe-dir", help="directory with point-e's .pt files (or converted dirs)")
    g.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image prompt (repeatable; needs --pointe-dir)")
    g.add_argument("--pointe-base", default=None,
                   choices=["base40M-textvec", "base40M", "base300M", "base1B"],
                   help="point-e base model (default: base40M-textvec, with --image base40M)")
    g.add_argument("--pointe-exact", action="store_true",
                   help="point-e's floored sigma->t bridge (bit parity) instead of continuous t")
    # fmt: on
    add_shape_sample_args(p)


def _sample_overrides(args) -> dict:
    """SampleConfig fields given on the command line; None keeps the checkpoint's."""
    interval = args.guidance_interval
    return {
        "steps": args.steps,
        "sampler": args.sampler,
        "guidance": args.guidance,
        "stray_ratio": args.stray_ratio,
        "guidance_interval": None if interval is None else tuple(interval),
    }


def _run_sample(args) -> int:
    from pointdiff.outputs import Sample, write_samples
    from pointdiff.pipeline import load_pipeline

    if problem := sample_usage_error(args):
        raise ValueError(problem)  # main prints it as a usage error
    device, bf16 = device_and_bf16(args)
    if args.shape_dir:
        return run_shape_sample(args, device, bf16)
    if args.pointe_dir:  # imported here: it brings open_clip (seconds to import)
        from pointdiff.compat.pointe_pipeline import load_pointe_pipeline

        pipe = load_pointe_pipeline(
            args.pointe_dir,
            image=bool(args.image),
            base=args.pointe_base,
            upsample=args.stop_after != "base",
            sdf=not args.no_mesh and args.stop_after is None,
            clip_weights=args.clip_weights,
            device=device,
            exact_pointe=args.pointe_exact,
            download=args.download,
        )
    else:
        pipe = load_pipeline(
            args.checkpoint,
            device,
            clip_weights=args.clip_weights,
            download=args.download,
            fast=args.fast,
        )
    stages = [s.name for s in pipe.stages]
    if args.stop_after is not None and args.stop_after not in stages:
        raise ValueError(
            f"argument --stop-after: {args.checkpoint} has no {args.stop_after!r} stage "
            f"(stages: {', '.join(stages)})"
        )
    if args.image:
        inputs, labels = args.image, args.image
    else:  # the one reading of the prompts: what the model is given, swaps, warnings
        inputs = pipe.read_prompts(args.prompts)
        labels = [p.text for p in inputs]
        for prompt in inputs:
            for line in prompt.notes():
                print(f"note: {line}", file=sys.stderr)
            for line in prompt.warnings:
                print(f"warning: {line}", file=sys.stderr)
    n = args.num_samples
    batch = [p for p in inputs for _ in range(n)]
    clouds = pipe.sample_clouds(
        batch,
        seed=args.seed,
        stop_after=args.stop_after,
        overrides=_sample_overrides(args),
        bf16=bf16,
    )
    meshes = [None] * len(clouds)
    if not args.no_mesh and args.stop_after is None:
        mesh = partial(pipe.to_mesh, grid_size=args.grid_size, bf16=bf16)
        meshes = [_mesh_with_notes(mesh(c)) for c in clouds]
    labels = [x for x in labels for _ in range(n)]
    samples = [Sample(*row) for row in zip(labels, clouds, meshes, strict=True)]
    # earlier sample folders go only once every new one is written: a failed run keeps them
    folders, removed = write_samples(args.out, samples, overwrite=args.overwrite)
    if removed:
        print(
            f"note: --overwrite: removed {len(removed)} sample folder(s) of an earlier run "
            f"from {args.out}",
            file=sys.stderr,
        )
    for folder in folders:
        print(folder)
    return 0


def _mesh_with_notes(result):
    """The mesh of a ``MeshResult``, its fallback and notes printed as one-line notes."""
    if result.fallback:
        print(f"note: {result.reason}; meshed with Poisson instead", file=sys.stderr)
    for line in result.notes:
        print(f"note: {line}", file=sys.stderr)
    return result.mesh


def _add_mesh(sub) -> None:
    p = sub.add_parser(
        "mesh",
        help="point cloud file -> coloured mesh (GLB/PLY/OBJ)",
        description="Mesh any coloured point cloud (ours, point-e's .npz, a PLY from another "
        "tool) with the trained SDF head or open3d Poisson reconstruction. auto (default): the "
        "SDF head, Poisson where its surface does not fit the cloud. The mesh is written in the "
        "cloud's own coordinates.",
    )
    p.add_argument("cloud", help=".ply or .npz point cloud")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="mesh file: .glb, .ply or .obj, in an existing writable directory",
    )
    p.add_argument("--method", choices=["auto", "sdf", "poisson"], default="auto")
    p.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="pipeline directory holding the SDF head (for --method sdf)",
    )
    p.add_argument(
        "--grid-size",
        type=number_parser(int, 8, MAX_MESH_GRID),
        default=128,
        help=f"marching-cubes samples per axis, 8 to {MAX_MESH_GRID} (memory grows with its cube)",
    )
    p.add_argument(
        "--no-snap",
        action="store_true",
        help="keep the SDF surface as marching cubes gives it (default: vertices "
        "projected onto the cloud's local planes)",
    )
    add_device_args(p)


def _run_mesh(args) -> int:
    from pointdiff.outputs import mesh_cloud_file

    if problem := mesh_usage_error(args):
        raise ValueError(problem)  # main prints it as a usage error
    device, bf16 = device_and_bf16(args)
    try:
        result = mesh_cloud_file(
            args.cloud,
            args.out,
            method=args.method,
            checkpoint=args.checkpoint,
            grid_size=args.grid_size,
            device=device,
            snap=not args.no_snap,
            precision="bf16" if bf16 else "fp32",
        )
    except MemoryError:
        print(
            f"pointdiff mesh: error: out of memory meshing {args.cloud} (try a smaller "
            "--grid-size, or --method poisson)",
            file=sys.stderr,
        )
        return 1
    _mesh_with_notes(result)
    print(args.out)
    return 0


def _add_convert_pointe(sub) -> None:
    p = sub.add_parser(
        "convert-pointe",
        help="convert a released point-e .pt file to a pointdiff checkpoint directory",
        description="Convert once: OUT_DIR gets model.safetensors + config.json (no pickle is "
        "executed when reading the .pt). Place OUT_DIR as <pointe-dir>/<name> to use it with "
        "`pointdiff sample --pointe-dir`.",
    )
    p.add_argument(
        "file", help="point-e checkpoint, e.g. base40M-textvec.pt or base_40m_textvec.pt"
    )
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--name", default=None, help="released model name (default: from the file name)")


def _run_convert_pointe(args) -> int:
    from pointdiff.compat.pointe_pipeline import convert_pointe_file

    print(convert_pointe_file(args.file, args.out_dir, name=args.name))
    return 0


def _add_prompts(sub) -> None:
    sub.add_parser(
        "prompts",
        help="list what the shipped model was trained on",
        description="Print the captions/categories the checkpoint's base model was trained on.",
    ).add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))


def _run_prompts(args) -> int:
    from pointdiff.pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint)
    for caption in pipe.known_captions:
        print(caption)
    if pipe.aliases:
        print(
            f"# and {len(pipe.aliases)} other WordNet nouns, read as the nearest of these "
            "captions' words (base/lexicon.json; `pointdiff sample` names each swap)",
            file=sys.stderr,
        )
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="metrics of generated clouds against references (JSON + Markdown + PNG)",
        description="MMD/COV/1-NNA (CD, EMD), JSD, and with --classifier P-FID/P-IS/category "
        "R-precision. SAMPLES: a folder of .ply/.npz clouds (optional metadata.jsonl with "
        "prompt/category), a point-e arr_0 npz or a coords/colors npz. REFERENCE: a shard "
        "directory (with --split) or an npz.",
    )
    p.add_argument("--samples", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--protocol", choices=["global", "bbox", "lion_box"], default="global")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--split", default="test")
    p.add_argument("--num-points", type=int, default=2048)
    p.add_argument("--metrics", nargs="+", default=["cd", "emd"])
    p.add_argument("--classifier", default=None, help="classifier directory (train_classifier)")
    p.add_argument("--device", default=None)


def _run_eval(args) -> int:
    from pointdiff.evaluation.report import run_eval

    report = run_eval(
        args.samples,
        args.reference,
        args.out,
        protocol=args.protocol,
        seeds=tuple(args.seeds),
        split=args.split,
        num_points=args.num_points,
        metrics=tuple(args.metrics),
        classifier=args.classifier,
        device=args.device,
        progress=True,
    )
    print(f"wrote {args.out}/report.json, report.md, grid.png ({len(report)} entries)")
    return 0


COMMANDS = {
    "eval": (_add_eval, _run_eval),
    "sample": (_add_sample, _run_sample),
    "mesh": (_add_mesh, _run_mesh),
    "prompts": (_add_prompts, _run_prompts),
    "convert-pointe": (_add_convert_pointe, _run_convert_pointe),
    "convert-shape": (add_convert_shape_parser, run_convert_shape),
    "demo": (add_demo_parser, run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointdiff",
        description="Text -> coloured point cloud -> mesh (Point-E architecture, trainable).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    # our errors subclass ValueError; a command's usage errors are raised as ValueError too
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"pointdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
