"""The synthetic CDE data of benchmarks/loso_bench.py has the paper's LOSO structure; the benchmarks' helpers."""

import argparse
import collections
import os
from unittest import mock

import numpy as np
import pytest

from benchmarks import loso_bench


def test_synthetic_cde_has_the_cde_subjects_and_clip_counts():
  ds = loso_bench.synthetic_cde(size=8)
  assert len(ds) == 442 and ds.images.shape == (442, 8, 8, 3) and ds.images.dtype == np.float32
  subjects = collections.Counter(str(s).split("/")[0] for s in sorted(set(ds.subjects)))
  assert subjects == {"casme2": 24, "samm": 28, "smic": 16}  # 68 LOSO folds
  clips = collections.Counter(str(s) for s in ds.sources)
  assert clips == {"casme2": 145, "samm": 133, "smic": 164}
  assert all(str(subj).startswith(src + "/") for subj, src in zip(ds.subjects, ds.sources))
  assert set(np.unique(ds.labels)) == {0, 1, 2}
  # The class is the bright quadrant: the quadrant means separate the classes.
  q = ds.images[:, :4, :4].mean(axis=(1, 2, 3))
  assert q[ds.labels == 0].min() > q[ds.labels != 0].max()


class FakeClock:
  """perf_counter stand-in: successive (start, stop) reads are ``intervals`` apart."""

  def __init__(self, intervals):
    self.intervals, self.reads, self.now = list(intervals), 0, 100.0

  def __call__(self) -> float:
    if self.reads % 2:
      self.now += self.intervals[self.reads // 2]
    self.reads += 1
    return self.now


def test_peaks_measure_positive_ceilings_and_map_datasheets():
  from benchmarks import peaks

  # The rates are work / best time: run with a clock whose timed intervals are known (3, 1, 2 ms: best 1 ms).
  clock = FakeClock([0.003, 0.001, 0.002])
  with mock.patch.object(peaks.time, "perf_counter", clock):
    assert peaks.matmul_gflops(n=128, repeats=3) == pytest.approx(2 * 128**3 / 0.001 / 1e9)
  assert clock.reads == 6  # one start and one stop per repeat
  with mock.patch.object(peaks.time, "perf_counter", FakeClock([0.004, 0.002, 0.008])):
    # y = 2x + 1 over 4 MiB of float32: 4 MiB read + 4 MiB written in the best 2 ms
    assert peaks.bandwidth_gbs(mbytes=4, repeats=3) == pytest.approx(2 * 4 * 2**20 / 0.002 / 1e9)
  fake = lambda kind: type("Dev", (), {"device_kind": kind})()
  assert peaks.datasheet(fake("NVIDIA H100 80GB HBM3")) == peaks.DATASHEET["H100 SXM"]
  assert peaks.datasheet(fake("NVIDIA H100 PCIe")) == peaks.DATASHEET["H100 PCIe"]
  assert peaks.datasheet(fake("NVIDIA H200"))["bandwidth"] == 4800.0
  assert peaks.datasheet(fake("cpu")) is None
  assert peaks.describe(50.0, 200.0, 1000.0, "GB/s") == (
    "50.0 GB/s = 25.0% of the measured peak (200.0 GB/s); 5.0% of the datasheet's 1,000 GB/s"
  )
  assert peaks.describe(50.0, 200.0, None, "GB/s") == "50.0 GB/s = 25.0% of the measured peak (200.0 GB/s)"


def test_loso_bench_workers_drop_only_the_parent_options():
  argv = ["--folds", "8", "--mode", "all", "--workdir=/tmp/x", "--shards", "2", "--epochs=2", "--mode=both"]
  assert loso_bench._worker_argv(argv) == ["--folds", "8", "--epochs=2"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinities are Linux-only")
def test_train_step_bench_share_rows_run_on_one_core_and_restore_the_threads():
  from benchmarks import train_step_bench as tb

  args = argparse.Namespace(batch=32, size=112, steps=2)
  assert vars(tb.share_args(args, 2)) == dict(batch=16, size=112, steps=2) and args.batch == 32
  assert tb.share_args(args, 1).batch == 32
  torch = pytest.importorskip("torch")
  masks = lambda: {t: os.sched_getaffinity(t) for t in tb._process_threads()}
  before, threads_before = masks(), torch.get_num_threads()
  core = min(os.sched_getaffinity(0))
  seen = []

  def block(n):
    seen.append((masks(), torch.get_num_threads()))
    if n < 0:
      raise RuntimeError("a failing block")
    return float(n)

  variant = tb.on_one_core(dict(block=block, compile_s=1.5), torch_threads=1)
  assert variant["block"](3) == 3.0 and variant["compile_s"] == 1.5
  inside, threads_inside = seen[-1]
  assert set(inside) >= set(before) and all(m == {core} for m in inside.values()), inside
  assert threads_inside == 1
  assert masks() == before and torch.get_num_threads() == threads_before  # restored after the block
  with pytest.raises(RuntimeError, match="a failing block"):
    variant["block"](-1)
  assert masks() == before and torch.get_num_threads() == threads_before  # and after a failing one
