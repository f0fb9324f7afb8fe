"""Validation split and per-epoch batch plans (host side, numpy, deterministic).

Every random choice takes an explicit ``numpy.random.Generator``; the loop
derives one per (seed, epoch) with :func:`epoch_rng`, so an epoch's batches do
not depend on what ran before it (resume and vmapped folds reproduce them).
"""

from __future__ import annotations

import numpy as np

from mer_jax.errors import DataError


def derived_seed(seed: int, stream: int) -> int:
  """A 32-bit seed for one named use (``stream``) of the run seed (independent streams via SeedSequence)."""
  return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0])


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Holds out ``fraction`` of each class for validation.

  labels [N] int -> (train_idx, val_idx), sorted int arrays partitioning range(N).
  Each class gives ``round(fraction * n_c)`` samples, but always leaves one for
  training; if that rounds everything to zero, the largest class gives one.
  """
  labels = np.asarray(labels)
  if not 0 < fraction < 1:
    raise DataError(f"val_fraction={fraction}: must be in (0, 1)")
  val = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    n_val = min(int(round(fraction * idx.size)), idx.size - 1)
    if n_val > 0:
      val.append(rng.permutation(idx)[:n_val])
  val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  if val_idx.size == 0:
    counts = np.bincount(labels)
    c = int(np.argmax(counts))
    if counts[c] < 2:
      raise DataError(
        f"cannot hold out a validation sample from {labels.size} training samples "
        "(every class has one sample); add data or use more subjects"
      )
    val_idx = np.sort(rng.permutation(np.flatnonzero(labels == c))[:1])
  train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
  return train_idx, val_idx


def epoch_plan(labels: np.ndarray, batch_size: int, rng: np.random.Generator, balanced: bool = True) -> np.ndarray:
  """Indices of one epoch's batches, [steps, batch_size] int.

  balanced=True: every class present is drawn ``max_c n_c`` times (each class's
  samples cycled in fresh random orders, i.e. minority classes are oversampled),
  then shuffled; balanced=False: one random permutation. The last batch is
  filled up with further draws of the same scheme so that every batch is full
  (BatchNorm statistics never see padding).
  """
  labels = np.asarray(labels)
  n = labels.size
  if n == 0:
    raise DataError("no training samples")
  if balanced:
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.max())
    parts = []
    for c in classes:
      idx = np.flatnonzero(labels == c)
      reps = -(-target // idx.size)
      parts.append(np.concatenate([rng.permutation(idx) for _ in range(reps)])[:target])
    order = rng.permutation(np.concatenate(parts))
  else:
    order = rng.permutation(n)
  steps = -(-order.size // batch_size)
  extra = steps * batch_size - order.size
  while extra > 0:
    more = rng.permutation(order)[:extra]
    order = np.concatenate([order, more])
    extra -= more.size
  return order.reshape(steps, batch_size)
