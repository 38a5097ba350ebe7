"""The ``pointdiff`` command: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "pointdiff-small"


MAX_PROMPT_CHARS = 300  # about CLIP's 77 tokens; far longer than any training caption
MAX_NUM_SAMPLES = 1000
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_SEED = 2**63 - 1  # seed + i seeds sample i's torch.Generator (at most 2**64 - 1)


def _number_parser(
    kind: type, lo: float | None = None, hi: float | None = None, finite: bool = True
):
    """An argparse ``type``: an int or float in [lo, hi] (NaN never; ±inf only if not ``finite``);
    argparse reports a failure as ``argument --name: <message>`` with exit code 2."""
    name = "an integer" if kind is int else "a number"
    lo_, hi_ = (f"{b}" if kind is int else f"{b:g}" for b in (lo or 0, hi or 0))
    bounds = (f"from {lo_} to {hi_}" if lo is not None and hi is not None
              else f">= {lo_}" if lo is not None else f"<= {hi_}" if hi is not None else "")  # fmt: skip

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {name} {bounds}, got {text!r}") from None
        if math.isnan(value) or (finite and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {name} {bounds}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback message names the type
    return parse


def _parse_prompt(text: str) -> str:
    """An argparse ``type``: a text prompt, non-blank and at most ``MAX_PROMPT_CHARS`` long."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"every prompt must be a non-empty string, got {text!r}")
    if len(text) > MAX_PROMPT_CHARS:
        raise argparse.ArgumentTypeError(f"a prompt may have at most {MAX_PROMPT_CHARS} "
                                         f"characters, got {len(text)} ({text[:40]!r}...)")  # fmt: skip
    return text


