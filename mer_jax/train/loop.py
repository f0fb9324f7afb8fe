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
   ``select_best=False`` keeps the last epoch's weights instead (no selection, no early stopping);
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

Both go through one epoch loop (:func:`_epoch_loop`); only the stepping differs
(:class:`_Single`: the non-vmapped jitted step; :class:`_Stacked`: the vmapped one).
Progress: clu's ``periodic_actions.ReportProgress`` once per epoch (steps/s, time in
``eval`` and ``checkpoint``) and one printed line per epoch. Scalars: per-epoch ones at
step = epoch, per-step ones at the optimiser step, which continues after a resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

from mer_jax.errors import DataError, UserError
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import parallel
from mer_jax.train.sampling import epoch_plan, epoch_rng
from mer_jax.train.state import TrainState, create_state, plateau_step, variables_of
from mer_jax.train.steps import eval_step, masked_train_step, sharded_train_step, steps_in_one_call, train_step


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

  def update(self, epoch: int, acc: float, loss: float, patience: int, max_epochs: int, select: bool = True) -> bool:
    # select=False (train_cfg.select_best=False): every epoch replaces the kept weights -> the last epoch's, and
    # the counter never grows, so early stopping never fires (no model selection at all).
    improved = acc > self.best_accuracy or not select
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
  return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)


def _select(mask, new, old):
  """Per-run choice between stacked pytrees: mask [F] bool."""

  def pick(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o)

  return jax.tree.map(pick, new, old)


# Where the train step is the multi-device shard_map step (parallel.shard_map_step_applies), loop.fit runs this many
# consecutive steps of an epoch in one call (steps.steps_in_one_call; the epoch's last steps one by one). Each call
# of that step costs ~55-60 ms beside its work on a 2-core host, mostly the scratch buffer glibc maps afresh for
# every call (under config.host_malloc='reuse' two steps per call gain nothing): per step 606 ms with 1 step per
# call, 578 with 2, 559 with 4 (compiling 15 / 22 / 43 s; benchmarks/RESULTS.md log entry 27).
STEPS_PER_CALL = 4


@functools.lru_cache(maxsize=None)
def _compiled(mesh: jax.sharding.Mesh, stacked: bool, apply_fn: Callable, fast_conv: str = "auto") -> dict:
  """The jitted train / logits / plateau (/ select) programs on ``mesh``; ``fast_conv`` is ``config.cpu_fast_conv``
  (``'auto'``: on a CPU without YNNPACK fusions where the mesh has fewer devices than cores and the programs are
  fold-vmapped (``stacked``) or the model's ``conv_impl`` is ``'xla'``;
  :func:`mer_jax.train.parallel.fast_conv_applies`)."""
  rep = parallel.replicated(mesh)
  data = parallel.batch_sharding(mesh, fold_axis=stacked)
  logits = functools.partial(eval_step, apply_fn=apply_fn)
  # parallel.jit: on a CPU mesh with fewer devices than cores (fast_conv 'auto') XLA:CPU compiles the fold-vmapped
  # programs and conv_impl='xla' models without YNNPACK fusions (faster there); accurate because the model's
  # BatchNorm statistics do not depend on the reduction order (docs/perf.md).
  conv_impl = getattr(getattr(getattr(apply_fn, "model", None), "backbone", None), "conv_impl", "xla")
  jit = functools.partial(parallel.jit, mesh=mesh, mode=fast_conv, folds=stacked, conv_impl=conv_impl)
  if not stacked:
    # the shard_map form of the data-parallel step where it is faster (parallel.shard_map_step_applies)
    smap = parallel.shard_map_step_applies(mesh, apply_fn)
    step = sharded_train_step(mesh) if smap else train_step
    fns = dict(
      train=jit(step, in_shardings=(rep, data, data), out_shardings=(rep, rep), donate_argnums=0),
      logits=jit(logits, in_shardings=(rep, data), out_shardings=rep),
      plateau=jit(plateau_step, in_shardings=(rep, rep), out_shardings=rep),
    )
    if smap:  # STEPS_PER_CALL steps per call (_Single.train_epoch): each call of a multi-device CPU step costs time
      group = parallel.batch_sharding(mesh, fold_axis=True)  # [k, B, ...]: B sharded
      fns["train_steps"] = jit(
        steps_in_one_call(step, STEPS_PER_CALL),
        in_shardings=(rep, group, group),
        out_shardings=(rep, rep),
        donate_argnums=0,
      )
    return fns
  return dict(
    train=jit(
      jax.vmap(masked_train_step), in_shardings=(rep, data, data, rep), out_shardings=(rep, rep), donate_argnums=0
    ),
    logits=jit(jax.vmap(logits), in_shardings=(rep, data), out_shardings=rep),
    plateau=jit(jax.vmap(_masked_plateau), in_shardings=(rep, rep, rep), out_shardings=rep),
    select=jit(_select, in_shardings=(rep, rep, rep), out_shardings=rep),
  )


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


