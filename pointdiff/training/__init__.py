"""Training: ``loop.train(model, loss_fn, data, cfg, run_dir)`` trains any module on a per-sample
loss and knows no stages. Around it:

* ``objectives``: the diffusion model (network in its preconditioner) and each stage's loss;
* ``sdf``, ``classifier``: the SDF head's dataset and loss; the evaluation classifier's training;
* ``run``: a base/upsampler training run from the command line (``train/train_*.py``);
* ``optim``, ``batches``, ``run_dir``, ``rng``: the loop's optimizer step, resumable batch
  stream, run directory (log, checkpoints, resume) and RNG states;
* ``distributed``, ``fsdp``: process groups, DDP and FSDP.
"""