def check_device(text: str) -> str:
    """An argparse ``type``: a torch device string that names a device this machine has."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine "
                                             "(no GPU, driver or CUDA build of torch); use cpu")  # fmt: skip
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA "
                                             f"device(s), cuda:0 to cuda:{count - 1}")  # fmt: skip
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use cpu")
    return text


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="text -> coloured point cloud (-> mesh)",
        description="Sample coloured point clouds (and meshes) from text prompts. Writes, per "
        "sample, OUT/<nn>_<prompt>/cloud.ply, cloud.npz, cloud.png, prompt.txt and (with an SDF "
        "stage) mesh.glb, mesh.ply, mesh.png. OUT must be empty or new unless --overwrite.",
    )
    p.add_argument("prompts", nargs="*", type=_parse_prompt,
                   help=f"one or more text prompts (batched together; at most {MAX_PROMPT_CHARS} "
                        "characters each)")  # fmt: skip
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="pipeline or model directory (default: the shipped checkpoint)")  # fmt: skip
    p.add_argument("--out", default="runs/samples",
                   help="output directory; must be empty or not exist yet, unless --overwrite "
                        "(default: runs/samples)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: first remove the sample folders of earlier "
                        "runs (<nn>_<prompt>/ holding a prompt.txt), so no stale file stays "
                        "beside the new ones; other files in OUT are kept")  # fmt: skip
    p.add_argument("--num-samples", type=_number_parser(int, 1, MAX_NUM_SAMPLES), default=1,
                   help=f"samples per prompt (1 to {MAX_NUM_SAMPLES})")  # fmt: skip
    p.add_argument("--steps", type=_number_parser(int, 1, MAX_STEPS), default=None,
                   help=f"sampler steps, 1 to {MAX_STEPS} (default: checkpoint's)")  # fmt: skip
    p.add_argument("--sampler", choices=["heun", "euler", "dpmpp_2m"], default=None)
    p.add_argument("--guidance", type=_number_parser(float, 0, MAX_GUIDANCE), default=None,
                   help=f"classifier-free guidance scale, 0 to {MAX_GUIDANCE:g} (1: conditional "
                        "model only; default: checkpoint's)")  # fmt: skip
    p.add_argument("--guidance-interval", type=_number_parser(float, 0, finite=False), nargs=2,
                   default=None, metavar=("LO", "HI"),
                   help="guide only where LO < sigma <= HI (0 <= LO < HI; HI may be inf), "
                        "conditional elsewhere (default: checkpoint's)")  # fmt: skip
    p.add_argument("--stray-ratio", type=_number_parser(float, 0), default=None,
                   help="move points farther than this × the median neighbour spacing onto the "
                        "cloud after each stage (default: checkpoint's; 0: keep them)")  # fmt: skip
    p.add_argument("--seed", type=_number_parser(int, 0, MAX_SEED), default=0,
                   help="sample i of the batch uses seed + i (independent of the other prompts)")  # fmt: skip
    p.add_argument("--device", type=check_device, default="cpu",
                   help="cpu, cuda, cuda:1, mps (must be available)")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on AMX CPUs and GPUs)")
    p.add_argument("--stop-after", choices=["base", "upsampler"], default=None,
                   help="stop after this stage (no mesh)")  # fmt: skip
    p.add_argument("--grid-size", type=_number_parser(int, 8, 512), default=64,
                   help="marching-cubes grid for the mesh (8 to 512)")  # fmt: skip
    p.add_argument("--no-mesh", action="store_true", help="skip meshing")
    g = p.add_argument_group(
        "point-e checkpoints",
        "Sample with OpenAI's released Point-E weights: text -> base40M-textvec -> upsample -> "
        "sdf, or --image -> base40M (base300M, base1B) -> upsample -> sdf. Point-e's sampler by "
        "default (64 Heun steps per stage); faster: --sampler dpmpp_2m --steps 32 --bf16.",
    )
    g.add_argument("--pointe-dir", help="directory with point-e's .pt files (or converted dirs)")
    g.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image prompt (repeatable; needs --pointe-dir)")  # fmt: skip
    g.add_argument("--pointe-base", default=None, choices=["base40M-textvec", "base40M",
                   "base300M", "base1B"], help="point-e base model (default: base40M-textvec, "
                   "with --image base40M)")  # fmt: skip
    g.add_argument("--clip-weights", default=None, metavar="FILE",
                   help="local CLIP ViT-L/14 weights (default: open_clip's local cache)")  # fmt: skip
    g.add_argument("--pointe-exact", action="store_true",
                   help="point-e's floored sigma->t bridge (bit parity) instead of continuous t")  # fmt: skip


def _sample_usage_error(args) -> str | None:
    """The first problem with arguments of ``sample`` that argparse cannot see alone (checked
    before any model is loaded), as ``argument --name: why``; None when there is none."""
    if bool(args.prompts) == bool(args.image) or (args.image and not args.pointe_dir):
        return "give text prompts or --image FILE (with --pointe-dir), not both"
    lo, hi = args.guidance_interval or (0, math.inf)
    if not lo < hi:
        return f"argument --guidance-interval: LO must be below HI, got {lo:g} {hi:g}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"argument --out: {out} exists and is not a directory"
    if out.is_dir() and not args.overwrite:
        try:
            entries = sorted(e.name for e in out.iterdir())
        except OSError as e:
            return f"argument --out: cannot read {out} ({e.strerror})"
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            n = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            return (f"argument --out: {out} is not empty ({n}: {shown}); "
                    "choose a new folder or pass --overwrite to replace its sample folders")  # fmt: skip
    return None


def _run_sample(args) -> int:
    from pointdiff.compat.pointe_pipeline import load_pointe_pipeline
    from pointdiff.pipeline import load_pipeline, remove_samples, write_sample

    problem = _sample_usage_error(args)
    if problem:
        print(f"pointdiff sample: error: {problem}", file=sys.stderr)
        return 2
    if args.pointe_dir:
        pipe = load_pointe_pipeline(
            args.pointe_dir, image=bool(args.image), base=args.pointe_base,
            upsample=args.stop_after != "base", sdf=not args.no_mesh and args.stop_after is None,
            clip_weights=args.clip_weights, device=args.device, exact_pointe=args.pointe_exact,
        )  # fmt: skip
    else:
        pipe = load_pipeline(args.checkpoint, device=args.device)
    stages = [s.name for s in pipe.stages]
    if args.stop_after is not None and args.stop_after not in stages:
        print(f"pointdiff sample: error: argument --stop-after: {args.checkpoint} has no "
              f"{args.stop_after!r} stage (stages: {', '.join(stages)})", file=sys.stderr)  # fmt: skip
        return 2
    inputs = args.image or args.prompts
    prompts = [p for p in inputs for _ in range(args.num_samples)]
    for prompt in args.prompts:  # empty for --image
        read, swapped = pipe.read_prompt(prompt)
        if swapped:
            words = ", ".join(
                f"{w!r} as {a!r}" if a else f"{w!r} dropped" for w, a in swapped.items()
            )
            print(f"note: words the model never saw (WordNet lexicon): {words}; it reads {read!r}",
                  file=sys.stderr)  # fmt: skip
    for warning in pipe.prompt_warnings(args.prompts):
        print(f"warning: {warning}", file=sys.stderr)
    overrides = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance,
                 "stray_ratio": args.stray_ratio,
                 "guidance_interval": None if args.guidance_interval is None else tuple(args.guidance_interval)}  # fmt: skip
    clouds = pipe.sample_clouds(prompts, seed=args.seed, stop_after=args.stop_after,
                                overrides=overrides, bf16=args.bf16)  # fmt: skip
    if args.overwrite:  # only now: a failed run leaves the earlier samples in place
        removed = remove_samples(Path(args.out))
        if removed:
            print(f"note: --overwrite: removed {len(removed)} sample folder(s) of an earlier run "
                  f"from {args.out}", file=sys.stderr)  # fmt: skip
    make_mesh = not args.no_mesh and args.stop_after is None
    for i, (prompt, cloud) in enumerate(zip(prompts, clouds, strict=True)):
        mesh = _mesh_with_notes(pipe, cloud, args.grid_size) if make_mesh else None
        out = write_sample(Path(args.out), i, prompt, cloud, mesh)
        print(out)
    return 0


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
    p.add_argument("-o", "--out", required=True,
                   help="mesh file: .glb, .ply or .obj, in an existing writable directory")  # fmt: skip
    p.add_argument("--method", choices=["auto", "sdf", "poisson"], default="auto")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="pipeline directory holding the SDF head (for --method sdf)")  # fmt: skip
    p.add_argument("--grid-size", type=_number_parser(int, 8, MAX_MESH_GRID), default=128,
                   help=f"marching-cubes samples per axis, 8 to {MAX_MESH_GRID} (memory grows "
                        "with its cube)")  # fmt: skip
    p.add_argument("--no-snap", action="store_true",
                   help="keep the SDF surface as marching cubes gives it (default: vertices "
                   "projected onto the cloud's local planes)")  # fmt: skip
    p.add_argument("--device", type=check_device, default="cpu",
                   help="cpu, cuda, cuda:1, mps (must be available)")  # fmt: skip


def _mesh_with_notes(pipe, cloud, grid_size: int):
    """``pipe.to_mesh`` with its warnings (e.g. the Poisson fallback) as one-line notes."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = pipe.to_mesh(cloud, grid_size=grid_size)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return mesh