def _check_same_config(directory: str, saved: dict, current: dict) -> None:
  """A checkpoint to resume from must come from the same configuration (fingerprints in the metadata)."""
  want, got = current.get("fingerprint"), saved.get("fingerprint")
  if want is not None and got != want:
    raise UserError(
      f"{directory}/latest was written with a different configuration (fingerprint {got} != {want}); "
      f"use a new --workdir, or delete {directory} to start this run again"
    )


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


def _diverged(
  run: RunData,
  train_cfg: ml_collections.ConfigDict,
  epoch: int,
  where: str,
  what: str,
  value: float,
  ckpt_dir: Optional[str] = None,
) -> TrainingDivergedError:
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
    "and rerun with a new --workdir"
  )


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
    out.append(np.asarray(jax.device_get(logits_fn(variables, jax.device_put(x, sharding))))[: b - a])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------
# The epoch loop, shared by fit and fit_many (each keeps only its stepping: _Single / _Stacked)
# ---------------------------------------------------------------------------------------------


class _EpochProgress(periodic_actions.ReportProgress):
  """clu's ReportProgress called at the start of training and after every epoch (``every_secs=0``: it reports at
  each epoch end: the work-unit notes (absl INFO) and, given a writer, ``steps_per_sec`` / ``uptime`` scalars);
  keeps the last epoch's rate for the console line."""

  steps_per_sec: float = float("nan")

  def _apply(self, step: int, t: float) -> None:
    self.steps_per_sec = (step - self._previous_step) / (t - self._previous_time)
    super()._apply(step, t)


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def _discard_latest(directory: str, saved: Any, names: list) -> None:
  logging.warning(
    "%s holds the vmapped group %s, not %s (another grouping of folds, e.g. another "
    "finetune.parallel_folds): deleting it; this group trains from its first epoch",
    os.path.join(directory, "latest"),
    saved,
    names,
  )
  shutil.rmtree(os.path.join(directory, "latest"))


def _restore_latest(
  directory: Optional[str], current: dict, template: dict, names: Optional[list]
) -> Optional[tuple[dict, dict]]:
  """(tree, metadata) of ``<directory>/latest`` to resume from, or None to start afresh.

  Args:
    directory: the checkpoint directory (None: no checkpoints).
    current: the run's metadata (its ``fingerprint`` must equal the checkpoint's).
    template: the state tree to restore into (structure and shardings).
    names: a vmapped group's run names; a checkpoint of another grouping is deleted (with a logged warning) and
      None returned. None for a single run.

  Returns:
    (tree, metadata) of the newest readable checkpoint, or None.

  Raises:
    UserError: the checkpoint was written with another configuration.
  """
  if not directory or ckpt.latest_epoch(directory, "latest") is None:
    return None
  meta = _check_resumable(directory, current)
  if names is not None and meta is not None and meta.get("runs") != names:
    _discard_latest(directory, meta.get("runs"), names)
    return None
  tree, meta, _ = ckpt.restore_newest_good(directory, "latest", template)  # falls back past a damaged one
  _check_same_config(directory, meta, current)
  if names is not None and meta.get("runs") != names:  # the readable (older) checkpoint holds another grouping
    _discard_latest(directory, meta.get("runs"), names)
    return None
  return tree, meta


