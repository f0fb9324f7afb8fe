"""Small fabricated ArrayDatasets and tiny configs for the training tests (not SynthME: no files, instant)."""

from __future__ import annotations

import numpy as np

from mer_jax import config_defaults
from mer_jax.data.types import ArrayDataset

SIZE = 16


def fabricate(
  subject_sizes=(5, 7, 6, 4),
  num_classes: int = 3,
  size: int = SIZE,
  seed: int = 0,
  source: str = "casme2",
  prefix: str = "s",
) -> ArrayDataset:
  """Noise images whose class shows as a bright quadrant (learnable), subjects of unequal size."""
  rng = np.random.default_rng(seed)
  images, labels, subjects, clips = [], [], [], []
  for si, n in enumerate(subject_sizes):
    for j in range(n):
      y = (si + j) % num_classes
      x = rng.uniform(0.0, 0.4, (size, size, 3)).astype(np.float32)
      h = size // 2
      r, c = divmod(y, 2)
      x[r * h : (r + 1) * h, c * h : (c + 1) * h] += 0.5
      images.append(x)
      labels.append(y)
      subjects.append(f"{source}/{prefix}{si:02d}")
      clips.append(f"{prefix}{si:02d}_clip{j:02d}")
  n = len(labels)
  return ArrayDataset(
    images=np.stack(images),
    labels=np.asarray(labels, np.int32),
    subjects=np.asarray(subjects),
    sources=np.asarray([source] * n),
    clip_ids=np.asarray(clips),
    class_names=tuple(["negative", "positive", "surprise"][:num_classes]),
  )


def tiny_config(epochs: int = 3, batch_size: int = 8):
  c = config_defaults.get_base_config()
  c.name = "tiny"
  c.image_size = SIZE
  m = c.model
  m.stem_features, m.growth_rate, m.block_layers, m.reduction, m.head_pool = 4, 4, (1, 1), 2, 2
  m.num_classes = 3
  for t in (c.pretrain, c.finetune):
    t.batch_size, t.epochs = batch_size, epochs
    t.plateau_patience, t.early_stopping_patience = 2, 2
  c.data.micro = ("casme2",)
  c.data.macro = ("ck",)
  c.checkpoint_every_epochs = 1
  c.bootstrap_samples = 50
  return c


class Recorder:
  """A clu-style metric writer that keeps every ``write_scalars`` call: [(step, {name: value})]."""

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append((int(step), dict(scalars)))

  def flush(self):
    pass

  def close(self):
    pass
