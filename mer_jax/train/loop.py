"""The epoch loop: ``fit`` (one run) and ``fit_many`` (several runs as one vmapped program).

One epoch of a run (both functions, Tables 3-4):

1. batches from :func:`sampling.epoch_plan` with ``epoch_rng(seed, epoch)``
   (class-balanced when ``balanced_sampling``; every batch full);
2. ``train_step`` per batch (Adam, lr scaled by the plateau state);
3. validation logits -> validation loss (eq. 10) and accuracy;
4. ``reduce_on_plateau`` advanced with the validation loss (Keras'
   ``ReduceLROnPlateau`` monitors ``val_loss``);
5. model selection on validation *accuracy* (Section 4.1.3: "the weights
   corresponding to the highest accuracy on the validation set"): a strictly
   higher accuracy keeps the current weights as the best, otherwise the
   epochs-without-improvement counter grows; training stops when it reaches
   ``early_stopping_patience`` (0 disables early stopping) or after ``epochs``;
6. checkpoints: ``latest`` every ``checkpoint_every`` epochs and at the end
   (train state + best weights + loop bookkeeping: a resumed run continues
   bit-identically), ``best`` once, when the run ends (until then the best
   weights live in ``latest``, which ``checkpoint.load_for_inference`` reads
   for an unfinished run); written in the background by default
   (:class:`checkpoint.RunCheckpoints`).

The train state is donated to the jitted step (updated in place); the loop
keeps its best weights as a host copy, and the step losses stay on the device
until the epoch ends (one host transfer per epoch, where the NaN/Inf check runs).

``fit_many`` runs F runs (LOSO folds) in lock-step under ``jax.vmap``: each
epoch runs ``max_f steps_f`` steps, a run with fewer steps (smaller training
set) or that has stopped early is masked (its state is left unchanged), and
validation sets are padded with masked rows. Every run sees exactly the batches
it would see alone, so the results equal those of ``fit`` run by run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mer_jax.errors import DataError, UserError
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import parallel
from mer_jax.train.sampling import epoch_plan, epoch_rng
from mer_jax.train.state import TrainState, create_state, plateau_step, variables_of
from mer_jax.train.steps import eval_step, masked_train_step, train_step


@dataclasses.dataclass
class RunData:
  """What one run trains and selects on.

  train_x [N, H, W, C] float32, train_y [N] int; val_x [M, H, W, C], val_y [M] int.
  seed: drives the batch order (per epoch) of this run.
  run_dir: checkpoint directory (None: no checkpoints).
  metadata: stored with every checkpoint (config JSON, class_names, image_size, kind, ...).
  """
  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  seed: int
  run_dir: Optional[str] = None
  metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FitResult:
  """variables: the best-validation ``{'params','batch_stats'}``; epochs are 0-based."""
  variables: dict
  best_epoch: int
  best_val_accuracy: float
  best_val_loss: float
  epochs_trained: int
  history: list
  resumed_from_epoch: int
  wall_time_s: float


@dataclasses.dataclass
class _Book:
  """Host-side bookkeeping of one run (saved in the ``latest`` metadata)."""
  best_accuracy: float = -1.0
  best_loss: float = float("inf")
  best_epoch: int = -1
  wait: int = 0
  epochs_done: int = 0
  stopped: bool = False
  history: list = dataclasses.field(default_factory=list)

  def update(self, epoch: int, acc: float, loss: float, patience: int, max_epochs: int) -> bool:
    improved = acc > self.best_accuracy
    if improved:
      self.best_accuracy, self.best_loss, self.best_epoch, self.wait = acc, loss, epoch, 0
    else:
      self.wait += 1
    self.epochs_done = epoch + 1
    self.stopped = (patience > 0 and self.wait >= patience) or self.epochs_done >= max_epochs
    return improved


# ---------------------------------------------------------------------------------------------
# Compiled functions (cached per mesh so that successive folds reuse the compilation)
# ---------------------------------------------------------------------------------------------

def _masked_plateau(state: TrainState, val_loss, active):
  new = plateau_step(state, val_loss)
  return jax.tree_util.tree_map(lambda n, o: jnp.where(active, n, o), new, state)


def _select(mask, new, old):
  """Per-run choice between stacked pytrees: mask [F] bool."""
  def pick(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o)
  return jax.tree_util.tree_map(pick, new, old)


@functools.lru_cache(maxsize=None)
def _compiled(mesh: jax.sharding.Mesh, stacked: bool, apply_fn: Callable):
  rep = parallel.replicated(mesh)
  data = parallel.batch_sharding(mesh, fold_axis=stacked)
  logits = functools.partial(eval_step, apply_fn=apply_fn)
  # XLA's default compiler options everywhere. Turning YNNPACK off on CPU made the steps 1.45x-2.4x faster but
  # their gradients up to 8% wrong (benchmarks/RESULTS.md, optimisation log entries 8 and 16).
  if not stacked:
    return dict(
        train=jax.jit(train_step, in_shardings=(rep, data, data), out_shardings=(rep, rep), donate_argnums=0),
        logits=jax.jit(logits, in_shardings=(rep, data), out_shardings=rep),
        plateau=jax.jit(plateau_step, in_shardings=(rep, rep), out_shardings=rep))
  return dict(
      train=jax.jit(jax.vmap(masked_train_step), in_shardings=(rep, data, data, rep), out_shardings=(rep, rep),
                    donate_argnums=0),
      logits=jax.jit(jax.vmap(logits), in_shardings=(rep, data), out_shardings=rep),
      plateau=jax.jit(jax.vmap(_masked_plateau), in_shardings=(rep, rep, rep), out_shardings=rep),
      select=jax.jit(_select, in_shardings=(rep, rep, rep), out_shardings=rep))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _val_scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """(loss, accuracy) of logits [M, K] (float64 on the host; eq. 10 for the loss)."""
  z = logits.astype(np.float64)
  z = z - z.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  loss = float(-logp[np.arange(labels.size), labels].mean())
  acc = float((logits.argmax(axis=1) == labels).mean())
  return loss, acc


def _check_run(run: RunData, num_classes: int) -> None:
  for what, x, y in (("training", run.train_x, run.train_y), ("validation", run.val_x, run.val_y)):
    if len(y) == 0:
      raise DataError(f"run {run.name!r}: the {what} set is empty")
    if x.shape[0] != y.shape[0]:
      raise DataError(f"run {run.name!r}: {x.shape[0]} {what} images but {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= num_classes:
      raise DataError(f"run {run.name!r}: {what} labels outside [0, {num_classes}) (model.num_classes)")


class Progress:
  """One line per epoch with elapsed time and an ETA (upper bound: no early stop assumed)."""

  def __init__(self, label: str, total_epochs: int, stream=None):
    self.label, self.total, self.stream = label, total_epochs, stream or sys.stdout
    self.t0 = time.time()
    self.first_epoch: Optional[int] = None

  def epoch(self, epoch: int, text: str) -> None:
    if self.first_epoch is None:
      self.first_epoch = epoch
    done = epoch + 1 - self.first_epoch
    elapsed = time.time() - self.t0
    eta = elapsed / max(done, 1) * (self.total - epoch - 1)
    print(f"[{self.label}] epoch {epoch + 1}/{self.total} {text} | {_fmt_time(elapsed)} elapsed, "
          f"ETA <= {_fmt_time(eta)}", file=self.stream, flush=True)


def _check_same_config(directory: str, saved: dict, current: dict) -> None:
  """A checkpoint to resume from must come from the same configuration (fingerprints in the metadata)."""
  want, got = current.get("fingerprint"), saved.get("fingerprint")
  if want is not None and got != want:
    raise UserError(f"{directory}/latest was written with a different configuration (fingerprint {got} != {want}); "
                    f"use a new --workdir, or delete {directory} to start this run again")


def _check_resumable(directory: str, current: dict) -> Optional[dict]:
  """The newest ``latest`` metadata of ``directory`` after the same-config check; None when that checkpoint
  is unreadable (the restore then falls back to an older one, with a warning)."""
  try:
    meta = ckpt.read_metadata(directory, "latest")
  except ckpt.CorruptCheckpointError:
    return None
  _check_same_config(directory, meta, current)
  return meta


class TrainingDivergedError(UserError):
  """The loss became NaN or infinite; the run stopped before saving anything from that epoch."""


def _diverged(run: RunData, train_cfg: ml_collections.ConfigDict, epoch: int, where: str, what: str,
              value: float, ckpt_dir: Optional[str] = None) -> TrainingDivergedError:
  section = "pretrain" if run.metadata.get("kind") == "pretrain" else "finetune"
  cfg = run.metadata.get("config") or {}
  ckpt_dir = ckpt_dir or run.run_dir
  kept = ckpt.latest_epoch(ckpt_dir, "latest") if ckpt_dir else None
  if kept is not None:
    keep = f"the last good checkpoint is kept: {os.path.join(ckpt_dir, 'latest', str(kept))} ({kept} epochs done)"
  elif ckpt_dir:
    keep = f"no checkpoint of this run had been written yet (checkpoint directory {ckpt_dir})"
  else:
    keep = "this run writes no checkpoints"
  return TrainingDivergedError(
      f"{run.name}: the {what} is {value} at epoch {epoch + 1}, {where}; training of this run stopped and "
      f"{keep}. Config {cfg.get('name', '?')!r}: {section}.learning_rate={float(train_cfg.learning_rate):g}, "
      f"{section}.batch_size={int(train_cfg.batch_size)}, {section}.optimizer={train_cfg.optimizer!r}, "
      f"seed={cfg.get('seed', '?')}. Lower --config.{section}.learning_rate or check the inputs for NaN/Inf, "
      "and rerun with a new --workdir")


def _fmt_time(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _write(writer, step: int, scalars: dict) -> None:
  if writer is not None:
    writer.write_scalars(step, scalars)


def _flush(ckpts: Optional[ckpt.RunCheckpoints]) -> None:
  """Waits for background checkpoint writes (so that an error message names the last checkpoint on disk)."""
  if ckpts is not None:
    ckpts.wait()


def _padded_chunks(n: int, batch: int) -> list[tuple[int, int]]:
  return [(i, min(i + batch, n)) for i in range(0, n, batch)]


def _logits_in_batches(logits_fn, variables, images: np.ndarray, batch: int, sharding) -> np.ndarray:
  """Eval-mode logits [N, K] of images [N, H, W, C] in zero-padded batches of ``batch`` (one compilation)."""
  out = []
  for a, b in _padded_chunks(len(images), batch):
    x = np.zeros((batch,) + images.shape[1:], np.float32)
    x[: b - a] = images[a:b]
    out.append(np.asarray(logits_fn(variables, jax.device_put(x, sharding)))[: b - a])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

def fit(apply_fn: Callable, init_variables: dict, run: RunData, train_cfg: ml_collections.ConfigDict, *,
        num_classes: int, mesh: Optional[jax.sharding.Mesh] = None, writer=None,
        checkpoint_every: int = 1, progress: bool = True, log_every_steps: int = 0,
        on_epoch_end: Optional[Callable[[int], None]] = None, checkpoint_async: bool = True) -> FitResult:
  """Trains one run from ``init_variables`` and returns its best-validation weights.

  writer: a clu MetricWriter (per-epoch scalars; the training loss every
  ``log_every_steps`` optimiser steps when > 0).

  Resumes from ``<run_dir>/latest`` when present (its metadata must carry the
  same ``fingerprint`` as ``run.metadata``, else UserError). ``on_epoch_end(epoch)``
  is called after each epoch's checkpoints were issued (tests use it to simulate a crash).
  checkpoint_async: write checkpoints in the background (single-process runs only; see
  :class:`checkpoint.RunCheckpoints`).
  """
  ckpt_ctx = (ckpt.RunCheckpoints(run.run_dir, asynchronous=None if checkpoint_async else False)
                if run.run_dir else contextlib.nullcontext())
  with ckpt_ctx as ckpts:
    return _fit(apply_fn, init_variables, run, train_cfg, ckpts, num_classes=num_classes, mesh=mesh,
                writer=writer, checkpoint_every=checkpoint_every, progress=progress,
                log_every_steps=log_every_steps, on_epoch_end=on_epoch_end)


def _fit(apply_fn, init_variables, run, train_cfg, ckpts: Optional[ckpt.RunCheckpoints], *, num_classes, mesh,
         writer, checkpoint_every, progress, log_every_steps, on_epoch_end) -> FitResult:
  t0 = time.time()
  mesh = mesh or parallel.make_mesh()
  batch = int(train_cfg.batch_size)
  parallel.check_batch_size(batch, mesh)
  _check_run(run, num_classes)
  fns = _compiled(mesh, False, apply_fn)
  rep = parallel.replicated(mesh)
  data = parallel.batch_sharding(mesh)
  # may_alias=False: the state owns its buffers (they are donated to every step; the caller keeps its variables)
  state = jax.device_put(create_state(apply_fn, init_variables, train_cfg), rep, may_alias=False)
  best = ckpt.host_copy(variables_of(state))
  book = _Book()
  resumed = 0
  if run.run_dir and ckpt.latest_epoch(run.run_dir, "latest") is not None:
    template = {"state": flax.serialization.to_state_dict(state), "best": variables_of(state)}
    _check_resumable(run.run_dir, run.metadata)
    tree, meta, _ = ckpt.restore_newest_good(run.run_dir, "latest", template)   # falls back past a damaged one
    _check_same_config(run.run_dir, meta, run.metadata)
    state = flax.serialization.from_state_dict(state, tree["state"])
    best = ckpt.host_copy(tree["best"])
    book = _Book(**meta["loop"])
    resumed = book.epochs_done
  patience = int(train_cfg.early_stopping_patience)
  max_epochs = int(train_cfg.epochs)
  prog = Progress(run.name, max_epochs) if progress else None

  def val_logits(variables):
    return _logits_in_batches(fns["logits"], variables, run.val_x, batch, data)

  epoch = book.epochs_done
  host_step = int(state.step)
  while not book.stopped and epoch < max_epochs:
    plan = epoch_plan(run.train_y, batch, epoch_rng(run.seed, epoch), bool(train_cfg.balanced_sampling))
    losses = []
    for idx in plan:
      x = jax.device_put(np.asarray(run.train_x[idx], np.float32), data)
      y = jax.device_put(np.asarray(run.train_y[idx], np.int32), data)
      state, loss = fns["train"](state, x, y)
      losses.append(loss)
      host_step += 1
      if writer is not None and log_every_steps > 0 and host_step % log_every_steps == 0:
        writer.write_scalars(host_step, {f"{run.name}/step_train_loss": float(loss)})
    step_losses = np.asarray(jax.device_get(losses), np.float64)
    nonfinite = np.flatnonzero(~np.isfinite(step_losses))
    if nonfinite.size:
      i = int(nonfinite[0])
      _flush(ckpts)
      raise _diverged(run, train_cfg, epoch, f"optimiser step {host_step - len(losses) + i + 1} "
                      f"(batch {i + 1} of the epoch)", "training loss", step_losses[i])
    train_loss = float(np.mean(step_losses))
    val_loss, val_acc = _val_scores(val_logits(variables_of(state)), run.val_y)
    if not np.isfinite(val_loss):
      _flush(ckpts)
      raise _diverged(run, train_cfg, epoch, "validation", "validation loss", val_loss)
    state = fns["plateau"](state, jnp.asarray(val_loss, jnp.float32))
    improved = book.update(epoch, val_acc, val_loss, patience, max_epochs)
    lr = float(train_cfg.learning_rate) * float(state.plateau.scale)
    book.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "val_accuracy": val_acc, "lr": lr})
    _write(writer, epoch, {f"{run.name}/train_loss": train_loss, f"{run.name}/val_loss": val_loss,
                           f"{run.name}/val_accuracy": val_acc, f"{run.name}/lr": lr})
    if improved:
      best = ckpt.host_copy(variables_of(state))
    if ckpts and (book.stopped or (epoch + 1) % max(checkpoint_every, 1) == 0):
      ckpts.save("latest", epoch + 1,
                {"state": flax.serialization.to_state_dict(state), "best": best},
                dict(run.metadata, epoch=epoch, metrics={"val_accuracy": val_acc, "val_loss": val_loss},
                     loop=dataclasses.asdict(book)))
    if prog:
      prog.epoch(epoch, f"loss {train_loss:.4f} val_loss {val_loss:.4f} val_acc {val_acc:.3f} lr {lr:.2g}"
                 + (" *" if improved else ""))
    if on_epoch_end is not None:
      on_epoch_end(epoch)
    epoch += 1
  if ckpts and book.best_epoch >= 0:
    ckpts.save("best", book.best_epoch, best, dict(
        run.metadata, epoch=book.best_epoch, metrics={"val_accuracy": book.best_accuracy,
                                                      "val_loss": book.best_loss}))
  return FitResult(variables=best, best_epoch=book.best_epoch,
                   best_val_accuracy=book.best_accuracy, best_val_loss=book.best_loss,
                   epochs_trained=book.epochs_done, history=book.history, resumed_from_epoch=resumed,
                   wall_time_s=time.time() - t0)


# ---------------------------------------------------------------------------------------------
# Several runs as one vmapped program
# ---------------------------------------------------------------------------------------------

def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _unstack(tree: Any, i: int) -> Any:
  return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), tree)


def fit_many(apply_fn: Callable, init_variables: Sequence[dict], runs: Sequence[RunData],
             train_cfg: ml_collections.ConfigDict, *, num_classes: int, group_dir: Optional[str] = None,
             mesh: Optional[jax.sharding.Mesh] = None, writer=None, checkpoint_every: int = 1,
             progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
             log_every_steps: int = 0, checkpoint_async: bool = True) -> list[FitResult]:
  """``fit`` for F runs at once (one jitted, vmapped program; results equal to ``fit`` run by run).

  group_dir: ``<group_dir>/latest`` holds the stacked states (resume); each run's
  ``run_dir`` gets its ``best`` checkpoint when the group finishes.
  log_every_steps: > 0 writes each active run's training loss every that many group steps.
  """
  asynchronous = None if checkpoint_async else False
  ckpt_ctx = ckpt.RunCheckpoints(group_dir, asynchronous=asynchronous) if group_dir else contextlib.nullcontext()
  with ckpt_ctx as ckpts:
    return _fit_many(apply_fn, init_variables, runs, train_cfg, ckpts, asynchronous, num_classes=num_classes,
                     mesh=mesh, writer=writer, checkpoint_every=checkpoint_every, progress=progress,
                     on_epoch_end=on_epoch_end, log_every_steps=log_every_steps)


def _fit_many(apply_fn, init_variables, runs, train_cfg, ckpts: Optional[ckpt.RunCheckpoints], asynchronous, *,
              num_classes, mesh, writer, checkpoint_every, progress, on_epoch_end,
              log_every_steps) -> list[FitResult]:
  group_dir = ckpts.run_dir if ckpts else None
  t0 = time.time()
  f_runs = len(runs)
  if f_runs == 0:
    return []
  mesh = mesh or parallel.make_mesh()
  batch = int(train_cfg.batch_size)
  parallel.check_batch_size(batch, mesh)
  for r in runs:
    _check_run(r, num_classes)
  fns = _compiled(mesh, True, apply_fn)
  rep = parallel.replicated(mesh)
  data = parallel.batch_sharding(mesh, fold_axis=True)
  states = [create_state(apply_fn, v, train_cfg) for v in init_variables]
  state = jax.device_put(states[0].replace(**{
      k: _stack([getattr(s, k) for s in states])
      for k in ("step", "params", "opt_state", "batch_stats", "epoch", "plateau")}), rep, may_alias=False)
  best = jax.device_put(ckpt.host_copy(variables_of(state)), rep)   # own buffers: the state is donated
  books = [_Book() for _ in runs]
  names = [r.name for r in runs]
  resumed = 0
  if group_dir and ckpt.latest_epoch(group_dir, "latest") is not None:
    meta = _check_resumable(group_dir, runs[0].metadata)
    if meta is not None and meta.get("runs") != names:   # another grouping of folds (not resumable): start afresh
      shutil.rmtree(os.path.join(group_dir, "latest"))
    else:
      template = {"state": flax.serialization.to_state_dict(state), "best": best}
      tree, meta, _ = ckpt.restore_newest_good(group_dir, "latest", template)   # falls back past a damaged one
      _check_same_config(group_dir, meta, runs[0].metadata)
      if meta.get("runs") != names:     # the readable (older) checkpoint holds another grouping: start afresh
        shutil.rmtree(os.path.join(group_dir, "latest"))
      else:
        state = flax.serialization.from_state_dict(state, tree["state"])
        best = tree["best"]
        books = [_Book(**b) for b in meta["loop"]]
        resumed = max(b.epochs_done for b in books)
  patience = int(train_cfg.early_stopping_patience)
  max_epochs = int(train_cfg.epochs)
  prog = Progress(f"{names[0]}..{names[-1]} ({f_runs} vmapped)", max_epochs) if progress else None
  n_val = max(len(r.val_y) for r in runs)
  shape = runs[0].train_x.shape[1:]

  def val_logits(variables):
    out = []
    for a, b in _padded_chunks(n_val, batch):
      x = np.zeros((f_runs, batch) + shape, np.float32)
      for f, r in enumerate(runs):
        part = r.val_x[a:b]
        x[f, : len(part)] = part
      out.append(np.asarray(fns["logits"](variables, jax.device_put(x, data)))[:, : b - a])
    return np.concatenate(out, axis=1)   # [F, n_val, K]

  epoch = max(b.epochs_done for b in books)
  host_step = 0
  while not all(b.stopped for b in books) and epoch < max_epochs:
    active = np.array([not b.stopped for b in books])
    plans = [epoch_plan(r.train_y, batch, epoch_rng(r.seed, epoch), bool(train_cfg.balanced_sampling))
             for r in runs]
    n_steps = max(len(p) for p, a in zip(plans, active) if a)
    step_losses, step_masks = [], []
    for s in range(n_steps):
      step_active = np.array([a and s < len(p) for p, a in zip(plans, active)])
      x = np.empty((f_runs, batch) + shape, np.float32)
      y = np.empty((f_runs, batch), np.int32)
      for f, (r, p) in enumerate(zip(runs, plans)):
        idx = p[s] if s < len(p) else p[0]
        x[f], y[f] = r.train_x[idx], r.train_y[idx]
      state, loss = fns["train"](state, jax.device_put(x, data), jax.device_put(y, data),
                                 jax.device_put(step_active, rep))
      step_losses.append(loss)
      step_masks.append(step_active)
      host_step += 1
      if writer is not None and log_every_steps > 0 and host_step % log_every_steps == 0:
        now = np.asarray(loss)
        writer.write_scalars(host_step, {f"{r.name}/step_train_loss": float(now[f])
                                         for f, r in enumerate(runs) if step_active[f]})
    step_losses = np.asarray(jax.device_get(step_losses), np.float64)   # [steps, F]: one transfer per epoch
    bad = np.argwhere(np.asarray(step_masks) & ~np.isfinite(step_losses))
    if bad.size:
      s, f = (int(v) for v in bad[0])
      _flush(ckpts)
      raise _diverged(runs[f], train_cfg, epoch, f"batch {s + 1} of the epoch (vmapped group {names[0]}.."
                      f"{names[-1]})", "training loss", step_losses[s, f], ckpt_dir=group_dir)
    losses = step_losses.sum(axis=0)
    logits = val_logits(variables_of(state))
    scores = [_val_scores(logits[f, : len(r.val_y)], r.val_y) for f, r in enumerate(runs)]
    for f, (sc, r) in enumerate(zip(scores, runs)):
      if active[f] and not np.isfinite(sc[0]):
        _flush(ckpts)
        raise _diverged(r, train_cfg, epoch, "validation (vmapped group)", "validation loss", sc[0],
                        ckpt_dir=group_dir)
    val_loss = np.array([s[0] for s in scores], np.float32)
    state = fns["plateau"](state, jax.device_put(val_loss, rep), jax.device_put(active, rep))
    improved = np.zeros(f_runs, bool)
    scale = np.asarray(state.plateau.scale)
    for f, (b, r, p) in enumerate(zip(books, runs, plans)):
      if not active[f]:
        continue
      improved[f] = b.update(epoch, scores[f][1], scores[f][0], patience, max_epochs)
      lr = float(train_cfg.learning_rate) * float(scale[f])
      tl = float(losses[f] / len(p))
      b.history.append({"epoch": epoch, "train_loss": tl, "val_loss": scores[f][0],
                        "val_accuracy": scores[f][1], "lr": lr})
      _write(writer, epoch, {f"{r.name}/train_loss": tl, f"{r.name}/val_loss": scores[f][0],
                             f"{r.name}/val_accuracy": scores[f][1], f"{r.name}/lr": lr})
    if improved.any():
      best = fns["select"](jax.device_put(improved, rep), variables_of(state), best)
    done = all(b.stopped for b in books)
    if ckpts and (done or (epoch + 1) % max(checkpoint_every, 1) == 0):
      ckpts.save("latest", epoch + 1,
                {"state": flax.serialization.to_state_dict(state), "best": best},
                {"runs": names, "epoch": epoch, "loop": [dataclasses.asdict(b) for b in books],
                 "fingerprint": runs[0].metadata.get("fingerprint")})
    if prog:
      accs = " ".join(f"{s[1]:.2f}" for s in scores)
      prog.epoch(epoch, f"active {int(active.sum())}/{f_runs} val_acc [{accs}]")
    if on_epoch_end is not None:
      on_epoch_end(epoch)
    epoch += 1

  best_host = jax.device_get(best)
  results = []
  writers = []          # every run's best checkpoint written in the background, all awaited below
  try:
    for f, (b, r) in enumerate(zip(books, runs)):
      variables = _unstack(best_host, f)
      if r.run_dir and b.best_epoch >= 0:
        writers.append(ckpt.RunCheckpoints(r.run_dir, asynchronous=asynchronous))
        writers[-1].save("best", b.best_epoch, variables, dict(
            r.metadata, epoch=b.best_epoch,
            metrics={"val_accuracy": b.best_accuracy, "val_loss": b.best_loss}))
      results.append(FitResult(
          variables=variables, best_epoch=b.best_epoch, best_val_accuracy=b.best_accuracy,
          best_val_loss=b.best_loss, epochs_trained=b.epochs_done, history=b.history,
          resumed_from_epoch=resumed, wall_time_s=(time.time() - t0) / f_runs))
  finally:
    for w in writers:
      w.close()
  return results


def predict_probs(apply_fn: Callable, variables: dict, images: np.ndarray, batch_size: int,
                  mesh: Optional[jax.sharding.Mesh] = None) -> np.ndarray:
  """Softmax probabilities [N, K] (float32) of images [N, H, W, C], in padded batches."""
  mesh = mesh or parallel.make_mesh()
  batch = parallel.pad_to_multiple(batch_size, mesh)
  fns = _compiled(mesh, False, apply_fn)
  data = parallel.batch_sharding(mesh)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  logits = _logits_in_batches(fns["logits"], variables, images, batch, data)
  if logits.size == 0:
    return np.zeros((0, 0), np.float32)
  z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
  return (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