def _epoch_loop(
  st,
  train_cfg: ml_collections.ConfigDict,
  ckpts: Optional[ckpt.RunCheckpoints],
  *,
  num_classes: int,
  mesh: jax.sharding.Mesh,
  writer,
  checkpoint_every: int,
  progress: bool,
  log_every_steps: int,
  on_epoch_end: Optional[Callable[[int], None]],
) -> list[FitResult]:
  """Trains the F runs of the stepper ``st`` (:class:`_Single`: F = 1, or :class:`_Stacked`) epoch by epoch.

  Restore-or-init, the NaN/Inf checks, history and scalars, the plateau schedule, model selection, early
  stopping, checkpoints and progress are the same for both; ``st`` only runs the steps and evaluations.
  Per-epoch scalars are written at step = epoch, per-step ones (``log_every_steps``, clu's ``steps_per_sec``)
  at the optimiser step, which continues from the restored one after a resume.
  """
  t0 = time.time()
  runs = st.runs
  f_runs = len(runs)
  parallel.check_batch_size(int(train_cfg.batch_size), mesh)
  for r in runs:
    _check_run(r, num_classes)
  state, best = st.initial()
  books = [_Book() for _ in runs]
  step = 0
  restored = _restore_latest(st.ckpt_dir, runs[0].metadata, st.template(state, best), st.names)
  if restored is not None:
    state, best, books, step = st.adopt(state, *restored)
  resumed = epoch = max(b.epochs_done for b in books)
  patience = int(train_cfg.early_stopping_patience)
  max_epochs = int(train_cfg.epochs)
  select = bool(train_cfg.get("select_best", True))
  report = _EpochProgress(writer=writer, every_secs=0.0)
  report(step)  # starts clu's clock (a first call never reports)
  t_loop = time.monotonic()

  def after_step(loss, step_active: np.ndarray, index: Optional[int] = None) -> None:
    """One optimiser step done; ``loss``: its loss (``[F]`` or ``[]``), or with ``index`` the losses of the
    steps of one call, this step's at ``index``."""
    nonlocal step
    step += 1
    if writer is not None and log_every_steps > 0 and step % log_every_steps == 0:
      now = np.asarray(jax.device_get(loss))
      now = (now if index is None else now[index]).reshape(-1)
      writer.write_scalars(
        step, {f"{r.name}/step_train_loss": float(now[f]) for f, r in enumerate(runs) if step_active[f]}
      )

  while not all(b.stopped for b in books) and epoch < max_epochs:
    active = np.array([not b.stopped for b in books])
    first_step = step
    state, losses, masks, n_steps = st.train_epoch(state, epoch, active, after_step)
    # [steps, runs]; an entry of `losses` holds one step's losses or (several steps in one call) several steps'
    step_losses = np.concatenate(
      [np.zeros((0, f_runs))] + [np.asarray(v, np.float64).reshape(-1, f_runs) for v in jax.device_get(losses)]
    )
    bad = np.argwhere(np.asarray(masks) & ~np.isfinite(step_losses))
    if bad.size:
      s, f = (int(v) for v in bad[0])
      _flush(ckpts)
      raise _diverged(
        runs[f],
        train_cfg,
        epoch,
        st.train_where(first_step, s),
        "training loss",
        step_losses[s, f],
        ckpt_dir=st.ckpt_dir,
      )
    with report.timed("eval", wait_jax_async_dispatch=False):
      scores = st.val_scores(state)  # [(loss, accuracy)] per run
    for f, (sc, r) in enumerate(zip(scores, runs)):
      if active[f] and not np.isfinite(sc[0]):
        _flush(ckpts)
        raise _diverged(r, train_cfg, epoch, st.val_where, "validation loss", sc[0], ckpt_dir=st.ckpt_dir)
    state = st.plateau(state, np.array([sc[0] for sc in scores], np.float32), active)
    scale = np.asarray(jax.device_get(state.plateau.scale)).reshape(-1)
    improved = np.zeros(f_runs, bool)
    for f, (b, r) in enumerate(zip(books, runs)):
      if not active[f]:
        continue
      val_loss, val_acc = scores[f]
      improved[f] = b.update(epoch, val_acc, val_loss, patience, max_epochs, select)
      lr = float(train_cfg.learning_rate) * float(scale[f])
      train_loss = float(np.mean(step_losses[: n_steps[f], f]))
      b.history.append(
        {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr}
      )
      _write(
        writer,
        epoch,
        {
          f"{r.name}/train_loss": train_loss,
          f"{r.name}/val_loss": val_loss,
          f"{r.name}/val_accuracy": val_acc,
          f"{r.name}/lr": lr,
        },
      )
    if improved.any():
      best = st.keep(best, state, improved)
    if ckpts and (all(b.stopped for b in books) or (epoch + 1) % max(checkpoint_every, 1) == 0):
      with report.timed("checkpoint", wait_jax_async_dispatch=False):
        ckpts.save(
          "latest",
          epoch + 1,
          {"state": flax.serialization.to_state_dict(state), "best": best},
          st.latest_metadata(books, epoch, scores, step),
        )
    report(step)
    if progress:
      if f_runs == 1:
        h = books[0].history[-1]
        text = (
          f"loss {h['train_loss']:.4f} val_loss {h['val_loss']:.4f} val_acc {h['val_accuracy']:.3f} "
          f"lr {h['lr']:.2g}" + (" *" if improved[0] else "")
        )
      else:
        text = f"active {int(active.sum())}/{f_runs} val_acc [{' '.join(f'{sc[1]:.2f}' for sc in scores)}]"
      eta = (max_epochs - epoch - 1) * max(n for n, a in zip(n_steps, active) if a) / report.steps_per_sec
      print(
        f"[{st.label}] epoch {epoch + 1}/{max_epochs} {text} | {report.steps_per_sec:.3g} steps/s, "
        f"{_duration(time.monotonic() - t_loop)} elapsed, ETA <= {_duration(eta)}",
        flush=True,
      )
    if on_epoch_end is not None:
      on_epoch_end(epoch)
    epoch += 1

  variables = st.finish(best, books, ckpts)
  wall = (time.time() - t0) / f_runs
  return [
    FitResult(
      variables=v,
      best_epoch=b.best_epoch,
      best_val_accuracy=b.best_accuracy,
      best_val_loss=b.best_loss,
      epochs_trained=b.epochs_done,
      history=b.history,
      resumed_from_epoch=resumed,
      wall_time_s=wall,
    )
    for v, b in zip(variables, books)
  ]


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


