"""Crash safety of a LOSO benchmark run (issue 7).

A tiny SynthME benchmark (``configs/synth_demo.py`` shrunk by overrides) runs
through the real CLI (``python -m mer_jax.main``) in a subprocess. A small
wrapper installs one crash hook chosen by the environment variable
``MER_JAX_TEST_CRASH`` and then runs ``mer_jax.main`` as ``__main__``; the hook
SIGKILLs its own process at a deterministic point:

* ``fold``: in the middle of fold 0 (at the start of its 3rd epoch, after the
  epoch-2 ``latest`` checkpoint);
* ``save``: during a checkpoint save (the checkpoint's files are written to
  orbax's temporary directory but the atomic rename that publishes it never
  happens);
* ``between``: right after fold 0's record is written, before fold 1 starts;
* ``report``: half-way through writing results.json (after every fold finished;
  the hook wraps ``reporting.atomic_write_text``, writes half of the JSON into
  its temporary file and dies before the rename).

The same command is re-run after each kill. The benchmark is sized so that the
kills matter: fold 0's best validation epoch comes after the epoch it resumes
from and the predictions are not all one class (both asserted). The final
results.json predictions and every fold's final ``latest`` checkpoint (parameters,
BatchNorm statistics, Adam state, plateau state, step, best weights and the loop's
bookkeeping) must equal those of an uninterrupted run bit for bit, and no kill may
leave a half-written report or fold record visible.

In-process tests (``mer_jax.train.loop.fit`` on a fabricated ArrayDataset) check
that a truncated newest ``latest`` checkpoint is detected and training falls back
to the previous good one with a warning, and that a NaN/Inf loss stops the run
with a message naming the epoch, step and config while keeping the last good
checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_data
from mer_jax.data import synth
from mer_jax.models import build_model
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import loop
from mer_jax.train.state import jit_init, model_apply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

WRAPPER = r"""
import io, os, signal, sys, runpy

point = os.environ.get("MER_JAX_TEST_CRASH", "")

def die(why):
  sys.stderr.write(f"[crash-hook] SIGKILL: {why}\n")
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)

if point == "fold":
  from mer_jax.train import loop
  real_plan = loop.epoch_plan
  seen = []
  def plan(*a, **k):
    run = sys._getframe(1).f_locals.get("run")       # loop.fit's RunData
    if run is not None and run.name.startswith("fold"):
      seen.append(run.name)
      if len(seen) == 3:
        die(f"{run.name}, start of epoch 3")
    return real_plan(*a, **k)
  loop.epoch_plan = plan
elif point == "save":
  from orbax.checkpoint._src.path import atomicity
  def finalize(self, *a, **k):
    if "finetune" in str(getattr(self, "_final_path", "")) or "finetune" in repr(self.__dict__):
      die(f"checkpoint save of {self.__dict__.get('_final_path')} before its atomic rename")
    return real_finalize[type(self)](self, *a, **k)
  real_finalize = {}
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    real_finalize[cls] = cls.finalize
    cls.finalize = finalize
elif point == "between":
  from mer_jax.train import loso
  real_json = loso._atomic_json
  def atomic_json(path, obj):
    real_json(path, obj)
    if os.path.basename(os.path.dirname(path)) == "folds" and path.endswith(".json"):
      die(f"after writing the fold record {os.path.basename(path)}")
  loso._atomic_json = atomic_json
elif point == "report":
  from mer_jax import reporting
  real_write = reporting.atomic_write_text
  def atomic_write_text(path, text_or_writer):
    if os.path.basename(path) != "results.json":
      return real_write(path, text_or_writer)
    def half(f):
      buf = io.StringIO()
      text_or_writer(buf) if callable(text_or_writer) else buf.write(text_or_writer)
      f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
      f.flush()
      os.fsync(f.fileno())
      die("half-way through writing results.json")
    return real_write(path, half)
  reporting.atomic_write_text = atomic_write_text

