"""Train the upsampler (low-res cloud -> more points; Point-E's 1024 -> 4096 stage).

    .venv/bin/python train/train_upsampler.py upsample_small --data runs/data/shapenet \
        --run-dir runs/up_small [--text none | clip:ARCH:TAG | small] [--resume] [--key=value ...]

Each training cloud of num_cond_points + num_points points (4096) is split into its
farthest-point subset (the low-res condition, 1024) and the remaining points (the 3072
targets): see ``pointdiff.training.objectives.UpsamplerLoss``. Overrides go to UpsamplerConfig,
TrainConfig or DiffusionConfig by field name (e.g. ``--low_res_noise=0.02``).
``--init-from pe/upsample`` (a converted point-e upsampler) fine-tunes it with point-e's own loss
on its linear schedule (``pointdiff.training.pointe_objective``).
"""

import sys

from pointdiff.training.run import cli

if __name__ == "__main__":
    cli("upsampler", sys.argv[1:])
