"""The synthetic CDE data of benchmarks/loso_bench.py has the paper's LOSO structure."""

import collections

import numpy as np

from benchmarks import loso_bench


def test_synthetic_cde_has_the_cde_subjects_and_clip_counts():
  ds = loso_bench.synthetic_cde(size=8)
  assert len(ds) == 442 and ds.images.shape == (442, 8, 8, 3) and ds.images.dtype == np.float32
  subjects = collections.Counter(str(s).split("/")[0] for s in sorted(set(ds.subjects)))
  assert subjects == {"casme2": 24, "samm": 28, "smic": 16}          # 68 LOSO folds
  clips = collections.Counter(str(s) for s in ds.sources)
  assert clips == {"casme2": 145, "samm": 133, "smic": 164}
  assert all(str(subj).startswith(src + "/") for subj, src in zip(ds.subjects, ds.sources))
  assert set(np.unique(ds.labels)) == {0, 1, 2}
  # The class is the bright quadrant: the quadrant means separate the classes.
  q = ds.images[:, :4, :4].mean(axis=(1, 2, 3))
  assert q[ds.labels == 0].min() > q[ds.labels != 0].max()