sys.argv = ["mer_jax.main"] + sys.argv[1:]
runpy.run_module("mer_jax.main", run_name="__main__", alter_sys=True)
"""

# The smallest benchmark that still has 3 LOSO folds with a validation split each, and that learns enough in
# 8 epochs for the kills to matter: SynthME's expressions at macro strength (the data fixture) seen at 32x32,
# batches of 2, BatchNorm statistics that follow the few training steps (momentum 0.5), 40 % of the training
# subjects' clips for model selection (finer validation accuracies, so the best epoch is not simply the first).
OVERRIDES = [
  "--config.data.micro=('casme2',)",
  "--config.data.macro=('ck',)",
  "--config.image_size=32",
  # The EVM reading this test was sized with (it learns past the kills with it); crash safety does not
  # depend on the reading.
  "--config.evm.band_units=hz",
  "--config.evm.temporal_filter=butterworth",
  "--config.model.block_layers=(1,1)",
  "--config.model.stem_features=8",
  "--config.model.growth_rate=8",
  "--config.model.head_pool=2",
  "--config.model.reduction=2",
  "--config.model.bn_momentum=0.5",
  "--config.pretrain.enabled=False",
  "--config.finetune.epochs=8",
  "--config.finetune.batch_size=2",
  "--config.finetune.early_stopping_patience=0",
  "--config.finetune.val_fraction=0.4",
  "--config.finetune.parallel_folds=0",
  "--config.checkpoint_every_epochs=1",
  "--config.bootstrap_samples=20",
  "--config.log_every_steps=0",
  "--quiet",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A SynthME CASME II folder (3 subjects), one TFDS cache and one JAX compilation cache, shared by every run
  (the cache makes the re-runs skip XLA compilation: ~3x faster; the executables are the same)."""
  root = tmp_path_factory.mktemp("crash_data")
  micro = synth.generate(
    "casme2",
    str(root / "casme2"),
    seed=2,
    subjects=3,
    clips_per_subject=8,
    clip_frames=24,
    frame_size=64,
    amplitude=(6.0, 10.0),
  )
  env = dict(
    ENV,
    JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  return {"args": [f"--config.data.roots.casme2={micro}", f"--config.data.cache_dir={root / 'tfds'}"], "env": env}


def run_cli(workdir, data, crash: str = "") -> subprocess.CompletedProcess:
  env = dict(data["env"], MER_JAX_TEST_CRASH=crash)
  return subprocess.run(
    [
      sys.executable,
      "-c",
      WRAPPER,
      "--config=configs/synth_demo.py",
      f"--workdir={workdir}",
      *data["args"],
      *OVERRIDES,
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=600,
  )


def predictions(workdir) -> list:
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  return [(f["subject"], f["clip_ids"], f["y_pred"], f["probs"]) for f in res["folds"]]


def fold_records(workdir) -> dict:
  folds = os.path.join(workdir, "finetune", "folds")
  out = {}
  for name in sorted(os.listdir(folds)):
    if name.endswith(".json"):
      with open(os.path.join(folds, name)) as f:
        out[name[:-5]] = json.load(f)  # a half-written fold record would not parse
  return out


def assert_no_half_written_reports(workdir, point: str) -> None:
  """No visible report before the reports are written; the kill during results.json leaves only the hidden
  temporary file of reporting.atomic_write_text (".results.json.<random>.tmp"), half-written."""
  names = sorted(os.listdir(workdir))
  temps = [n for n in names if n.startswith(".results") or n.endswith(".tmp")]
  assert "results.json" not in names, (point, names)
  if point != "report":
    assert not [n for n in names if n.startswith("results")] and not temps, (point, names)
    return
  assert len(temps) == 1 and temps[0].startswith(".results.json.") and temps[0].endswith(".tmp"), names
  with open(os.path.join(workdir, temps[0])) as f:
    with pytest.raises(json.JSONDecodeError):  # the kill came half-way through the JSON
      json.load(f)
  fold_records(workdir)


def latest_checkpoints(workdir) -> dict:
  """fold id -> (epoch, state tree as numpy, loop bookkeeping) of each fold's newest ``latest`` checkpoint."""
  out = {}
  for fid in fold_records(workdir):
    run_dir = os.path.join(workdir, "finetune", "folds", fid)
    tree, meta = ckpt.restore(run_dir, "latest")
    out[fid] = (ckpt.latest_epoch(run_dir, "latest"), jax.tree.map(np.asarray, tree), meta["loop"])
  return out


@pytest.mark.slow
def test_sigkill_at_four_points_then_resume_gives_the_same_predictions_and_state(data, tmp_path):
  ref_dir = tmp_path / "uninterrupted"
  ref = run_cli(ref_dir, data)
  assert ref.returncode == 0, ref.stderr[-4000:]
  expected = predictions(ref_dir)
  assert len(expected) == 3
  ref_records = fold_records(ref_dir)
  fold0 = sorted(ref_records)[0]
  # The benchmark learns past the kills: fold 0's best weights come from an epoch after the ones a resumed run
  # restores (epoch 1 or 2), and the predictions are not one class everywhere.
  assert ref_records[fold0]["best_epoch"] >= 3, ref_records[fold0]
  assert len(set(ref_records[fold0]["y_pred"])) > 1, ref_records[fold0]

  wd = tmp_path / "crashed"
  for point, evidence in (
    ("fold", "start of epoch 3"),
    ("save", "before its atomic rename"),
    ("between", "after writing the fold record"),
    ("report", "half-way through"),
  ):
    proc = run_cli(wd, data, crash=point)
    assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-4000:])
    assert evidence in proc.stderr, (point, proc.stderr[-4000:])
    assert_no_half_written_reports(wd, point)
    if point == "save":  # killed mid-save: orbax's temporary directory is there, never renamed
      assert [d for d, _, _ in os.walk(wd) if d.endswith(".orbax-checkpoint-tmp")], "no half-saved checkpoint"
    if point == "between":
      assert list(fold_records(wd)) == [fold0]
    if point == "report":
      assert list(fold_records(wd)) == sorted(ref_records)
  final = run_cli(wd, data)
  assert final.returncode == 0, final.stderr[-4000:]
  records = fold_records(wd)
  # fold 0 continued from its epoch-2 checkpoint, or from epoch 1 when the kill came while the epoch-2
  # checkpoint was still being written in the background (asynchronous checkpointing loses at most that one)
  assert records[fold0]["resumed_from_epoch"] in (1, 2)
  for fid, rec in records.items():
    for key in ("best_epoch", "epochs_trained", "val_metric", "val_loss", "y_pred", "probs"):
      assert rec[key] == ref_records[fid][key], (fid, key)
  got = predictions(wd)
  assert [g[:3] for g in got] == [e[:3] for e in expected]
  assert [g[3] for g in got] == [e[3] for e in expected]  # bit-identical probabilities (CPU determinism)
  with open(wd / "finetune" / "predictions.json") as f, open(ref_dir / "finetune" / "predictions.json") as g:
    assert json.load(f) == json.load(g)
  # the final train state of every fold, bit for bit: parameters, BatchNorm statistics, Adam's moments and step
  # count, the plateau state, the best weights and the loop's bookkeeping
  want, have = latest_checkpoints(ref_dir), latest_checkpoints(wd)
  assert sorted(have) == sorted(want)
  for fid in want:
    assert have[fid][0] == want[fid][0] == 8, fid
    assert have[fid][2] == want[fid][2], fid
    paths_w, leaves_w = zip(*jax.tree_util.tree_flatten_with_path(want[fid][1])[0])
    paths_h, leaves_h = zip(*jax.tree_util.tree_flatten_with_path(have[fid][1])[0])
    assert paths_h == paths_w
    assert any("opt_state" in jax.tree_util.keystr(p) for p in paths_w)
    for path, a, b in zip(paths_w, leaves_w, leaves_h):
      np.testing.assert_array_equal(b, a, err_msg=f"{fid} {jax.tree_util.keystr(path)}")
  # what the kill during a save left behind was cleaned up by the next save
  stale = [d for d, _, _ in os.walk(wd) if "orbax-checkpoint-tmp" in d]
  assert not stale, stale
  with open(wd / "results.json") as f:
    assert json.load(f)["folds"]
  # and the half-written results.json the report kill left was swept by the run that wrote the reports
  assert not [n for n in os.listdir(wd) if n.endswith(".tmp")], sorted(os.listdir(wd))


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints and diverging losses (in-process, fabricated data)
# ---------------------------------------------------------------------------------------------


