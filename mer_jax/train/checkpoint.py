"""Checkpoints (orbax) and resume.

Layout of one run directory (pretraining: ``<workdir>/pretrain``; a LOSO fold:
``<workdir>/finetune/folds/<fold_id>``)::

  <run>/latest/<epoch>/state      train state of the last finished epoch (resume)
  <run>/latest/<epoch>/metadata   JSON (below)
  <run>/best/<epoch>/state        weights of the best validation epoch (inference; written when the run ends)
  <run>/best/<epoch>/metadata

Each is an ``orbax.checkpoint.CheckpointManager`` (step = epoch; ``best`` keeps 1,
``latest`` keeps 2 so that a damaged newest checkpoint has a good predecessor) with
two items:

* ``state``: ``flax.serialization.to_state_dict(TrainState)``, i.e. a dict with
  ``params``, ``batch_stats``, ``opt_state`` (Adam), ``plateau``
  (reduce_on_plateau), ``step``, ``epoch``;
* ``metadata``: JSON with ``config`` (``json.loads(config.to_json())``, the whole
  run config), ``class_names``, ``image_size``, ``channels``, ``epoch``,
  ``metrics`` (validation accuracy / loss of that epoch), ``kind``
  (``pretrain`` | ``finetune``) and, in ``latest``, the loop's bookkeeping
  (``loop``: best value/epoch, epochs since improvement, history) used to resume.

:func:`load_for_inference` reads a run directory (its ``best`` manager, else
``latest``) without any training data and returns ``(config, variables, class_names)``.
Crash safety: orbax writes each checkpoint into a temporary directory and renames
it when complete, so a crash during a save leaves no half-visible checkpoint. A
checkpoint that is nevertheless unreadable (truncated or corrupted files) raises
:class:`CorruptCheckpointError` (a UserError naming it); :func:`restore_newest_good`,
used to resume training, then falls back to the previous ``latest`` checkpoint
with a warning.
A vmapped LOSO group also keeps ``<workdir>/finetune/groups/<group_id>/latest``
(the stacked states of its folds, for resume); each fold still gets its own
``best`` run directory when the group finishes.

The training loop writes through :class:`RunCheckpoints`: one open manager per
kind for the whole run and, by default (``config.checkpoint_async``),
background saves: the arrays are copied to host memory and a writer thread does
all the orbax work while training goes on (orbax's own asynchronous mode still
spent ~50 ms per save on the calling thread here); the next save, the end of the
run and any exception wait for the previous one. A process killed during a background write loses at
most that one checkpoint (the temporary directory is removed by the next run,
which resumes from the previous ``latest``). Multi-process runs save
synchronously.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import threading
import warnings
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mer_jax.errors import UserError

KINDS = ("best", "latest")
KEEP = {"best": 1, "latest": 2}


class CorruptCheckpointError(UserError):
  """A checkpoint exists but cannot be read (truncated / corrupted files)."""


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, read-only or missing directory, ...)."""


class CheckpointFallbackWarning(UserWarning):
  """The newest checkpoint was unreadable; an older one was used."""


def _manager(directory: str, create: bool = True, max_to_keep: int = 1) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a writing manager removes what a crash during an earlier save left behind
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False, cleanup_tmp_directories=create
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    options=options,
    item_handlers={"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()},
  )


