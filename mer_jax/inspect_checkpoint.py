"""Prints what a checkpoint holds, without any training data.

    python -m mer_jax.inspect_checkpoint runs/synth_demo/pretrain
    python -m mer_jax.inspect_checkpoint runs/synth_demo/finetune/folds/000_casme2_sub01

DIR is a run directory (``best/`` and/or ``latest/`` inside, see
mer_jax.train.checkpoint). Output: the run (kind, subject, class names, image
size), the checkpoint epoch / optimiser step, the stored validation metrics, the
loop state of ``latest`` (epochs done, best epoch, early-stopped), the config,
and clu's parameter overview (name, shape, size, total) plus the BatchNorm statistic count.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
import numpy as np
from clu import parameter_overview

from mer_jax.errors import UserError, run_cli
from mer_jax.train import checkpoint as ckpt


def describe(run_dir: str) -> str:
  """The text ``inspect_checkpoint`` prints for ``run_dir``."""
  if not os.path.isdir(run_dir):
    raise UserError(f"{run_dir}: no such directory")
  kind = ckpt.find_run_kind(run_dir)
  tree, meta = ckpt.restore(run_dir, kind)
  lines = [f"checkpoint: {os.path.abspath(run_dir)}/{kind} (epoch index {meta.get('epoch')})"]
  for k in ("kind", "subject", "fold", "model_selection", "class_names", "image_size", "channels"):
    if k in meta:
      lines.append(f"  {k}: {meta[k]}")
  if meta.get("metrics"):
    lines.append("  metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in meta["metrics"].items()))
  latest_epoch = ckpt.latest_epoch(run_dir, "latest")
  if latest_epoch is not None:
    # A run without best/ was restored from latest above: reuse it instead of reading it again.
    ltree, lmeta = (tree, meta) if kind == "latest" else ckpt.restore(run_dir, "latest")
    st = ltree.get("state", {})
    loop = lmeta.get("loop", {})
    lines.append(
      f"  latest: {latest_epoch} epochs done, optimiser step "
      f"{int(np.asarray(st.get('step', -1)))}, best epoch index {loop.get('best_epoch')}, "
      f"early-stopped/finished: {loop.get('stopped')}"
    )
    if "plateau" in st:
      lines.append(f"          lr scale {float(np.asarray(st['plateau']['scale'])):.3g}")
  lines.append("config:")
  config = ml_collections.ConfigDict(meta.get("config", {}))
  lines += ["  " + ln for ln in str(config).rstrip().splitlines()]
  variables = ckpt.best_variables(tree, kind)
  lines.append("parameters:")
  table = parameter_overview.get_parameter_overview(jax.device_get(variables["params"]), include_stats=False)
  lines += ["  " + ln for ln in table.splitlines()]
  n_params = parameter_overview.count_parameters(jax.device_get(variables["params"]))
  stats = parameter_overview.count_parameters(jax.device_get(variables.get("batch_stats", {})))
  lines.append(
    f"  {n_params:,} trainable parameters + {stats:,} BatchNorm statistics = {n_params + stats:,} "
    "stored values in total"
  )
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  if len(argv) != 1 or argv[0] in ("-h", "--help"):
    print(__doc__, file=sys.stderr)
    return 2
  print(describe(argv[0]))
  return 0


if __name__ == "__main__":
  run_cli(lambda: main(sys.argv[1:]))
