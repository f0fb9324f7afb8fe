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


def from_confusion(conf: np.ndarray) -> dict:
  """Scores from an (accumulated) confusion matrix; see the module docstring."""
  conf = np.asarray(conf, np.int64)
  tp = np.diag(conf).astype(np.float64)
  support = conf.sum(axis=1).astype(np.float64)      # N_k: true samples per class
  predicted = conf.sum(axis=0).astype(np.float64)
  fp = predicted - tp
  fn = support - tp
  active = (support + predicted) > 0
  f1_den = 2 * tp + fp + fn
  f1 = np.divide(2 * tp, f1_den, out=np.zeros_like(tp), where=f1_den > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  total = conf.sum()
  n_active = int(active.sum())
  return {
      "accuracy": float(tp.sum() / total) if total else 0.0,
      "uf1": float(f1[active].sum() / n_active) if n_active else 0.0,
      "uar": float(recall[active].sum() / n_active) if n_active else 0.0,
      "confusion": conf.tolist(),
      "per_class_f1": f1.tolist(),
      "per_class_recall": recall.tolist(),
      "per_class_precision": precision.tolist(),
      "support": support.astype(np.int64).tolist(),
      "active": active.tolist(),
      "num_samples": int(total),
  }


def compute(y_true, y_pred, num_classes: int) -> dict:
  """Accuracy, UF1, UAR, confusion and per-class scores for label vectors ``[N]``."""
  return from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def accumulate(confusions: Sequence[np.ndarray]) -> np.ndarray:
  """Sums per-fold confusion matrices (the MEGC 2019 pooling)."""
  return np.sum(np.stack([np.asarray(c, np.int64) for c in confusions]), axis=0)


def by_source(y_true, y_pred, sources, num_classes: int,
              order: Sequence[str] = ("casme2", "samm", "smic")) -> Mapping[str, dict]:
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