# ----------------------------------------------------------------------------------------------
# mesh: checks of the arguments before any file is read or model loaded

MAX_MESH_GRID = 512  # 512³ float32 samples are 0.5 GB before marching cubes' own copies


def _mesh_usage_error(args) -> str | None:
    """The first problem with ``mesh``'s arguments that argparse cannot see alone, as
    ``argument --name: why``; None when there is none. Runs before the work, so a typo in the
    output path costs nothing."""
    from pointdiff.meshing.mesh import MeshError, check_mesh_output

    try:
        out = check_mesh_output(args.out)
    except MeshError as e:
        return f"argument -o/--out: {e}"
    if out.resolve() == Path(args.cloud).resolve():
        return f"argument -o/--out: {out} is the input cloud; writing the mesh would replace it"
    if args.method != "poisson" and not Path(args.checkpoint).is_dir():
        return (f"argument --checkpoint: {args.checkpoint} is not a directory (the SDF head is "
                "needed unless --method poisson)")  # fmt: skip
    return None


def _run_mesh(args) -> int:
    import warnings

    from pointdiff.pipeline import mesh_cloud_file

    problem = _mesh_usage_error(args)
    if problem:
        print(f"pointdiff mesh: error: {problem}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:  # notes (Poisson fallback, subsampling)
        warnings.simplefilter("always")
        try:
            out = mesh_cloud_file(args.cloud, args.out, method=args.method,
                                  checkpoint=args.checkpoint, grid_size=args.grid_size,
                                  device=args.device, snap=not args.no_snap)  # fmt: skip
        except MemoryError:
            print(f"pointdiff mesh: error: out of memory meshing {args.cloud} (try a smaller "
                  "--grid-size, or --method poisson)", file=sys.stderr)  # fmt: skip
            return 1
        finally:
            for w in caught:
                print(f"note: {w.message}", file=sys.stderr)
    print(out)
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
        print(f"# and {len(pipe.aliases)} other WordNet nouns, read as the nearest of these "
              "captions' words (base/lexicon.json; `pointdiff sample` names each swap)",
              file=sys.stderr)  # fmt: skip
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

    report = run_eval(args.samples, args.reference, args.out, protocol=args.protocol,
                      seeds=tuple(args.seeds), split=args.split, num_points=args.num_points,
                      metrics=tuple(args.metrics), classifier=args.classifier,
                      device=args.device, progress=True)  # fmt: skip
    print(f"wrote {args.out}/report.json, report.md, grid.png ({len(report)} entries)")
    return 0


COMMANDS = {
    "eval": (_add_eval, _run_eval),
    "sample": (_add_sample, _run_sample),
    "mesh": (_add_mesh, _run_mesh),
    "prompts": (_add_prompts, _run_prompts),
    "convert-pointe": (_add_convert_pointe, _run_convert_pointe),
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
    except (ValueError, FileNotFoundError, OSError) as e:  # our errors subclass ValueError
        print(f"pointdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
