"""Leave-one-subject-out (LOSO) fine-tuning (Section 4.4).

One fold per subject of the micro-expression ArrayDataset (subjects are
dataset-prefixed, e.g. ``casme2/sub01``, so CDE folds never merge subjects of
different datasets). For each fold:

* test set: every clip of the held-out subject;
* model selection (plateau, early stopping, best weights): a stratified
  ``val_fraction`` split of the *training subjects'* clips; the rest trains.
  ``config.finetune.test_fold_early_stopping=True`` instead selects on the
  held-out subject (trains on all other clips) to reproduce that common but
  optimistic practice; its records carry ``model_selection='test_fold'`` and
  the reports label them; ``config.finetune.select_best=False`` selects nothing
  (the last epoch's weights; records carry ``model_selection='last_epoch'``);
* initial weights: ``init_fn(fold_index)`` (pretrained backbone + attention);
* the best-validation weights predict the held-out clips.

Outputs in ``<workdir>/finetune``::

  folds/<fold_id>.json   the fold's record (keys below); its presence marks the fold finished
  folds/<fold_id>/       the fold's run directory (checkpoints, see mer_jax.train.checkpoint)
  groups/<group_id>/     vmapped groups' stacked latest state (resume)
  predictions.json       all folds' predictions concatenated (clip_ids, subjects, sources, y_true, y_pred, probs)

A fold record: ``fold``, ``fold_id``, ``subject``, ``clip_ids``, ``sources``,
``y_true``, ``y_pred``, ``probs`` [n, K], ``epochs_trained``, ``best_epoch``
(0-based), ``val_metric`` (validation accuracy at best_epoch), ``val_loss``,
``model_selection`` (``validation`` | ``test_fold``), ``wall_time_s``,
``n_train``, ``n_val``, ``n_test``, ``resumed_from_epoch``, ``history`` (one entry per epoch trained: ``epoch``,
``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``), ``fingerprint``.
Re-running on the same workdir skips finished folds (same config fingerprint
required) and resumes the running fold from its ``latest`` checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from mer_jax.data.types import ArrayDataset
from mer_jax.errors import ConfigError, DataError, UserError
from mer_jax.train import loop, parallel
from mer_jax.train.fingerprint import fingerprint
from mer_jax.train.sampling import derived_seed, stratified_split

VALIDATION = "validation"
TEST_FOLD = "test_fold"
LAST_EPOCH = "last_epoch"  # finetune.select_best=False: no model selection, the last epoch's weights


class LeakageError(AssertionError):
  """The held-out subject reached training or model selection (a bug, never a user error)."""


@dataclasses.dataclass
class FoldSplit:
  """Indices into the dataset: train / val (model selection) / test (held-out subject)."""

  subject: str
  train_idx: np.ndarray
  val_idx: np.ndarray
  test_idx: np.ndarray
  model_selection: str


def subjects_of(ds: ArrayDataset) -> list[str]:
  return sorted({str(s) for s in ds.subjects})


def fold_id(index: int, subject: str) -> str:
  return f"{index:03d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", subject)


def fold_seed(seed: int, index: int) -> int:
  return derived_seed(seed, 1000 + int(index))


def split_fold(
  ds: ArrayDataset, subject: str, val_fraction: float, seed: int, test_fold_early_stopping: bool = False
) -> FoldSplit:
  """The fold that holds out ``subject``; checks that it cannot leak (LeakageError)."""
  subjects = np.asarray([str(s) for s in ds.subjects])
  test_idx = np.flatnonzero(subjects == subject)
  rest = np.flatnonzero(subjects != subject)
  if test_idx.size == 0:
    raise DataError(f"subject {subject!r} has no samples")
  if rest.size == 0:
    raise DataError(f"LOSO needs at least two subjects; the data has only {subject!r}")
  if test_fold_early_stopping:
    train_idx, val_idx, selection = rest, test_idx, TEST_FOLD
  else:
    tr, va = stratified_split(ds.labels[rest], val_fraction, np.random.default_rng(seed))
    train_idx, val_idx, selection = rest[tr], rest[va], VALIDATION
  split = FoldSplit(subject, train_idx, val_idx, test_idx, selection)
  check_no_leakage(ds, split)
  return split


def check_no_leakage(ds: ArrayDataset, split: FoldSplit) -> None:
  """Raises LeakageError when a held-out clip is trained on or (unless labelled) selects the model."""
  subjects = np.asarray([str(s) for s in ds.subjects])
  if np.any(subjects[split.train_idx] == split.subject) or np.intersect1d(split.train_idx, split.test_idx).size:
    raise LeakageError(f"fold {split.subject!r}: held-out clips in the training set")
  if split.model_selection == VALIDATION and (
    np.any(subjects[split.val_idx] == split.subject) or np.intersect1d(split.val_idx, split.test_idx).size
  ):
    raise LeakageError(f"fold {split.subject!r}: held-out clips in the model-selection (validation) set")


def _atomic_json(path: str, obj: Any) -> None:
  """JSON via mer_jax.reporting.atomic_write_text (temp file unique per process, fsync, os.replace)."""
  from mer_jax.reporting import atomic_write_text

  atomic_write_text(path, lambda f: json.dump(obj, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _load_record(path: str, fp: str) -> dict:
  with open(path) as f:
    rec = json.load(f)
  if rec.get("fingerprint") != fp:
    raise UserError(
      f"{path} was made with a different configuration (fingerprint {rec.get('fingerprint')} != {fp}); "
      "use a new --workdir, or delete its finetune/ folder to retrain"
    )
  return rec


def run_loso(
  config: ml_collections.ConfigDict,
  ds: ArrayDataset,
  workdir: str,
  *,
  apply_fn: Callable,
  init_fn: Callable[[int], dict],
  mesh: Optional[jax.sharding.Mesh] = None,
  writer=None,
  progress: bool = True,
  on_epoch_end: Optional[Callable[[str, int], None]] = None,
  subjects: Optional[Sequence[str]] = None,
) -> list[dict]:
  """Runs (or resumes) every LOSO fold; returns the fold records in subject order.

  Args:
    config: the full config (``finetune``, ``model.num_classes``, ``seed``, ...).
    ds: the micro-expression ArrayDataset (images [N, S, S, C], labels [N], subjects, clip ids).
    workdir: the run's folder; folds go to ``<workdir>/finetune`` (see the module docstring).
    apply_fn: the model's apply (``mer_jax.train.state.model_apply(model)``).
    init_fn: ``init_fn(fold_index) -> {'params','batch_stats'}``, the initial variables of that fold.
    mesh: device mesh for data parallelism (default: ``parallel.make_mesh()``).
    writer: a clu MetricWriter.
    progress: print per-epoch and per-fold lines.
    on_epoch_end: ``on_epoch_end(fold_id_or_group, epoch)``, a test hook called after each epoch.
    subjects: restrict to these held-out subjects (default: all).

  Returns:
    The fold records (keys in the module docstring), one per fold, in subject order.

  Raises:
    UserError: the class count differs from ``config.model.num_classes``, a finished fold belongs to another
      config, or contradictory model-selection settings; DataError: fewer than two subjects.
  """
  ft = config.finetune
  mesh = mesh or parallel.make_mesh()
  fast_conv = parallel.check_fast_conv(str(config.get("cpu_fast_conv", "auto")))
  num_classes = int(config.model.num_classes)
  if len(ds.class_names) != num_classes:
    raise UserError(
      f"config.model.num_classes={num_classes} but the micro data has {len(ds.class_names)} "
      f"classes {list(ds.class_names)}; set --config.model.num_classes={len(ds.class_names)}"
    )
  all_subjects = subjects_of(ds)
  if len(all_subjects) < 2:
    raise DataError(f"LOSO needs at least two subjects; the data has {all_subjects}")
  chosen = list(subjects) if subjects is not None else all_subjects
  folds = [(all_subjects.index(s), s) for s in chosen]
  if not ft.get("select_best", True) and ft.test_fold_early_stopping:
    raise ConfigError(
      "finetune.select_best=False (last epoch, no model selection) contradicts "
      "finetune.test_fold_early_stopping=True (selection on the held-out subject); set one of them"
    )
  fp = fingerprint(config)
  out_dir = os.path.join(workdir, "finetune")
  folds_dir = os.path.join(out_dir, "folds")
  os.makedirs(folds_dir, exist_ok=True)
  config_json = json.loads(config.to_json())
  records: dict[int, dict] = {}
  pending = []
  for index, subject in folds:
    path = os.path.join(folds_dir, fold_id(index, subject) + ".json")
    if os.path.exists(path):
      records[index] = _load_record(path, fp)
    else:
      pending.append((index, subject))
  if records and progress:
    print(f"[loso] {len(records)} of {len(folds)} folds already finished in {folds_dir}; skipping them", flush=True)
  if int(ft.parallel_folds) > 0 and progress and mesh.devices.flat[0].platform == "cpu":
    print(
      f"[loso] note: finetune.parallel_folds={int(ft.parallel_folds)} on a CPU: vmapped folds measured no "
      "faster than folds one by one on XLA:CPU (benchmarks/RESULTS.md); they are meant for GPUs. "
      "--config.finetune.parallel_folds=0 runs them one by one (the same computation, equal up to float "
      "rounding).",
      flush=True,
    )

  def make_run(index: int, subject: str) -> tuple[loop.RunData, FoldSplit]:
    seed = fold_seed(config.seed, index)
    split = split_fold(ds, subject, ft.val_fraction, seed, bool(ft.test_fold_early_stopping))
    fid = fold_id(index, subject)
    run = loop.RunData(
      name=f"fold{fid}",
      train_x=ds.images[split.train_idx],
      train_y=ds.labels[split.train_idx],
      val_x=ds.images[split.val_idx],
      val_y=ds.labels[split.val_idx],
      seed=seed,
      run_dir=os.path.join(folds_dir, fid),
      metadata={
        "kind": "finetune",
        "config": config_json,
        "class_names": list(ds.class_names),
        "image_size": int(ds.images.shape[1]),
        "channels": int(ds.images.shape[-1]),
        "subject": subject,
        "fold": index,
        "model_selection": split.model_selection,
        "fingerprint": fp,
      },
    )
    return run, split

  def finish(index: int, subject: str, split: FoldSplit, res: loop.FitResult) -> dict:
    probs = loop.predict_probs(apply_fn, res.variables, ds.images[split.test_idx], int(ft.batch_size), mesh, fast_conv)
    rec = {
      "fold": index,
      "fold_id": fold_id(index, subject),
      "subject": subject,
      "clip_ids": [str(c) for c in ds.clip_ids[split.test_idx]],
      "sources": [str(s) for s in ds.sources[split.test_idx]],
      "y_true": ds.labels[split.test_idx].astype(int).tolist(),
      "y_pred": probs.argmax(axis=1).astype(int).tolist(),
      "probs": probs.tolist(),
      "epochs_trained": res.epochs_trained,
      "best_epoch": res.best_epoch,
      "val_metric": res.best_val_accuracy,
      "val_loss": res.best_val_loss,
      "model_selection": split.model_selection if ft.get("select_best", True) else LAST_EPOCH,
      "wall_time_s": res.wall_time_s,
      "n_train": int(split.train_idx.size),
      "n_val": int(split.val_idx.size),
      "n_test": int(split.test_idx.size),
      "resumed_from_epoch": res.resumed_from_epoch,
      "history": res.history,
      "fingerprint": fp,
    }
    _atomic_json(os.path.join(folds_dir, rec["fold_id"] + ".json"), rec)
    return rec

  group = int(ft.parallel_folds)
  batches = [pending[i : i + group] for i in range(0, len(pending), group)] if group > 0 else [[p] for p in pending]
  t0, done = time.time(), 0
  for chunk in batches:
    runs_splits = [make_run(i, s) for i, s in chunk]
    runs = [r for r, _ in runs_splits]
    inits = [init_fn(i) for i, _ in chunk]
    if group > 0:
      gid = fold_id(chunk[0][0], "") + f"to{chunk[-1][0]:03d}"
      hook = (lambda e, g=gid: on_epoch_end(g, e)) if on_epoch_end else None
      results = loop.fit_many(
        apply_fn,
        inits,
        runs,
        ft,
        num_classes=num_classes,
        group_dir=os.path.join(out_dir, "groups", gid),
        mesh=mesh,
        writer=writer,
        checkpoint_every=int(config.checkpoint_every_epochs),
        progress=progress,
        on_epoch_end=hook,
        log_every_steps=int(config.log_every_steps),
        checkpoint_async=bool(config.checkpoint_async),
        fast_conv=fast_conv,
      )
    else:
      hook = functools.partial(on_epoch_end, fold_id(*chunk[0])) if on_epoch_end else None
      results = [
        loop.fit(
          apply_fn,
          inits[0],
          runs[0],
          ft,
          num_classes=num_classes,
          mesh=mesh,
          writer=writer,
          checkpoint_every=int(config.checkpoint_every_epochs),
          progress=progress,
          log_every_steps=int(config.log_every_steps),
          on_epoch_end=hook,
          checkpoint_async=bool(config.checkpoint_async),
          fast_conv=fast_conv,
        )
      ]
    for (index, subject), (_, split), res in zip(chunk, runs_splits, results):
      records[index] = finish(index, subject, split, res)
    done += len(chunk)
    if progress:
      elapsed = time.time() - t0
      eta = elapsed / done * (len(pending) - done)
      accs = ", ".join(
        f"{records[i]['subject']}: {np.mean(np.asarray(records[i]['y_true']) == np.asarray(records[i]['y_pred'])):.2f}"
        for i, _ in chunk
      )
      print(
        f"[loso] {len(records)}/{len(folds)} folds done (test acc {accs}) | "
        f"{loop._duration(elapsed)} elapsed, ETA {loop._duration(eta)}",
        flush=True,
      )
  ordered = [records[i] for i, _ in sorted(folds)]
  _atomic_json(os.path.join(out_dir, "predictions.json"), concatenate(ordered))
  return ordered


def concatenate(records: Sequence[dict]) -> dict:
  """All folds' predictions in one table (test clips of every fold, in fold order)."""
  out = {
    "clip_ids": [],
    "subjects": [],
    "sources": [],
    "y_true": [],
    "y_pred": [],
    "probs": [],
    "model_selection": sorted({r["model_selection"] for r in records}),
  }
  for r in records:
    out["clip_ids"] += list(r["clip_ids"])
    out["subjects"] += [r["subject"]] * len(r["clip_ids"])
    out["sources"] += list(r["sources"])
    out["y_true"] += list(r["y_true"])
    out["y_pred"] += list(r["y_pred"])
    out["probs"] += [list(p) for p in r["probs"]]
  return out