class _Single:
  """The stepping of one run: the non-vmapped jitted step, F = 1 for :func:`_epoch_loop`."""

  names = None  # no grouping to check on resume
  val_where = "validation"

  def __init__(self, apply_fn: Callable, init_variables: dict, run: RunData, train_cfg, mesh, ckpt_dir, fast_conv):
    self.run, self.runs, self.label, self.ckpt_dir = run, [run], run.name, ckpt_dir
    self.apply_fn, self.init_variables, self.train_cfg = apply_fn, init_variables, train_cfg
    self.fns = _compiled(mesh, False, apply_fn, fast_conv)
    self.rep, self.data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    self.batch = int(train_cfg.batch_size)
    self.active = np.ones(1, bool)
    self.groups = parallel.batch_sharding(mesh, fold_axis=True) if "train_steps" in self.fns else None

  def initial(self):
    # may_alias=False: the state owns its buffers (they are donated to every step; the caller keeps its variables)
    state = jax.device_put(create_state(self.apply_fn, self.init_variables, self.train_cfg), self.rep, may_alias=False)
    return state, ckpt.host_copy(variables_of(state))

  def template(self, state, best):
    return {"state": flax.serialization.to_state_dict(state), "best": variables_of(state)}

  def adopt(self, state, tree, meta):
    state = flax.serialization.from_state_dict(state, tree["state"])
    return state, ckpt.host_copy(tree["best"]), [_Book(**meta["loop"])], int(jax.device_get(state.step))

  def train_epoch(self, state, epoch, active, after_step):
    run = self.run  # (the crash tests find the RunData as the local ``run`` of epoch_plan's caller)
    plan = epoch_plan(run.train_y, self.batch, epoch_rng(run.seed, epoch), bool(self.train_cfg.balanced_sampling))
    losses = []
    i = 0
    while i < len(plan):
      # STEPS_PER_CALL steps in one call where _compiled made that program ([k, B] batches), else one step
      k = STEPS_PER_CALL if self.groups is not None and i + STEPS_PER_CALL <= len(plan) else 1
      idx, sharding, fn = (
        (np.stack(plan[i : i + k]), self.groups, "train_steps") if k > 1 else (plan[i], self.data, "train")
      )
      x = jax.device_put(np.asarray(run.train_x[idx], np.float32), sharding)
      y = jax.device_put(np.asarray(run.train_y[idx], np.int32), sharding)
      state, loss = self.fns[fn](state, x, y)
      losses.append(loss)
      for j in range(k):
        after_step(loss, self.active, j if k > 1 else None)
      i += k
    return state, losses, [self.active] * len(plan), [len(plan)]

  def train_where(self, first_step: int, s: int) -> str:
    return f"optimiser step {first_step + s + 1} (batch {s + 1} of the epoch)"

  def val_scores(self, state):
    logits = _logits_in_batches(self.fns["logits"], variables_of(state), self.run.val_x, self.batch, self.data)
    return [_val_scores(logits, self.run.val_y)]

  def plateau(self, state, val_loss, active):
    return self.fns["plateau"](state, jax.device_put(val_loss[0], self.rep))

  def keep(self, best, state, improved):
    return ckpt.host_copy(variables_of(state))

  def latest_metadata(self, books, epoch, scores, step):
    loss, acc = scores[0]
    return dict(
      self.run.metadata, epoch=epoch, metrics={"val_accuracy": acc, "val_loss": loss}, loop=dataclasses.asdict(books[0])
    )

  def finish(self, best, books, ckpts):
    b = books[0]
    if ckpts and b.best_epoch >= 0:
      ckpts.save(
        "best",
        b.best_epoch,
        best,
        dict(self.run.metadata, epoch=b.best_epoch, metrics={"val_accuracy": b.best_accuracy, "val_loss": b.best_loss}),
      )
    return [best]


