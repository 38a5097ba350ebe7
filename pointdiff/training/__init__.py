"""Training: ``loop.train(model, loss_fn, data, cfg, run_dir)`` trains any module on a per-sample
loss and knows no stages. Around it:

* ``objectives``: the diffusion model (network in its preconditioner) and each stage's loss;
* ``sdf``, ``classifier``: the SDF head's dataset and loss; the evaluation classifier's training;
* ``run``: a base/upsampler training run from the command line (``train/train_*.py``);
  ``text_cache``: a frozen text encoder's table, computed once beside the shards;
* ``optim``, ``batches``, ``run_dir``, ``rng``, ``preemption``: the loop's optimizer step,
  resumable batch stream (one persistent DataLoader), run directory (log, checkpoints, resume),
  RNG states, and the clean stop on SIGTERM/SIGUSR1;
* ``distributed``, ``fsdp``: process groups (torchrun or srun), DDP and FSDP (with activation
  checkpointing).
"""
