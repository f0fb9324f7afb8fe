"""Accuracy, UF1 and UAR (Section 4.3, MEGC 2019 convention).

All metrics are computed from ONE confusion matrix accumulated over all LOSO
folds (MEGC 2019: predictions of every held-out subject are pooled first, then
scored), never as a mean of per-fold scores.

* ``accuracy`` = trace / total.
* ``uf1`` = mean over classes of ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)``
  (eqs. 11-13; identical to the harmonic mean of P_k and R_k).
* ``uar`` = mean over classes of ``R_k = TP_k / N_k`` (eq. 14 with the
  per-class normalisation of MEGC 2019; the paper's eq. 14 omits ``N_k``).

Absent-class convention (no NaN, ever): the averages run over the *active*
classes, those that occur in the truth or in the predictions. A class absent
from both has no defined F1 or recall and is left out of the mean (its
per-class entries are 0 and ``active`` is False). A class that is predicted but
never true has recall 0 and F1 0 and counts. This is exactly scikit-learn's
``f1_score``/``recall_score(average='macro', zero_division=0)`` with the default
``labels=None``. An empty input gives 0 for every metric.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """``[num_classes, num_classes]`` int64 counts; rows are truth, columns predictions."""
  y_true = np.asarray(y_true, np.int64).reshape(-1)
  y_pred = np.asarray(y_pred, np.int64).reshape(-1)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}")
  for name, y in (("y_true", y_true), ("y_pred", y_pred)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name} has labels outside [0, {num_classes}): {np.unique(y).tolist()}")
  conf = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(conf, (y_true, y_pred), 1)
  return conf


def scores(conf: np.ndarray) -> dict:
  """The metrics of a stack of confusion matrices, vectorised: THE implementation of UF1 / UAR in mer_jax.

  conf: ``[..., K, K]`` counts (rows truth, columns predictions), e.g. ``[B, K, K]`` bootstrap resamples.
  Returns numpy arrays: ``accuracy``, ``uf1``, ``uar``, ``num_samples`` ``[...]``; ``per_class_f1``,
  ``per_class_recall``, ``per_class_precision``, ``support``, ``active`` ``[..., K]``. Absent-class
  convention of the module docstring (means over the active classes; 0 when nothing is active).
  """
  conf = np.asarray(conf)
  if conf.ndim < 2 or conf.shape[-1] != conf.shape[-2]:
    raise ValueError(f"confusion matrices must have shape [..., K, K], got {conf.shape}")
  conf = conf.astype(np.float64)
  tp = np.diagonal(conf, axis1=-2, axis2=-1)
  support = conf.sum(axis=-1)  # N_k: true samples per class (row sums)
  predicted = conf.sum(axis=-2)  # predictions per class (column sums)
  total = conf.sum(axis=(-2, -1))
  active = (support + predicted) > 0
  # 2TP + FP + FN = support + predicted
  f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=active)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  n_active = active.sum(axis=-1)
  denom = np.maximum(n_active, 1)
  return {
    "accuracy": np.divide(tp.sum(axis=-1), total, out=np.zeros_like(total), where=total > 0),
    "uf1": np.where(n_active > 0, (f1 * active).sum(axis=-1) / denom, 0.0),
    "uar": np.where(n_active > 0, (recall * active).sum(axis=-1) / denom, 0.0),
    "per_class_f1": f1,
    "per_class_recall": recall,
    "per_class_precision": precision,
    "support": support.astype(np.int64),
    "active": active,
    "num_samples": total.astype(np.int64),
  }


def from_confusion(conf: np.ndarray) -> dict:
  """Scores from an (accumulated) confusion matrix ``[K, K]`` as plain Python types (see :func:`scores`).

  A stack ``[..., K, K]`` gives the numpy arrays of :func:`scores` (plus ``confusion``) instead.
  """
  conf = np.asarray(conf, np.int64)
  out = scores(conf)
  if conf.ndim > 2:
    return dict(out, confusion=conf)
  return {
    "accuracy": float(out["accuracy"]),
    "uf1": float(out["uf1"]),
    "uar": float(out["uar"]),
    "confusion": conf.tolist(),
    "per_class_f1": out["per_class_f1"].tolist(),
    "per_class_recall": out["per_class_recall"].tolist(),
    "per_class_precision": out["per_class_precision"].tolist(),
    "support": out["support"].tolist(),
    "active": out["active"].tolist(),
    "num_samples": int(out["num_samples"]),
  }


def compute(y_true, y_pred, num_classes: int) -> dict:
  """Accuracy, UF1, UAR, confusion and per-class scores for label vectors ``[N]``."""
  return from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def accumulate(confusions: Sequence[np.ndarray]) -> np.ndarray:
  """Sums per-fold confusion matrices (the MEGC 2019 pooling)."""
  return np.sum(np.stack([np.asarray(c, np.int64) for c in confusions]), axis=0)


def by_source(
  y_true, y_pred, sources, num_classes: int, order: Sequence[str] = ("casme2", "samm", "smic")
) -> Mapping[str, dict]:
  """``{'Mixed': ..., <source>: ...}``: the composite and per-dataset scores of Tables 5-6.

  ``sources`` ``[N]`` names each sample's dataset. Sources are listed in
  ``order`` first, then any others in order of appearance.
  """
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  sources = np.asarray(sources).astype(str)
  out = {"Mixed": compute(y_true, y_pred, num_classes)}
  seen = list(dict.fromkeys(sources.tolist()))
  for name in [s for s in order if s in seen] + [s for s in seen if s not in order]:
    mask = sources == name
    out[name] = compute(y_true[mask], y_pred[mask], num_classes)
  return out
