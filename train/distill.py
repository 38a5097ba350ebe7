"""Distil a few-call student from a diffusion teacher (``pointdiff.training.distill_run``).

    # 1. guidance: the guidance scale becomes an input (one call replaces the guided pair)
    .venv/bin/python train/distill.py --teacher checkpoints/pointdiff-small/base --method guidance \
        --data runs/data/ship3 --run-dir runs/distill/guidance --max_steps=600 --bf16=True
    # 2a. progressive: halve the steps, round by round (each round's teacher: the last student)
    .venv/bin/python train/distill.py --teacher runs/distill/guidance --method progressive \
        --steps=8 --data ... --run-dir runs/distill/pd8
    # 2b. trajectory: solve the teacher's ODE once, learn the end point from every state on it
    .venv/bin/python train/distill.py --teacher runs/distill/guidance --method trajectory \
        --trajectories=1024 --data ... --run-dir runs/distill/traj

    torchrun --nproc_per_node=8 train/distill.py --teacher pe/base40M-textvec --method guidance ...

The teacher may be a converted point-e model (``pointdiff convert-pointe``): the student keeps
point-e's ε parameterisation. ``--key=value`` overrides go to TrainConfig or DistillConfig.
"""

import sys

from pointdiff.training.distill_run import cli

if __name__ == "__main__":
    cli(sys.argv[1:])
