"""Train the base text -> point-cloud denoiser (Point-E's base model, EDM formulation).

    .venv/bin/python train/train_base.py small --data runs/data/shapenet --run-dir runs/base_small \
        [--text clip:ViT-L-14:openai | small | tiny | none] [--clip-weights PATH] \
        [--resume] [--stop-at STEP] [--key=value ...]

    torchrun --nproc_per_node=8 train/train_base.py base40M --data ... --run-dir ... --batch_size=64

``--key=value`` overrides go to DenoiserConfig, TrainConfig or DiffusionConfig by field name
(e.g. ``--width=384 --lr=3e-4 --max_steps=200000 --bf16=True``). The run is set up in
``pointdiff.training.run``; the loss is ``pointdiff.training.objectives.BaseLoss``.

Fine-tune OpenAI's released Point-E base model (converted by ``pointdiff convert-pointe``) with
point-e's own loss (``pointdiff.training.pointe_objective``), chosen from the checkpoint:

    .venv/bin/python train/train_base.py --init-from pe/base40M-textvec --data ... --run-dir ...
"""

import sys

from pointdiff.training.run import cli

if __name__ == "__main__":
    cli("base", sys.argv[1:])
