"""Macro-to-micro transfer: initialise a fine-tuning model from pretrained variables.

Everything except the classifier head (the backbone: stem, dense blocks,
transitions and attention modules, plus all BatchNorm statistics) is copied from
the pretrained variables; the head ``params['head']`` is copied too when its
shapes match (same class count) and freshly initialised otherwise.
"""

from __future__ import annotations

import jax
import numpy as np

from mer_jax.errors import ConfigError

HEAD = "head"


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(np.shape(x)), tree)


def merge_pretrained(fresh: dict, pretrained: dict, source: str = "the pretrained checkpoint") -> tuple[dict, dict]:
  """(variables, report) with ``fresh``'s structure, filled from ``pretrained``.

  fresh / pretrained: ``{'params', 'batch_stats'}``. report: ``{'loaded': [...],
  'reinitialised': [...]}`` top-level parameter names. Raises ConfigError when
  the backbones differ (e.g. another attention variant or widths).
  """
  params, report = {}, {"loaded": [], "reinitialised": []}
  for name, sub in fresh["params"].items():
    pre = pretrained["params"].get(name)
    same = pre is not None and jax.tree.structure(pre) == jax.tree.structure(sub) and _shapes(pre) == _shapes(sub)
    if name == HEAD and not same:
      params[name] = sub
      report["reinitialised"].append(name)
      continue
    if not same:
      raise ConfigError(
        f"{source}: parameters {name!r} do not match the fine-tuning model (different backbone / attention / "
        "widths / image_size?); use the same config.model for pretraining and fine-tuning"
      )
    params[name] = pre
    report["loaded"].append(name)
  bs_fresh, bs_pre = fresh.get("batch_stats", {}), pretrained.get("batch_stats", {})
  if jax.tree.structure(bs_fresh) != jax.tree.structure(bs_pre) or _shapes(bs_fresh) != _shapes(bs_pre):
    raise ConfigError(f"{source}: BatchNorm statistics do not match the fine-tuning model")
  return {"params": params, "batch_stats": bs_pre}, report
