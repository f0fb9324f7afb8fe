"""Pretraining on the merged macro-expression data (Section 4.1.3, Table 3).

A stratified ``config.pretrain.val_fraction`` (20%) of the macro samples is held
out for validation; class-balanced batches; Adam lr 0.01 with x0.1 on plateau;
the weights with the highest validation accuracy are kept. The run directory is
``<workdir>/pretrain`` (checkpoint layout in mer_jax.train.checkpoint); when its
``summary.json`` exists with the same config fingerprint the run is not repeated.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from mer_jax.data.types import ArrayDataset
from mer_jax.errors import UserError
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import loop
from mer_jax.train.fingerprint import fingerprint
from mer_jax.train.sampling import derived_seed, stratified_split

# Top-level config keys pretraining depends on.
PRETRAIN_KEYS = ("seed", "image_size", "channels", "model", "pretrain", "data")
SUMMARY = "summary.json"


def pretrain_fingerprint(config: ml_collections.ConfigDict) -> str:
  c = ml_collections.ConfigDict(json.loads(config.to_json()))
  c.data = ml_collections.ConfigDict(
    {k: c.data[k] for k in ("task", "protocol", "macro", "synthetic", "face_crop") if k in c.data}
  )
  return fingerprint(c, keep=PRETRAIN_KEYS)


def run_pretrain(
  config: ml_collections.ConfigDict,
  ds: ArrayDataset,
  workdir: str,
  *,
  apply_fn: Callable,
  init_variables: dict,
  mesh: Optional[jax.sharding.Mesh] = None,
  writer=None,
  progress: bool = True,
  on_epoch_end=None,
) -> tuple[dict, dict]:
  """-> (best variables, summary dict). Resumes / skips as described in the module docstring.

  ``config.model.num_classes`` must be the macro class count (the caller sets it).
  """
  run_dir = os.path.join(workdir, "pretrain")
  fp = pretrain_fingerprint(config)
  summary_path = os.path.join(run_dir, SUMMARY)
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get("fingerprint") != fp:
      raise UserError(
        f"{summary_path} was made with a different configuration; use a new --workdir "
        f"or delete {run_dir} to pretrain again"
      )
    _, variables, _ = ckpt.load_for_inference(run_dir)
    if progress:
      print(
        f"[pretrain] already done in {run_dir} (best epoch {summary['best_epoch'] + 1}, "
        f"val acc {summary['best_val_accuracy']:.4f}); reusing it",
        flush=True,
      )
    return jax.device_get(variables), summary
  pt = config.pretrain
  seed = derived_seed(config.seed, 7)
  tr, va = stratified_split(ds.labels, pt.val_fraction, np.random.default_rng(seed))
  run = loop.RunData(
    name="pretrain",
    train_x=ds.images[tr],
    train_y=ds.labels[tr],
    val_x=ds.images[va],
    val_y=ds.labels[va],
    seed=seed,
    run_dir=run_dir,
    metadata={
      "kind": "pretrain",
      "config": json.loads(config.to_json()),
      "class_names": list(ds.class_names),
      "image_size": int(ds.images.shape[1]),
      "channels": int(ds.images.shape[-1]),
      "fingerprint": fp,
    },
  )
  res = loop.fit(
    apply_fn,
    init_variables,
    run,
    pt,
    num_classes=int(config.model.num_classes),
    mesh=mesh,
    writer=writer,
    checkpoint_every=int(config.checkpoint_every_epochs),
    progress=progress,
    log_every_steps=int(config.log_every_steps),
    on_epoch_end=on_epoch_end,
    checkpoint_async=bool(config.checkpoint_async),
    fast_conv=str(config.get("cpu_fast_conv", "auto")),
  )
  summary = {
    "fingerprint": fp,
    "best_epoch": res.best_epoch,
    "best_val_accuracy": res.best_val_accuracy,
    "best_val_loss": res.best_val_loss,
    "epochs_trained": res.epochs_trained,
    "n_train": int(tr.size),
    "n_val": int(va.size),
    "class_names": list(ds.class_names),
    "class_counts": np.bincount(ds.labels, minlength=len(ds.class_names)).tolist(),
    "wall_time_s": res.wall_time_s,
    "history": res.history,
  }
  from mer_jax.reporting import atomic_write_text

  atomic_write_text(summary_path, lambda f: json.dump(summary, f, indent=1))
  return res.variables, summary
