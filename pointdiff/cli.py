"""The ``pointdiff`` command: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "pointdiff-small"


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="text -> coloured point cloud (-> mesh)",
        description="Sample coloured point clouds (and meshes) from text prompts. Writes, per "
        "sample, OUT/<nn>_<prompt>/cloud.ply, cloud.npz, cloud.png and (with an SDF stage) "
        "mesh.glb, mesh.ply, mesh.png.",
    )
    p.add_argument("prompts", nargs="+", help="one or more text prompts (batched together)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="pipeline or model directory (default: the shipped checkpoint)")  # fmt: skip
    p.add_argument("--out", default="runs/samples", help="output directory")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: checkpoint's)")
    p.add_argument("--sampler", choices=["heun", "euler", "dpmpp_2m"], default=None)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on AMX CPUs and GPUs)")
    p.add_argument("--stop-after", choices=["base", "upsampler"], default=None,
                   help="stop after this stage (no mesh)")  # fmt: skip
    p.add_argument("--grid-size", type=int, default=64, help="marching-cubes grid for the mesh")
    p.add_argument("--no-mesh", action="store_true", help="skip meshing")


def _run_sample(args) -> int:
    from pointdiff.pipeline import load_pipeline, write_sample

    pipe = load_pipeline(args.checkpoint, device=args.device)
    prompts = [p for p in args.prompts for _ in range(args.num_samples)]
    for warning in pipe.prompt_warnings(args.prompts):
        print(f"warning: {warning}", file=sys.stderr)
    overrides = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance}
    clouds = pipe.sample_clouds(prompts, seed=args.seed, stop_after=args.stop_after,
                                overrides=overrides, bf16=args.bf16)  # fmt: skip
    make_mesh = pipe.sdf_model is not None and not args.no_mesh and args.stop_after is None
    for i, (prompt, cloud) in enumerate(zip(prompts, clouds, strict=True)):
        mesh = pipe.to_mesh(cloud, grid_size=args.grid_size) if make_mesh else None
        out = write_sample(Path(args.out), i, prompt, cloud, mesh)
        print(out)
    return 0


def _add_mesh(sub) -> None:
    p = sub.add_parser(
        "mesh",
        help="point cloud file -> coloured mesh (GLB/PLY/OBJ)",
        description="Mesh any coloured point cloud (ours, point-e's .npz, a PLY from another "
        "tool) with the trained SDF head (default) or open3d Poisson reconstruction.",
    )
    p.add_argument("cloud", help=".ply or .npz point cloud")
    p.add_argument("-o", "--out", required=True, help="mesh file: .glb, .ply or .obj")
    p.add_argument("--method", choices=["sdf", "poisson"], default="sdf")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="pipeline directory holding the SDF head (for --method sdf)")  # fmt: skip
    p.add_argument("--grid-size", type=int, default=128)
    p.add_argument("--device", default="cpu")


def _run_mesh(args) -> int:
    from pointdiff.pipeline import mesh_cloud_file

    out = mesh_cloud_file(args.cloud, args.out, method=args.method, checkpoint=args.checkpoint,
                          grid_size=args.grid_size, device=args.device)  # fmt: skip
    print(out)
    return 0


def _add_prompts(sub) -> None:
    sub.add_parser(
        "prompts",
        help="list what the shipped model was trained on",
        description="Print the captions/categories the checkpoint's base model was trained on.",
    ).add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))


def _run_prompts(args) -> int:
    from pointdiff.pipeline import load_pipeline

    for caption in load_pipeline(args.checkpoint).known_captions:
        print(caption)
    return 0


COMMANDS = {
    "sample": (_add_sample, _run_sample),
    "mesh": (_add_mesh, _run_mesh),
    "prompts": (_add_prompts, _run_prompts),
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