def fit(
  apply_fn: Callable,
  init_variables: dict,
  run: RunData,
  train_cfg: ml_collections.ConfigDict,
  *,
  num_classes: int,
  mesh: Optional[jax.sharding.Mesh] = None,
  writer=None,
  checkpoint_every: int = 1,
  progress: bool = True,
  log_every_steps: int = 0,
  on_epoch_end: Optional[Callable[[int], None]] = None,
  checkpoint_async: bool = True,
  fast_conv: str = "auto",
) -> FitResult:
  """Trains one run from ``init_variables`` and returns its best-validation weights.

  Resumes from ``<run_dir>/latest`` when present (its metadata must carry the
  same ``fingerprint`` as ``run.metadata``, else UserError).

  Args:
    apply_fn: the model's apply (``mer_jax.train.state.model_apply(model)``).
    init_variables: initial ``{'params','batch_stats'}``.
    run: the training and validation arrays, seed, checkpoint directory and metadata (:class:`RunData`).
    train_cfg: the ``config.pretrain`` or ``config.finetune`` section (batch size, epochs, optimiser, plateau,
      early stopping, model selection).
    num_classes: K, the classes of ``run``'s labels.
    mesh: device mesh for data parallelism (default: ``parallel.make_mesh()``).
    writer: a clu MetricWriter (per-epoch scalars; the training loss every
      ``log_every_steps`` optimiser steps when > 0).
    checkpoint_every: write ``latest`` every this many epochs.
    progress: print one line per epoch.
    log_every_steps: > 0 writes the training loss every that many optimiser steps.
    on_epoch_end: ``on_epoch_end(epoch)`` is called after each epoch's checkpoints were issued (tests use it
      to simulate a crash).
    checkpoint_async: write checkpoints in the background (single-process runs only; see
      :class:`checkpoint.RunCheckpoints`).
    fast_conv: ``config.cpu_fast_conv`` (how the steps are compiled on a CPU; ``parallel.fast_conv_applies``).

  Returns:
    A :class:`FitResult`: the selected weights, best epoch and validation scores, history, epochs trained.

  Raises:
    TrainingDivergedError: the loss became NaN or infinite.
    UserError: ``<run_dir>/latest`` belongs to another config.
  """
  ckpt_ctx = (
    ckpt.RunCheckpoints(run.run_dir, asynchronous=None if checkpoint_async else False)
    if run.run_dir
    else contextlib.nullcontext()
  )
  with ckpt_ctx as ckpts:
    mesh = mesh or parallel.make_mesh()
    st = _Single(apply_fn, init_variables, run, train_cfg, mesh, ckpts.run_dir if ckpts else None, fast_conv)
    return _epoch_loop(
      st,
      train_cfg,
      ckpts,
      num_classes=num_classes,
      mesh=mesh,
      writer=writer,
      checkpoint_every=checkpoint_every,
      progress=progress,
      log_every_steps=log_every_steps,
      on_epoch_end=on_epoch_end,
    )[0]


