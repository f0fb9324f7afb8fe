"""Checkpoints (orbax) and resume.

Layout of one run directory (pretraining: ``<workdir>/pretrain``; a LOSO fold:
``<workdir>/finetune/folds/<fold_id>``)::

  <run>/latest/<epoch>/state      train state of the last finished epoch (resume)
  <run>/latest/<epoch>/metadata   JSON (below)
  <run>/best/<epoch>/state        train state at the best validation epoch (inference)
  <run>/best/<epoch>/metadata

Each is an ``orbax.checkpoint.CheckpointManager`` (``max_to_keep=1``, step =
epoch) with two items:

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
A vmapped LOSO group also keeps ``<workdir>/finetune/groups/<group_id>/latest``
(the stacked states of its folds, for resume); each fold still gets its own
``best`` run directory when the group finishes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp

from mer_jax.errors import UserError

KINDS = ("best", "latest")


def _manager(directory: str, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()})


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def save(run_dir: str, kind: str, epoch: int, state_tree: Any, metadata: dict) -> None:
  """Saves ``state_tree`` (a pytree of arrays, e.g. ``to_state_dict(state)``) as ``<run_dir>/<kind>/<epoch>``."""
  assert kind in KINDS, kind
  mngr = _manager(os.path.join(run_dir, kind))
  for step in mngr.all_steps():     # a resumed run re-saves epochs it had reached before a crash: replace
    if step >= epoch:
      mngr.delete(step)
  mngr.save(int(epoch), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_tree), metadata=ocp.args.JsonSave(_jsonable(metadata))))
  mngr.wait_until_finished()
  mngr.close()


def latest_epoch(run_dir: str, kind: str) -> Optional[int]:
  path = os.path.join(run_dir, kind)
  if not os.path.isdir(path):
    return None
  mngr = _manager(path, create=False)
  step = mngr.latest_step()
  mngr.close()
  return step


def restore(run_dir: str, kind: str, target: Any = None) -> tuple[Any, dict]:
  """(state tree, metadata) of ``<run_dir>/<kind>``'s newest checkpoint.

  ``target``: a pytree of arrays (or ShapeDtypeStructs) with the saved structure,
  whose shardings the restored arrays take; ``None`` restores every saved array
  onto the first local device (any device count at save time).
  """
  path = os.path.join(run_dir, kind)
  mngr = _manager(path, create=False)
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"{path}: no checkpoint found")
  if target is None:
    tree = mngr.item_metadata(step)["state"]
    tree = getattr(tree, "tree", tree)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()))
  mngr.close()
  return out.state, out.metadata


def read_metadata(run_dir: str, kind: str) -> dict:
  path = os.path.join(run_dir, kind)
  mngr = _manager(path, create=False)
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"{path}: no checkpoint found")
  out = mngr.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  mngr.close()
  return out.metadata


def restore_state(run_dir: str, kind: str, template):
  """Restores a TrainState shaped like ``template`` (shardings included); -> (state, metadata)."""
  tree, metadata = restore(run_dir, kind, flax.serialization.to_state_dict(template))
  return flax.serialization.from_state_dict(template, tree), metadata


def find_run_kind(run_dir: str) -> str:
  """``best`` if the run has a best checkpoint, else ``latest``; a clear error if neither."""
  for kind in KINDS:
    if latest_epoch(run_dir, kind) is not None:
      return kind
  raise UserError(
      f"{run_dir}: not a mer_jax run directory (expected {run_dir}/best/<epoch> or {run_dir}/latest/<epoch>; "
      "pass e.g. <workdir>/pretrain or <workdir>/finetune/folds/<fold_id>)")


def load_for_inference(run_dir: str) -> tuple[ml_collections.ConfigDict, dict, list[str]]:
  """(config, variables ``{'params','batch_stats'}``, class_names) of a run's best checkpoint."""
  kind = find_run_kind(run_dir)
  tree, metadata = restore(run_dir, kind)
  config = ml_collections.ConfigDict(metadata["config"])
  variables = {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
  return config, variables, list(metadata["class_names"])
