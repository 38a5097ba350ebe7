"""Add distilled students (``train/distill.py`` runs) to a shipped pipeline directory, beside
their teachers: ``pointdiff sample --fast`` then uses them.

    .venv/bin/python train/export_fast.py checkpoints/pointdiff-small --base runs/distill/traj \
        --base-points 1024 --steps 2
"""

import argparse

from pointdiff.release import add_fast_stages

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="the pipeline directory (with pipeline.json)")
    ap.add_argument("--base", default=None, help="the base stage's student: run or ckpt dir")
    ap.add_argument("--upsampler", default=None, help="the upsampler's student: run or ckpt dir")
    ap.add_argument("--steps", type=int, default=None, help="the students' sampling steps")
    ap.add_argument("--sampler", default=None, help="the students' sampler (default: theirs)")
    ap.add_argument(
        "--surface-projection",
        type=float,
        default=None,
        metavar="S",
        help="passes pulling points onto their local plane after sampling (default: the teacher's)",
    )
    ap.add_argument("--base-points", type=int, default=None, help="ship the base at N points")
    a = ap.parse_args()
    students = {k: v for k, v in (("base", a.base), ("upsampler", a.upsampler)) if v}
    if not students:
        ap.error("give --base and/or --upsampler")
    given = {
        k: v
        for k, v in (
            ("steps", a.steps),
            ("sampler", a.sampler),
            ("surface_projection", a.surface_projection),
        )
        if v is not None
    }
    points = {"base": {"num_points": a.base_points}} if a.base_points else {}
    try:
        print(add_fast_stages(a.out, students, {k: given for k in students}, points))
    except ValueError as e:
        ap.error(str(e))
