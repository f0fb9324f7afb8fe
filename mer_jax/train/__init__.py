"""Training: train state, pure steps, sampling, the epoch loop, LOSO, data parallelism, checkpoints.

Modules
-------
state       TrainState (params, batch_stats, Adam state, reduce-on-plateau state, step, epoch).
steps       pure ``train_step`` / ``eval_step`` with the cross-entropy of eq. (10).
sampling    stratified validation split, class-balanced epoch plans.
parallel    data parallelism over local devices (jax.sharding Mesh / NamedSharding).
host_memory whether glibc keeps freed memory for reuse (XLA:CPU's per-step scratch buffers), set before JAX starts.
loop        ``fit`` (one run) and ``fit_many`` (several runs as one vmapped program).
loso        leave-one-subject-out over the subjects of an ArrayDataset.
checkpoint  orbax CheckpointManager layout (best + latest), resume, ``load_for_inference``.
pretrain    pretraining on the merged macro data (Section 4.1.3).
transfer    pretrained backbone + attention into a fine-tuning model (head re-initialised on a class mismatch).
fingerprint config fingerprints that guard resumed workdirs.
"""
