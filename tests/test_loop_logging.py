"""The shared epoch loop's logging, progress and host/device traffic (mer_jax/train/loop.py), the clu writer of
the command line (mer_jax/main.py ``_make_writer``) and what a failed checkpoint restore does to the process's
stderr / unraisable hook (mer_jax/train/checkpoint.py).

Tiny models on the fabricated 16x16 images of tests/train_data.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import sys
import types

import jax
import numpy as np
import pytest
from clu import metric_writers
from tensorboard.backend.event_processing import event_file_loader

import train_data
from mer_jax.models import build_model
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import loop
from mer_jax.train.state import jit_init, model_apply


class Crash(Exception):
  pass


Recorder = train_data.Recorder  # a metric writer that keeps every write_scalars call


@pytest.fixture(scope="module")
def tiny():
  config = train_data.tiny_config(epochs=3, batch_size=4)
  config.finetune.early_stopping_patience = 0
  model = build_model(config.model)
  v0 = jax.device_get(jit_init(model, jax.random.key(0), train_data.SIZE, 3))
  return config, model, v0


def make_runs(names=("fold_a", "fold_b"), sizes=(12, 8), run_dirs=None):
  """Runs of unequal training-set sizes (a vmapped group then masks the smaller one's extra steps)."""
  ds = train_data.fabricate(subject_sizes=(8, 8, 8))
  runs = []
  for i, (name, n) in enumerate(zip(names, sizes)):
    runs.append(
      loop.RunData(
        name=name,
        train_x=ds.images[:n].copy(),
        train_y=ds.labels[:n].copy(),
        val_x=ds.images[16:].copy(),
        val_y=ds.labels[16:].copy(),
        seed=3 + i,
        run_dir=run_dirs[i] if run_dirs else None,
        metadata={"kind": "finetune", "fingerprint": "fp", "config": {"name": "tiny", "seed": 0}},
      )
    )
  return runs


def train(tiny, mode, runs, **kw):
  config, model, v0 = tiny
  if mode == "single":
    return [loop.fit(model_apply(model), v0, runs[0], config.finetune, num_classes=3, **kw)]
  return loop.fit_many(model_apply(model), [v0] * len(runs), runs, config.finetune, num_classes=3, **kw)


def read_events(logdir) -> dict:
  """{tag: [step, ...]} over every event file under ``logdir`` (in file order, nothing merged or purged)."""
  steps = collections.defaultdict(list)
  for root, _, files in os.walk(logdir):
    for name in sorted(files):
      if "tfevents" not in name:
        continue
      for event in event_file_loader.EventFileLoader(os.path.join(root, name)).Load():
        for value in event.summary.value:
          steps[value.tag].append(int(event.step))
  return steps


@pytest.mark.parametrize("mode", ["single", "group"])
def test_a_resumed_run_continues_the_tensorboard_steps(tiny, tmp_path, mode):
  """Crash after epoch 1, resume: no (tag, step) is written twice, the per-step losses cover optimiser steps
  1..N without a gap, and every fold has its per-epoch scalars for epochs 0, 1, 2."""
  names = ["fold_a"] if mode == "single" else ["fold_a", "fold_b"]
  if mode == "single":
    runs = make_runs(names[:1], run_dirs=[str(tmp_path / "run")])
    kw = {}
  else:
    runs = make_runs(names)
    kw = {"group_dir": str(tmp_path / "group")}
  logdir = str(tmp_path / "tb")

  def crash(epoch):
    if epoch == 0:
      raise Crash()

  writer = metric_writers.create_default_writer(logdir, asynchronous=False)
  with pytest.raises(Crash):
    train(tiny, mode, runs, writer=writer, log_every_steps=1, progress=False, on_epoch_end=crash, **kw)
  writer.close()
  writer = metric_writers.create_default_writer(logdir, asynchronous=False)
  results = train(tiny, mode, runs, writer=writer, log_every_steps=1, progress=False, **kw)
  writer.close()
  assert [r.resumed_from_epoch for r in results] == [1] * len(names)
  assert [r.epochs_trained for r in results] == [3] * len(names)

  steps = read_events(logdir)
  for tag, seen in steps.items():
    assert len(seen) == len(set(seen)), f"{tag}: steps written twice {sorted(seen)}"
  per_step = sorted(set().union(*(steps[f"{n}/step_train_loss"] for n in names)))
  assert per_step == list(range(1, len(per_step) + 1)), per_step
  # the largest fold is active in every step of the group
  config = tiny[0]
  n_a = len(
    loop.epoch_plan(
      runs[0].train_y,
      int(config.finetune.batch_size),
      loop.epoch_rng(runs[0].seed, 0),
      bool(config.finetune.balanced_sampling),
    )
  )
  assert sorted(steps[f"{names[0]}/step_train_loss"]) == list(range(1, 3 * n_a + 1))
  for n in names:
    for what in ("train_loss", "val_loss", "val_accuracy", "lr"):
      assert sorted(steps[f"{n}/{what}"]) == [0, 1, 2], (n, what)
  assert steps["steps_per_sec"] and len(set(steps["steps_per_sec"])) == len(steps["steps_per_sec"])


@pytest.mark.parametrize("mode", ["single", "group"])
def test_one_epoch_makes_no_implicit_transfer(tiny, tmp_path, mode, capsys, monkeypatch):
  """Under ``jax.transfer_guard('disallow')`` from the start of the epoch (its batch plan) to its end hook, the
  epoch goes through (steps, per-step scalars, validation, plateau, model selection, checkpoint, progress line):
  every host -> device copy in the loop is an explicit device_put. (On CPU, JAX does not count device -> host
  copies as transfers: those are guarded only on an accelerator.) It also prints the per-epoch line and reports
  clu's steps/s to the writer."""
  config, model, v0 = tiny
  cfg = config.finetune.copy_and_resolve_references()
  cfg.epochs = 1
  dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  runs = make_runs(run_dirs=dirs)[: 1 if mode == "single" else 2]
  rec = Recorder()
  guard = contextlib.ExitStack()
  real_plan = loop.epoch_plan

  on = []

  def plan(*a, **k):
    if not on:
      guard.enter_context(jax.transfer_guard("disallow"))
      on.append(True)
    return real_plan(*a, **k)

  monkeypatch.setattr(loop, "epoch_plan", plan)
  guarded = []

  def end(epoch):
    guarded.append(bool(on))
    guard.close()
    on.clear()

  kw = dict(num_classes=3, writer=rec, log_every_steps=1, checkpoint_async=False, on_epoch_end=end)
  with guard:
    if mode == "single":
      res = [loop.fit(model_apply(model), v0, runs[0], cfg, **kw)]
    else:
      res = loop.fit_many(model_apply(model), [v0] * 2, runs, cfg, group_dir=str(tmp_path / "group"), **kw)
  assert guarded == [True]
  assert [r.epochs_trained for r in res] == [1] * len(runs)
  assert all(ckpt.latest_epoch(d, "best") == 0 for d in dirs[: len(runs)])
  written = {k for _, s in rec.calls for k in s}
  assert {"fold_a/step_train_loss", "fold_a/val_accuracy", "steps_per_sec", "uptime"} <= written, written
  out = capsys.readouterr().out
  if mode == "single":
    pattern = (
      r"\[fold_a\] epoch 1/1 loss \d\.\d{4} val_loss \d\.\d{4} val_acc \d\.\d{3} lr 0\.01 \* \| "
      r"[\d.e+]+ steps/s, 0:00:\d\d elapsed, ETA <= 0:00:00\n"
    )
  else:
    pattern = (
      r"\[fold_a\.\.fold_b \(2 vmapped\)\] epoch 1/1 active 2/2 val_acc \[\d\.\d\d \d\.\d\d\] \| "
      r"[\d.e+]+ steps/s, 0:00:\d\d elapsed, ETA <= 0:00:00\n"
    )
  assert re.fullmatch(pattern, out), out


def test_another_fold_grouping_is_logged_before_its_latest_is_deleted(tiny, tmp_path, caplog):
  config, model, v0 = tiny
  cfg = config.finetune.copy_and_resolve_references()
  cfg.epochs = 1
  group = str(tmp_path / "group")
  loop.fit_many(model_apply(model), [v0, v0], make_runs(), cfg, num_classes=3, group_dir=group, progress=False)
  assert ckpt.latest_epoch(group, "latest") == 1
  with caplog.at_level(logging.WARNING):
    res = loop.fit_many(
      model_apply(model), [v0, v0], make_runs(("fold_a", "fold_c")), cfg, num_classes=3, group_dir=group, progress=False
    )
  assert res[0].resumed_from_epoch == 0
  text = caplog.text
  assert (
    f"{os.path.join(group, 'latest')} holds the vmapped group ['fold_a', 'fold_b'], not ['fold_a', 'fold_c']" in text
    and "deleting it" in text
  ), text
  assert ckpt.read_metadata(group, "latest")["runs"] == ["fold_a", "fold_c"]


def test_only_the_primary_process_writes_tensorboard_files(tmp_path, monkeypatch):
  from mer_jax import main
  from mer_jax.train import distributed

  for primary, name in ((True, "p0"), (False, "p1")):
    monkeypatch.setattr(distributed, "is_primary", lambda p=primary: p)
    writer = main._make_writer(str(tmp_path / name))
    writer.write_scalars(0, {"x": 1.0})
    writer.close()
  assert read_events(tmp_path / "p0" / "tb")["x"] == [0]
  assert not os.path.exists(tmp_path / "p1" / "tb")


def _unraisable(exc: BaseException):
  return types.SimpleNamespace(
    exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__, err_msg=None, object=None
  )


def test_a_failed_restore_leaves_stderr_alone_and_filters_only_closed_loop_callbacks(tmp_path, monkeypatch):
  """While a restore fails, ``sys.stderr`` stays the process's own (another thread's output is not swallowed);
  the unraisable hook is wrapped once and drops only asyncio's 'Event loop is closed'."""
  ckpt.save(str(tmp_path), "latest", 1, {"a": np.arange(4.0)}, {"x": 1})
  seen = []
  real_manager = ckpt._manager

  def manager(*a, **k):
    mngr = real_manager(*a, **k)

    def restore(*_a, **_k):
      seen.append((sys.stderr, sys.unraisablehook))
      raise ValueError("unreadable")

    mngr.restore = restore
    return mngr

  monkeypatch.setattr(ckpt, "_manager", manager)
  passed = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: passed.append(u.exc_value))
  stderr = sys.stderr
  for _ in range(2):
    with pytest.raises(ckpt.CorruptCheckpointError, match="latest/1 is unreadable"):
      ckpt.restore(str(tmp_path), "latest")
  assert [s for s, _ in seen] == [stderr, stderr] and sys.stderr is stderr
  hook = sys.unraisablehook
  assert [h for _, h in seen] == [hook, hook]  # installed once, never swapped back and forth

  closed = asyncio.new_event_loop()
  closed.close()
  try:
    closed.call_soon(print)
  except RuntimeError as e:
    asyncio_error = e
  assert "Event loop is closed" in str(asyncio_error)
  other = RuntimeError("Event loop is closed")  # same text, not raised by asyncio
  hook(_unraisable(asyncio_error))
  hook(_unraisable(ValueError("x")))
  hook(_unraisable(other))
  assert [type(e).__name__ for e in passed] == ["ValueError", "RuntimeError"] and passed[1] is other