# ---------------------------------------------------------------------------------------------
# Several runs as one vmapped program
# ---------------------------------------------------------------------------------------------


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _unstack(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


class _Stacked:
  """The stepping of F runs as one vmapped program (for :func:`_epoch_loop`): every epoch runs ``max_f steps_f``
  steps; a run with fewer batches, or that has stopped, is masked; validation sets are padded with masked rows."""

  val_where = "validation (vmapped group)"

  def __init__(
    self,
    apply_fn: Callable,
    init_variables: Sequence[dict],
    runs: Sequence[RunData],
    train_cfg,
    mesh,
    ckpt_dir,
    asynchronous,
    fast_conv,
  ):
    self.runs, self.names, self.ckpt_dir, self.asynchronous = list(runs), [r.name for r in runs], ckpt_dir, asynchronous
    self.label = f"{runs[0].name}..{runs[-1].name} ({len(runs)} vmapped)"
    self.apply_fn, self.init_variables, self.train_cfg = apply_fn, init_variables, train_cfg
    self.fns = _compiled(mesh, True, apply_fn, fast_conv)
    self.rep, self.data = parallel.replicated(mesh), parallel.batch_sharding(mesh, fold_axis=True)
    self.batch = int(train_cfg.batch_size)
    self.shape = runs[0].train_x.shape[1:]

  def initial(self):
    states = [create_state(self.apply_fn, v, self.train_cfg) for v in self.init_variables]
    state = jax.device_put(
      states[0].replace(
        **{
          k: _stack([getattr(s, k) for s in states])
          for k in ("step", "params", "opt_state", "batch_stats", "epoch", "plateau")
        }
      ),
      self.rep,
      may_alias=False,
    )
    best = jax.device_put(ckpt.host_copy(variables_of(state)), self.rep)  # own buffers: the state is donated
    return state, best

  def template(self, state, best):
    return {"state": flax.serialization.to_state_dict(state), "best": best}

  def adopt(self, state, tree, meta):
    state = flax.serialization.from_state_dict(state, tree["state"])
    # the group's step counter (a checkpoint without it: the most steps any run made, exact unless the largest
    # run stopped before the others)
    step = meta.get("step", np.max(jax.device_get(state.step)))
    return state, tree["best"], [_Book(**b) for b in meta["loop"]], int(step)

  def train_epoch(self, state, epoch, active, after_step):
    f_runs = len(self.runs)
    plans = [
      epoch_plan(r.train_y, self.batch, epoch_rng(r.seed, epoch), bool(self.train_cfg.balanced_sampling))
      for r in self.runs
    ]
    losses, masks = [], []
    for s in range(max(len(p) for p, a in zip(plans, active) if a)):
      step_active = np.array([a and s < len(p) for p, a in zip(plans, active)])
      x = np.empty((f_runs, self.batch) + self.shape, np.float32)
      y = np.empty((f_runs, self.batch), np.int32)
      for f, (r, p) in enumerate(zip(self.runs, plans)):
        idx = p[s] if s < len(p) else p[0]
        x[f], y[f] = r.train_x[idx], r.train_y[idx]
      state, loss = self.fns["train"](
        state, jax.device_put(x, self.data), jax.device_put(y, self.data), jax.device_put(step_active, self.rep)
      )
      losses.append(loss)
      masks.append(step_active)
      after_step(loss, step_active)
    return state, losses, masks, [len(p) for p in plans]

  def train_where(self, first_step: int, s: int) -> str:
    return f"batch {s + 1} of the epoch (vmapped group {self.names[0]}..{self.names[-1]})"

  def val_scores(self, state):
    n_val = max(len(r.val_y) for r in self.runs)
    out = []
    for a, b in _padded_chunks(n_val, self.batch):
      x = np.zeros((len(self.runs), self.batch) + self.shape, np.float32)
      for f, r in enumerate(self.runs):
        part = r.val_x[a:b]
        x[f, : len(part)] = part
      out.append(
        np.asarray(jax.device_get(self.fns["logits"](variables_of(state), jax.device_put(x, self.data))))[:, : b - a]
      )
    logits = np.concatenate(out, axis=1)  # [F, n_val, K]
    return [_val_scores(logits[f, : len(r.val_y)], r.val_y) for f, r in enumerate(self.runs)]

  def plateau(self, state, val_loss, active):
    return self.fns["plateau"](state, jax.device_put(val_loss, self.rep), jax.device_put(active, self.rep))

  def keep(self, best, state, improved):
    return self.fns["select"](jax.device_put(improved, self.rep), variables_of(state), best)

  def latest_metadata(self, books, epoch, scores, step):
    return {
      "runs": self.names,
      "epoch": epoch,
      "loop": [dataclasses.asdict(b) for b in books],
      "fingerprint": self.runs[0].metadata.get("fingerprint"),
      "step": step,
    }

  def finish(self, best, books, ckpts):
    """Each run's weights [unstacked]; each run_dir gets its ``best`` checkpoint (written in the background, all
    awaited here)."""
    best_host = jax.device_get(best)
    variables, writers = [], []
    try:
      for f, (b, r) in enumerate(zip(books, self.runs)):
        variables.append(_unstack(best_host, f))
        if r.run_dir and b.best_epoch >= 0:
          writers.append(ckpt.RunCheckpoints(r.run_dir, asynchronous=self.asynchronous))
          writers[-1].save(
            "best",
            b.best_epoch,
            variables[-1],
            dict(r.metadata, epoch=b.best_epoch, metrics={"val_accuracy": b.best_accuracy, "val_loss": b.best_loss}),
          )
    finally:
      for w in writers:
        w.close()
    return variables


def fit_many(
  apply_fn: Callable,
  init_variables: Sequence[dict],
  runs: Sequence[RunData],
  train_cfg: ml_collections.ConfigDict,
  *,
  num_classes: int,
  group_dir: Optional[str] = None,
  mesh: Optional[jax.sharding.Mesh] = None,
  writer=None,
  checkpoint_every: int = 1,
  progress: bool = True,
  on_epoch_end: Optional[Callable[[int], None]] = None,
  log_every_steps: int = 0,
  checkpoint_async: bool = True,
  fast_conv: str = "auto",
) -> list[FitResult]:
  """``fit`` for F runs at once (one jitted, vmapped program; results equal to ``fit`` run by run).

  Args:
    apply_fn: the model's apply, shared by every run.
    init_variables: F initial ``{'params','batch_stats'}``, one per run.
    runs: F :class:`RunData` (same image shape; sizes may differ).
    train_cfg: the ``config.finetune`` (or ``config.pretrain``) section, shared by every run.
    num_classes: K, the classes of the runs' labels.
    group_dir: ``<group_dir>/latest`` holds the stacked states (resume); each run's
      ``run_dir`` gets its ``best`` checkpoint when the group finishes.
    mesh: device mesh for data parallelism (default: ``parallel.make_mesh()``).
    writer: a clu MetricWriter (per-run, per-epoch scalars).
    checkpoint_every: write ``latest`` every this many epochs.
    progress: print one line per epoch.
    on_epoch_end: ``on_epoch_end(epoch)`` after each epoch's checkpoints were issued (test hook).
    log_every_steps: > 0 writes each active run's training loss every that many group steps.
    checkpoint_async: write checkpoints in the background (single-process runs only).
    fast_conv: ``config.cpu_fast_conv`` (how the steps are compiled on a CPU; ``parallel.fast_conv_applies``).

  Returns:
    F :class:`FitResult`, in the order of ``runs``.

  Raises:
    TrainingDivergedError: a run's loss became NaN or infinite.
    UserError: ``<group_dir>/latest`` belongs to other settings.
  """
  if not runs:
    return []
  asynchronous = None if checkpoint_async else False
  ckpt_ctx = ckpt.RunCheckpoints(group_dir, asynchronous=asynchronous) if group_dir else contextlib.nullcontext()
  with ckpt_ctx as ckpts:
    mesh = mesh or parallel.make_mesh()
    st = _Stacked(
      apply_fn, init_variables, runs, train_cfg, mesh, ckpts.run_dir if ckpts else None, asynchronous, fast_conv
    )
    return _epoch_loop(
      st,
      train_cfg,
      ckpts,
      num_classes=num_classes,
      mesh=mesh,
      writer=writer,
      checkpoint_every=checkpoint_every,
      progress=progress,
      log_every_steps=log_every_steps,
      on_epoch_end=on_epoch_end,
    )


def predict_probs(
  apply_fn: Callable,
  variables: dict,
  images: np.ndarray,
  batch_size: int,
  mesh: Optional[jax.sharding.Mesh] = None,
  fast_conv: str = "auto",
) -> np.ndarray:
  """Softmax probabilities [N, K] (float32) of images [N, H, W, C], in padded batches (``fast_conv``:
  ``config.cpu_fast_conv``)."""
  mesh = mesh or parallel.make_mesh()
  batch = parallel.pad_to_multiple(batch_size, mesh)
  fns = _compiled(mesh, False, apply_fn, fast_conv)
  data = parallel.batch_sharding(mesh)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  logits = _logits_in_batches(fns["logits"], variables, images, batch, data)
  if logits.size == 0:
    return np.zeros((0, 0), np.float32)
  z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
  return (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