class Crash(Exception):
  pass


@pytest.fixture(scope="module")
def tiny():
  config = train_data.tiny_config(epochs=4, batch_size=8)
  config.finetune.early_stopping_patience = 0
  model = build_model(config.model)
  v0 = jax.device_get(jit_init(model, jax.random.PRNGKey(0), train_data.SIZE, 3))
  return config, model, v0


def make_run(run_dir) -> loop.RunData:
  ds = train_data.fabricate(subject_sizes=(8, 8, 8))  # fresh arrays: a test may poison them
  return loop.RunData(
    name="fold_x",
    train_x=ds.images[:16].copy(),
    train_y=ds.labels[:16],
    val_x=ds.images[16:].copy(),
    val_y=ds.labels[16:],
    seed=5,
    run_dir=str(run_dir),
    metadata={"kind": "finetune", "fingerprint": "fp", "config": {"name": "tiny", "seed": 0}},
  )


def fit(tiny, run, cfg=None, **kw):
  config, model, v0 = tiny
  return loop.fit(model_apply(model), v0, run, cfg or config.finetune, num_classes=3, progress=False, **kw)


def truncate_arrays(step_dir) -> int:
  n = 0
  for dirpath, _, files in os.walk(step_dir):
    for name in files:
      p = os.path.join(dirpath, name)
      if f"{os.sep}d{os.sep}" in p and os.path.getsize(p) > 1:  # the array data of the OCDBT store
        with open(p, "r+b") as f:
          f.truncate(os.path.getsize(p) // 3)
        n += 1
  return n


def test_truncated_latest_checkpoint_falls_back_to_the_previous_good_one(tiny, tmp_path, capfd):
  ref = fit(tiny, make_run(tmp_path / "ref"))
  run = make_run(tmp_path / "crashed")

  def crash(epoch):
    if epoch == 2:
      raise Crash()

  with pytest.raises(Crash):
    fit(tiny, run, on_epoch_end=crash)  # dies after saving latest/3; latest/2 is kept too
  latest = tmp_path / "crashed" / "latest"
  assert sorted(os.listdir(latest)) == ["2", "3"]
  assert truncate_arrays(latest / "3")
  with pytest.raises(ckpt.CorruptCheckpointError, match="latest/3 is unreadable"):
    ckpt.restore(str(tmp_path / "crashed"), "latest")
  with pytest.warns(ckpt.CheckpointFallbackWarning, match="falling back to the previous good checkpoint"):
    res = fit(tiny, run)
  assert "warning:" in capfd.readouterr().err
  assert res.resumed_from_epoch == 2 and res.epochs_trained == 4
  # resumed from epoch 2: the same weights as the uninterrupted run
  for a, b in zip(jax.tree.leaves(ref.variables), jax.tree.leaves(res.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sorted(os.listdir(latest)) == ["3", "4"]  # the damaged one was replaced


def test_every_checkpoint_damaged_is_a_clear_error(tiny, tmp_path):
  cfg = tiny[0].finetune.copy_and_resolve_references()
  cfg.epochs = 2
  run = make_run(tmp_path)
  fit(tiny, run, cfg=cfg)
  for step in os.listdir(tmp_path / "latest"):
    truncate_arrays(tmp_path / "latest" / step)
  cfg.epochs = 3
  with pytest.raises(
    ckpt.CorruptCheckpointError, match=r"none of the checkpoints \(2, 1\) can be read.*delete .*latest to start"
  ):
    fit(tiny, run, cfg=cfg)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
  run = make_run(tmp_path / "run")

  def poison(epoch):
    if epoch == 1:  # after 2 good epochs, a sample turns into NaN
      run.train_x[3] = np.nan

  with pytest.raises(loop.TrainingDivergedError) as err:
    fit(tiny, run, on_epoch_end=poison)
  msg = str(err.value)
  for needle in (
    "fold_x",
    "training loss is nan",
    "epoch 3",
    "optimiser step",
    "Config 'tiny'",
    "finetune.learning_rate=0.01",
    f"{tmp_path / 'run' / 'latest' / '2'}",
    "Lower --config.finetune",
  ):
    assert needle in msg, (needle, msg)
  assert ckpt.latest_epoch(str(tmp_path / "run"), "latest") == 2
  tree, meta = ckpt.restore(str(tmp_path / "run"), "latest")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["state"]["params"]))


def test_exploding_learning_rate_names_the_step(tiny, tmp_path):
  cfg = tiny[0].finetune.copy_and_resolve_references()
  cfg.learning_rate = 1e38
  with pytest.raises(loop.TrainingDivergedError, match=r"epoch 1, optimiser step 2 .*learning_rate=1e\+38"):
    fit(tiny, make_run(tmp_path), cfg=cfg)


def test_nan_in_a_vmapped_fold_group_names_the_fold(tiny, tmp_path):
  config, model, v0 = tiny
  runs = [make_run(None), make_run(None)]
  runs[1] = loop.RunData(**{**runs[1].__dict__, "name": "fold_y"})
  runs[1].train_x[:] = np.inf
  with pytest.raises(loop.TrainingDivergedError, match="fold_y: the training loss is nan at epoch 1"):
    loop.fit_many(
      model_apply(model),
      [v0, v0],
      runs,
      config.finetune,
      num_classes=3,
      group_dir=str(tmp_path / "group"),
      progress=False,
    )


KILLED_WRITER = """
import os, signal, sys
from mer_jax import reporting
def half(f):
  f.write('{"folds": [')
  f.flush()
  os.kill(os.getpid(), signal.SIGKILL)
reporting.atomic_write_text(sys.argv[1], half)
"""


def test_reports_sweep_the_temp_files_of_a_writer_killed_mid_write(tmp_path):
  """A SIGKILL inside atomic_write_text leaves its hidden temp file; the next write_reports into that workdir
  removes the temp files of the reports it writes and leaves everything else alone."""
  from mer_jax import config_defaults, reporting

  wd = tmp_path / "run"
  for name in ("results.json", "results.md", "notes.json"):
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(wd / name)], env=ENV, cwd=REPO, timeout=120)
    assert proc.returncode == -9
  left = sorted(os.listdir(wd))
  assert [n.split(".")[1:3] + n.split(".")[-1:] for n in left] == [
    ["notes", "json", "tmp"],
    ["results", "json", "tmp"],
    ["results", "md", "tmp"],
  ], left
  (wd / "results.json.tmp").write_text("not a temp file of atomic_write_text")  # no leading dot: kept
  (wd / ".results.json.orig").write_text("not a temp file either")  # no .tmp suffix: kept
  rng = np.random.default_rng(0)
  recs = [
    dict(
      subject=f"casme2/s{s}",
      clip_ids=[f"c{s}_{i}" for i in range(4)],
      sources=["casme2"] * 4,
      y_true=rng.integers(0, 3, 4),
      y_pred=rng.integers(0, 3, 4),
      probs=rng.dirichlet(np.ones(3), 4),
      epochs_trained=2,
      best_epoch=1,
      val_metric=0.5,
      wall_time_s=1.0,
    )
    for s in range(3)
  ]
  config = config_defaults.get_base_config()
  config.data.micro = ("casme2",)
  config.bootstrap_samples = 10
  reporting.write_reports(str(wd), config, recs, ["negative", "positive", "surprise"], git_commit="x")
  after = sorted(os.listdir(wd))
  assert [n for n in after if n.endswith(".tmp") or n.startswith(".")] == [
    left[0],
    ".results.json.orig",
    "results.json.tmp",
  ], after
  with open(wd / "results.json") as f:
    assert len(json.load(f)["folds"]) == 3
