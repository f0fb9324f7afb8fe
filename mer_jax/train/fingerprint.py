"""Config fingerprints: a resumed workdir must have been made by the same settings."""

from __future__ import annotations

import hashlib
import json

import ml_collections

# Fields that do not change what is computed (speed, logging, reporting). ``pretrained_checkpoint`` is NOT
# one of them: it decides the weights every fold starts from, so a workdir resumed with another one is refused.
VOLATILE = (
  "finetune.parallel_folds",
  "log_every_steps",
  "checkpoint_every_epochs",
  "checkpoint_async",
  "bootstrap_samples",
  "host_malloc",
)


def fingerprint(config: ml_collections.ConfigDict, keep: tuple[str, ...] = ()) -> str:
  """sha256 (16 hex) of the config JSON without VOLATILE fields (or only ``keep`` top-level keys)."""
  d = json.loads(config.to_json())
  if keep:
    d = {k: d[k] for k in keep if k in d}
  for dotted in VOLATILE:
    node = d
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