def host_copy(tree: Any) -> Any:
  """A host (numpy) copy of a pytree of arrays that owns its memory: on CPU ``jax.device_get`` can return views
  of device buffers, which a donated or overwritten buffer would change underneath."""
  return jax.tree.map(lambda a: np.array(a, copy=True), jax.device_get(tree))


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class RunCheckpoints:
  """The ``best`` / ``latest`` checkpoint managers of one run directory, open for the whole run.

  ``save`` copies the arrays to host memory; with ``asynchronous`` one background thread then
  does all the orbax work (directories, files, the atomic rename, old steps) while the caller
  goes on, else ``save`` returns when the checkpoint is on disk. Saves are written in order; a
  save first waits for the previous one. Use as a context manager, or call :meth:`close`: it
  waits for the last save (and raises its error), so leaving the block, normally or by an
  exception, never abandons a checkpoint. ``asynchronous=None``: asynchronous in a
  single-process run, synchronous when ``jax.process_count() > 1`` (orbax then coordinates the
  processes' writes).
  """

  def __init__(self, run_dir: str, asynchronous: Optional[bool] = None):
    self.run_dir = run_dir
    self.asynchronous = (jax.process_count() == 1) if asynchronous is None else bool(asynchronous)
    self._managers: dict[str, ocp.CheckpointManager] = {}
    self._pool = (
      concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mer_jax_checkpoint") if self.asynchronous else None
    )
    self._pending: Optional[concurrent.futures.Future] = None

  def _write(self, kind: str, epoch: int, state_tree: Any, metadata: dict) -> None:
    try:
      self._write_unchecked(kind, epoch, state_tree, metadata)
    except Exception as e:  # orbax / tensorstore / OS errors of many types
      first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
      raise CheckpointWriteError(
        f"could not write the checkpoint {os.path.join(self.run_dir, kind, str(epoch))} "
        f"({type(e).__name__}: {first}); check free disk space and that {self.run_dir} is a writable "
        "directory, then re-run the same command (training resumes from the last checkpoint on disk)"
      ) from e

  def _write_unchecked(self, kind: str, epoch: int, state_tree: Any, metadata: dict) -> None:
    mngr = self._managers.get(kind)
    if mngr is None:
      mngr = _manager(os.path.join(self.run_dir, kind), max_to_keep=KEEP[kind])
      for step in mngr.all_steps():  # a resumed run re-saves epochs it had reached before a crash: replace
        if step >= epoch:
          mngr.delete(step)
      self._managers[kind] = mngr
    mngr.save(
      epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree), metadata=ocp.args.JsonSave(metadata))
    )
    mngr.wait_until_finished()

  def save(self, kind: str, epoch: int, state_tree: Any, metadata: dict) -> None:
    """Saves ``state_tree`` (a pytree of arrays, e.g. ``to_state_dict(state)``) as ``<run_dir>/<kind>/<epoch>``."""
    assert kind in KINDS, kind
    metadata = _jsonable(metadata)
    if not self.asynchronous:
      self._write(kind, int(epoch), state_tree, metadata)
      return
    state_tree = host_copy(state_tree)  # the caller may donate or overwrite its buffers during the write
    self.wait()
    self._pending = self._pool.submit(self._write, kind, int(epoch), state_tree, metadata)

  def wait(self) -> None:
    """Blocks until every save issued so far is on disk (raises the error of a failed background save)."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._pool is not None:
        self._pool.shutdown(wait=True)
      managers, self._managers = self._managers, {}
      for mngr in managers.values():
        mngr.close()

  def __enter__(self) -> "RunCheckpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def save(run_dir: str, kind: str, epoch: int, state_tree: Any, metadata: dict) -> None:
  """One synchronous save of ``state_tree`` as ``<run_dir>/<kind>/<epoch>`` (see :class:`RunCheckpoints`)."""
  with RunCheckpoints(run_dir, asynchronous=False) as ck:
    ck.save(kind, epoch, state_tree, metadata)


def latest_epoch(run_dir: str, kind: str) -> Optional[int]:
  path = os.path.join(run_dir, kind)
  if not os.path.isdir(path):
    return None
  mngr = _manager(path, create=False)
  step = mngr.latest_step()
  mngr.close()
  return step


def _corrupt(path: str, step: int, err: Exception) -> CorruptCheckpointError:
  first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
  return CorruptCheckpointError(
    f"checkpoint {path}/{step} is unreadable, probably truncated or corrupted ({type(err).__name__}: {first}); "
    f"delete {path}/{step} (training then resumes from an older checkpoint or starts that run again), "
    "or retrain"
  )


class _DropAbandonedReads(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' records of orbax reads abandoned by a failed restore."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    if "exception was never retrieved" not in msg:
      return True
    text = msg + " " + str(record.exc_info[1] if record.exc_info else "")
    return not any(k in text for k in ("async_deserialize", "OCDBT", '"zarr" driver'))


_ABANDONED_READS = _DropAbandonedReads()
_HOOK_LOCK = threading.Lock()


def _is_closed_loop_callback(unraisable) -> bool:
  """An unraisable RuntimeError('Event loop is closed') from asyncio (a read callback after its loop closed)."""
  exc = unraisable.exc_value
  if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
    return False
  tb = exc.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and f"{os.sep}asyncio{os.sep}" in tb.tb_frame.f_code.co_filename


def _silence_abandoned_reads() -> None:
  """Installs, once per process, the two filters for what a failed restore leaves behind.

  When a read fails half-way, orbax closes its event loop while tensorstore reads are still in flight; their
  callbacks then raise 'Event loop is closed' where Python can only report them as unraisable exceptions
  (``sys.unraisablehook``: there is no logger to filter), and the abandoned tasks log 'Task exception was never
  retrieved' (logger ``asyncio``) when collected. They say nothing the CorruptCheckpointError does not, and a
  CLI must not show tracebacks. The ``asyncio`` records get a logging filter; the unraisable hook is wrapped
  once (the wrapper passes every other unraisable exception on to the hook it wraps) and never swapped back,
  and ``sys.stderr`` is left alone, so nothing another thread (a background checkpoint write, a metric writer)
  prints or raises meanwhile is lost.
  """
  with _HOOK_LOCK:
    logging.getLogger("asyncio").addFilter(_ABANDONED_READS)  # idempotent
    if getattr(sys.unraisablehook, "_mer_jax_filter", False):
      return
    inner = sys.unraisablehook

    def hook(unraisable):
      if not _is_closed_loop_callback(unraisable):
        inner(unraisable)

    hook._mer_jax_filter = True
    sys.unraisablehook = hook


def _restore_step(mngr: ocp.CheckpointManager, path: str, step: int, target: Any) -> tuple[Any, dict]:
  _silence_abandoned_reads()
  try:
    if target is None:
      tree = mngr.item_metadata(step)["state"]
      tree = getattr(tree, "tree", tree)
      dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
    out = mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore())
    )
    if not isinstance(out.metadata, dict):
      raise ValueError("the metadata item is missing")
    return out.state, out.metadata
  except UserError:
    raise
  except Exception as e:  # orbax/tensorstore raise many types (ValueError, JSONDecodeError, XlaRuntimeError, ...)
    raise _corrupt(path, step, e) from None


def _open_latest(run_dir: str, kind: str):
  """(path, open CheckpointManager, newest step) of ``<run_dir>/<kind>``; UserError when it holds none."""
  path = os.path.join(run_dir, kind)
  mngr = _manager(path, create=False)
  step = mngr.latest_step()
  if step is None:
    mngr.close()
    raise UserError(f"{path}: no checkpoint found")
  return path, mngr, step


def restore(run_dir: str, kind: str, target: Any = None) -> tuple[Any, dict]:
  """(state tree, metadata) of ``<run_dir>/<kind>``'s newest checkpoint.

  Args:
    run_dir: the run's checkpoint folder.
    kind: "best" or "latest".
    target: a pytree of arrays (or ShapeDtypeStructs) with the saved structure,
      whose shardings the restored arrays take; ``None`` restores every saved array
      onto the first local device (any device count at save time).

  Returns:
    (state tree, metadata dict).

  Raises:
    CorruptCheckpointError: that checkpoint cannot be read.
  """
  path, mngr, step = _open_latest(run_dir, kind)
  try:
    return _restore_step(mngr, path, step, target)
  finally:
    mngr.close()


def restore_newest_good(run_dir: str, kind: str, target: Any = None) -> tuple[Any, dict, int]:
  """(state tree, metadata, step) of the newest *readable* checkpoint of ``<run_dir>/<kind>``.

  An unreadable newer checkpoint is skipped with a :class:`CheckpointFallbackWarning`
  (also printed to stderr).

  Args:
    run_dir: the run's checkpoint folder.
    kind: "best" or "latest".
    target: as for :func:`restore`.

  Returns:
    (state tree, metadata dict, the step restored).

  Raises:
    CorruptCheckpointError: no checkpoint can be read; UserError: there is none.
  """
  path = os.path.join(run_dir, kind)
  mngr = _manager(path, create=False)
  try:
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
      raise UserError(f"{path}: no checkpoint found")
    bad: list[tuple[int, CorruptCheckpointError]] = []
    for step in steps:
      try:
        tree, meta = _restore_step(mngr, path, step, target)
      except CorruptCheckpointError as e:
        bad.append((step, e))
        continue
      if bad:
        msg = (
          f"{path}: checkpoint(s) {', '.join(str(b) for b, _ in bad)} could not be read ({bad[0][1]}); "
          f"falling back to the previous good checkpoint {path}/{step}"
        )
        warnings.warn(msg, CheckpointFallbackWarning, stacklevel=2)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
      return tree, meta, step
    if len(bad) == 1:
      raise bad[0][1]
    raise CorruptCheckpointError(
      f"{path}: none of the checkpoints ({', '.join(str(b) for b, _ in bad)}) can be read, probably truncated or "
      f"corrupted (newest: {str(bad[0][1]).split(' (', 1)[-1].split('); delete')[0]}); delete {path} to start "
      "this run again, or retrain"
    )
  finally:
    mngr.close()


def read_metadata(run_dir: str, kind: str) -> dict:
  path, mngr, step = _open_latest(run_dir, kind)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  except Exception as e:
    raise _corrupt(path, step, e) from None
  finally:
    mngr.close()
  return out.metadata


def find_run_kind(run_dir: str) -> str:
  """``best`` if the run has a best checkpoint, else ``latest``; a clear error if neither."""
  for kind in KINDS:
    if latest_epoch(run_dir, kind) is not None:
      return kind
  raise UserError(
    f"{run_dir}: not a mer_jax run directory (expected {run_dir}/best/<epoch> or {run_dir}/latest/<epoch>; "
    "pass e.g. <workdir>/pretrain or <workdir>/finetune/folds/<fold_id>)"
  )


def best_variables(tree: dict, kind: str) -> dict:
  """The best-validation ``{'params', 'batch_stats'}`` of a restored ``kind`` tree: a ``latest``
  checkpoint holds ``{'state': ..., 'best': variables}``, a ``best`` checkpoint the variables themselves."""
  return tree["best"] if kind == "latest" else tree


def load_for_inference(run_dir: str) -> tuple[ml_collections.ConfigDict, dict, list[str]]:
  """(config, variables ``{'params','batch_stats'}``, class_names) of a run's best checkpoint."""
  kind = find_run_kind(run_dir)
  tree, metadata = restore(run_dir, kind)
  config = ml_collections.ConfigDict(metadata["config"])
  tree = best_variables(tree, kind)
  variables = {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
  return config, variables, list(metadata["class_names"])
