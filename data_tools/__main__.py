"""``python -m data_tools <command> ...``: convert mesh collections into pointdiff data shards.

Commands: shapenet, objaverse, sweethome3d, folder (convert meshes), clouds (resample coloured
point clouds, e.g. Cap3D's), merge (pack after a job array), preview (PNG contact sheet). Every
conversion writes OUT/{meta.json,index.jsonl,shard-*}, OUT/errors.jsonl, OUT/filtered.jsonl,
OUT/summary.json and resumable per-object work files in OUT/work/.
``captions SHARD_DIR`` adds natural captions to a converted index (data_tools/captions.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from data_tools import captions, clouds, folder, objaverse, runner, shapenet, sweethome3d
from data_tools.jobs import DEFAULT_SPLIT, Settings, SourceError
from data_tools.listing import listed_jobs
from data_tools.preview import preview
from data_tools.work_files import OutputError, RunError
from data_tools.workers import available_cpus

#: options of a run, not of its source: they do not change the list of objects
_RUN_OPTIONS = {
    "out",
    "workers",
    "limit",
    "part_index",
    "num_parts",
    "retry_failed",
    "objects_per_shard",
    "no_progress",
    "timeout",
    "num_points",
    "oversample",
    "views",
    "sdf_queries",
    "max_disagree",
    "max_faces",
    "allow_missing_assets",
    "download_processes",
}


def _positive(text: str) -> int:
    """argparse type: an integer ≥ 1 (argparse names the option in its error)."""
    return _int_at_least(text, 1)


def _non_negative(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        what = "positive" if low == 1 else f"at least {low}"
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def _workers(text: str) -> int:
    """argparse type: a positive integer, or ``auto`` (the CPUs this process may use)."""
    return available_cpus() if text == "auto" else _positive(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be ≥ 0 seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory (shards, work files, logs)")
    g.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes, or auto: the CPUs allowed by affinity and cgroup (default 1)",
    )
    g.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        help="seconds per object before it fails as `timeout` (0: no limit; default 300)",
    )
    g.add_argument(
        "--limit", type=_positive, help="convert only N objects (a seeded random subset)"
    )
    g.add_argument(
        "--seed", type=_non_negative, default=0, help="seed for sampling, splits and --limit"
    )
    g.add_argument(
        "--part-index", type=_non_negative, default=0, help="this task's part (job arrays)"
    )
    g.add_argument(
        "--num-parts",
        type=_positive,
        default=1,
        help="parts in the job array; >1 skips packing: run `merge` at the end",
    )
    # the names these options had before "shard" came to mean only the data shard files
    hidden = {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    g.add_argument("--shard-index", type=_non_negative, dest="part_index", **hidden)
    g.add_argument("--num-shards", type=_positive, dest="num_parts", **hidden)
    g.add_argument("--retry-failed", action="store_true", help="retry objects that failed before")
    g.add_argument("--objects-per-shard", type=_positive, default=256)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = p.add_argument_group("conversion (stored in OUT/work/settings.json)")
    c.add_argument(
        "--num-points", type=_positive, default=4096, help="points per cloud (after FPS)"
    )
    c.add_argument("--oversample", type=_positive, default=32768, help="surface points before FPS")
    c.add_argument(
        "--views",
        type=_non_negative,
        default=20,
        help="viewpoints for visible-surface filtering (0: keep hidden surfaces)",
    )
    c.add_argument(
        "--sdf-queries", type=_non_negative, default=8192, help="SDF samples per object (0: none)"
    )
    c.add_argument(
        "--max-disagree",
        type=_fraction,
        default=0.05,
        help="sign-test disagreement above which sdf_reliable is false",
    )
    c.add_argument("--max-faces", type=_positive, default=4_000_000, help="fail larger meshes")
    c.add_argument(
        "--allow-missing-assets",
        action="store_true",
        help="convert objects whose MTL/texture files are missing (with a warning)",
    )


def _split_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--split",
        default=default,
        help=f"split name for all, or fractions hashed by id (default {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapenet", help="ShapeNetCore v2 folder (synset/id/models/*.obj)")
    p.add_argument("root", help="ShapeNetCore.v2 directory")
    p.add_argument("--table", help="all.csv-style split table (default: root/all.csv|models.csv)")
    p.add_argument("--synsets", nargs="*", help="only these synset ids")
    _split_arg(p, "official")
    _common(p)

    p = sub.add_parser("objaverse", help="folder of <uid>.glb (or --download) + captions")
    p.add_argument("root", nargs="?", help="directory searched recursively for *.glb")
    p.add_argument(
        "--download",
        metavar="UIDS_FILE",
        help="fetch these uids (one a line) with the objaverse package instead of a root",
    )
    p.add_argument("--download-processes", type=_workers, default=4, help="parallel downloads")
    p.add_argument("--captions", help="Cap3D-style CSV (uid,caption) or JSON {uid: caption}")
    p.add_argument("--licences", nargs="*", help="keep only these licences, e.g. CC-BY-4.0 CC0-1.0")
    p.add_argument(
        "--include-unknown-licences",
        action="store_true",
        help="with --licences, keep objects that name no licence too (research use)",
    )
    p.add_argument(
        "--require-caption",
        action="store_true",
        help="skip objects without a caption (default: use the GLB title)",
    )
    p.add_argument("--test-uids", help="text file of uids assigned to the test split")
    _split_arg(p, DEFAULT_SPLIT)
    _common(p)

    p = sub.add_parser("sweethome3d", help="Sweet Home 3D .sh3f furniture catalogs")
    p.add_argument("catalogs", nargs="*", help=f"*.sh3f files (default: {sweethome3d.DEFAULT_DIR})")
    _split_arg(p, DEFAULT_SPLIT)
    _common(p)

    p = sub.add_parser("folder", help="any directory of OBJ/GLB/glTF/PLY/OFF/STL meshes")
    p.add_argument("root")
    p.add_argument("--name", default="folder", help="source name and id prefix")
    p.add_argument("--captions", help="CSV with columns id (or path/file/name), caption[, licence]")
    p.add_argument("--licence", default="unknown", help="licence for objects the CSV leaves open")
    p.add_argument(
        "--up",
        choices=("auto", "y", "z"),
        default="auto",
        help="up axis of the files (auto: Z for STL, Y otherwise)",
    )
    _split_arg(p, DEFAULT_SPLIT)
    _common(p)

    p = sub.add_parser("clouds", help="coloured point clouds (.ply/.npz/.pt) + captions CSV")
    p.add_argument("--points", required=True, help="directory of <uid>.ply|.npz|.pt (any depth)")
    p.add_argument("--captions", required=True, help="CSV uid,caption (Cap3D) or JSON map")
    p.add_argument("--name", default="objaverse", help="id prefix (default objaverse)")
    p.add_argument("--up", choices=("z", "y"), default="z", help="up axis of the clouds")
    p.add_argument("--test-uids", help="text file of uids assigned to the test split")
    _split_arg(p, DEFAULT_SPLIT)
    _common(p)

    p = sub.add_parser(
        "merge",
        help="pack all work files of OUT (after --num-parts tasks)",
        description="Pack every work file of OUT into shards (after the tasks of a job array). "
        "One process; the arrays stream through, but the sorted object ids and the index lines "
        "stay in memory until index.jsonl is written: about 1.2 KB per object (measured), "
        "so about 1 GB for Objaverse's 800k objects. Give the merge job that much.",
    )
    p.add_argument("out")
    p.add_argument("--objects-per-shard", type=_positive, default=256)

    p = sub.add_parser("preview", help="PNG grid of converted clouds with captions")
    p.add_argument("shards", help="shard directory")
    p.add_argument("--png", required=True, help="output PNG path")
    p.add_argument("--count", type=_positive, default=24)
    p.add_argument("--cols", type=_positive, default=4)
    p.add_argument("--views", type=_positive, default=2, help="azimuths per tile")
    p.add_argument("--size", type=_positive, default=192, help="pixels per view")
    p.add_argument("--split", help="only objects of this split")
    p.add_argument("--seed", type=_non_negative, default=0)

    p = sub.add_parser("captions", help="add natural captions to index.jsonl")
    p.add_argument("shards", help="shard directory (its index.jsonl is rewritten)")
    p.add_argument("--dry-run", action="store_true", help="print 20 objects' captions only")
    p.add_argument("--seed", type=int, default=0, help="added to each object's seed")
    return parser


def _jobs(args) -> list:
    if args.command == "shapenet":
        return shapenet.open_source(args.root, args.table, args.split, args.seed, args.synsets)
    if args.command == "objaverse":
        options = objaverse.Options(
            args.captions,
            args.licences,
            args.include_unknown_licences,
            args.require_caption,
            args.split,
            args.test_uids,
            args.seed,
        )
        if args.download:
            part = (args.part_index, args.num_parts, args.download_processes)
            return objaverse.download_source(args.download, options, *part)
        return objaverse.open_source(args.root, options)
    if args.command == "clouds":
        return clouds.open_source(
            args.points, args.captions, args.name, args.up, args.split, args.test_uids, args.seed
        )
    if args.command == "sweethome3d":
        return sweethome3d.open_source(args.catalogs, args.split, args.seed)
    return folder.open_source(
        args.root, args.name, args.captions, args.licence, args.up, args.split, args.seed
    )


def _listed_jobs(args) -> list:
    """The source's jobs; in a job array, this part's, from a list made once for all parts
    (``data_tools.listing``). Downloads are split by part before they start."""
    if args.num_parts == 1 or getattr(args, "download", None):
        return _jobs(args)
    runner.check_part(args.part_index, args.num_parts)
    key = {k: v for k, v in vars(args).items() if k not in _RUN_OPTIONS}
    part = None if args.limit else (args.part_index, args.num_parts)  # --limit samples all
    return listed_jobs(Path(args.out) / "work", key, lambda: _jobs(args), part)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "num_points", 0) > getattr(args, "oversample", 0):
        parser.error(f"--oversample ({args.oversample}) must be ≥ --num-points ({args.num_points})")
    if args.command == "objaverse" and (args.root is None) == (args.download is None):
        parser.error("objaverse takes a root folder of GLBs or --download UIDS_FILE (one of them)")
    try:
        if args.command == "captions":
            rows = captions.caption_shards(args.shards, args.seed, dry_run=args.dry_run)
            captions.print_sample(rows, 20 if args.dry_run else 3, args.seed)
            print("dry run: nothing written" if args.dry_run else f"wrote {len(rows)} rows")
            return 0
        if args.command == "preview":
            ids = preview(
                args.shards,
                args.png,
                args.count,
                args.cols,
                args.views,
                args.size,
                args.seed,
                args.split,
            )
            print(f"wrote {args.png} ({len(ids)} objects)")
            return 0
        if args.command == "merge":
            summary = runner.merge(args.out, args.objects_per_shard)
        else:
            runner.check_output_dir(args.out)  # before the source is listed
            settings = Settings(
                num_points=args.num_points,
                oversample=args.oversample,
                views=args.views,
                sdf_queries=args.sdf_queries,
                max_disagree=args.max_disagree,
                max_faces=args.max_faces,
                strict_assets=not args.allow_missing_assets,
                seed=args.seed,
            )
            jobs = runner.limit_jobs(_listed_jobs(args), args.limit, args.seed)
            summary = runner.run(
                jobs,
                args.out,
                settings,
                workers=args.workers,
                retry_failed=args.retry_failed,
                part_index=args.part_index,
                num_parts=args.num_parts,
                objects_per_shard=args.objects_per_shard,
                progress=not args.no_progress,
                timeout=args.timeout,
            )
    except (SourceError, RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        print(
            f"finished objects are kept in {args.out}/work: free space (or fix the output) "
            "and rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    except OSError as e:  # e.g. an unreadable captions file or source folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.table())
    if getattr(args, "num_parts", 1) > 1:
        print(
            f"part {args.part_index}/{args.num_parts} done; when all parts are: "
            f"python -m data_tools merge {args.out}"
        )
    elif summary.total and not summary.packed:
        print(
            "error: no object was converted (see the counts above and errors.jsonl)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
