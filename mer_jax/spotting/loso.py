"""Leave-one-subject-out parameter selection for the training-free spotter and the frame-difference baseline.

For each held-out subject, the candidate settings are scored (:func:`mer_jax.spotting.evaluate.evaluate`, counting
rule as reported) on the OTHER subjects' videos only, in two stages: the micro-expression scale
(:data:`MICRO_GRID`) by micro F1, then the macro-expression scale (:data:`MACRO_GRID`) by macro F1; the best (the
first in grid order on ties) is applied to the held-out subject's videos. The held-out subject never influences its own
thresholds. The motion signals do not depend on any tuned setting (only on ``k_seconds`` and the flow settings,
fixed beforehand), so they are computed once per video and the grid runs on them.

Baseline (:func:`mer_jax.spotting.spotter.frame_difference_intervals`): fixed-length windows centred at the largest
mean absolute frame differences of the face box; window lengths are the median ground-truth lengths of each type
over the training subjects, and the number of windows per video and type comes from the same LOSO selection.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from mer_jax.errors import DataError
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import spotter as sp
from mer_jax.spotting.readers import LongReadResult, LongVideo

# Candidate values searched on the training subjects (spotter).
# Micro-expression scale first (chosen by micro F1), then the macro scale (by macro F1, micro settings fixed).
MICRO_GRID = {
  "threshold": (3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0),
  "lag_fraction": (0.0, 0.5, 1.0),
  "pad_seconds": (0.0, 0.05),
  "merge_seconds": (0.1, 0.3),
}
MACRO_GRID = {
  "macro_threshold": (2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0),
  "macro_smooth_seconds": (0.1, 0.3, 0.6),
  "macro_merge_seconds": (0.1, 0.3, 0.6),
}
SPOT_GRID = (MICRO_GRID, MACRO_GRID)
# Windows per video and type (baseline).
BASELINE_COUNTS = (0, 1, 2, 3, 4, 6)


def grid(base: sp.SpotParams, space: dict) -> list[sp.SpotParams]:
  """Every combination of ``space`` ({field: values}) over ``base``, in a fixed order."""
  keys = list(space)
  return [dataclasses.replace(base, **dict(zip(keys, vals))) for vals in itertools.product(*(space[k] for k in keys))]


def read_frames(video: LongVideo):
  """Yields the frames (uint8 [H, W] or [H, W, 3] BGR) of a long video in frame-number order."""
  paths = video.frame_paths()
  for n in sorted(paths):
    img = cv2.imread(paths[n], cv2.IMREAD_UNCHANGED)
    if img is None:
      raise DataError(f"{paths[n]}: cannot decode the image (corrupt or not an image); replace or remove it")
    if img.dtype != np.uint8:
      img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    yield img


def compute_signals(
  res: LongReadResult, params: sp.SpotParams, *, log: Optional[Callable[[str], None]] = None
) -> dict[str, sp.MotionSignal]:
  """{video id: MotionSignal} of every video of a dataset read with its frames."""
  out = {}
  for i, v in enumerate(res.videos, 1):
    t0 = time.monotonic()
    out[v.video] = sp.motion_signal(read_frames(v), v.fps, params, num_frames=v.num_frames, name=v.frame_dir)
    if log:
      n = len(out[v.video].signal)
      log(
        f"  signal {i}/{len(res.videos)} {v.video}: {n} frames in {time.monotonic() - t0:.1f} s "
        f"({n / max(time.monotonic() - t0, 1e-9):.0f} frames/s)"
      )
  return out


def _preds(video: LongVideo, ds: str, intervals: Sequence[sp.SpottedInterval]) -> list[ev.Prediction]:
  return [
    ev.Prediction(video=video.video, onset=i.onset, offset=i.offset, type=i.type, score=i.score, dataset=ds)
    for i in intervals
  ]


def spot_predictions(
  res: LongReadResult, videos: Sequence[LongVideo], signals: dict[str, sp.MotionSignal], params: sp.SpotParams
) -> list[ev.Prediction]:
  """The spotter's predictions for ``videos`` from their signals."""
  return [
    p
    for v in videos
    for p in _preds(
      v,
      res.dataset,
      sp.intervals_of(signals[v.video], params),
    )
  ]


def baseline_predictions(
  res: LongReadResult, videos: Sequence[LongVideo], signals: dict[str, sp.MotionSignal], setting: dict
) -> list[ev.Prediction]:
  """The baseline's predictions for ``videos`` (``setting``: micro_frames, macro_frames, n_micro, n_macro)."""
  return [
    p
    for v in videos
    for p in _preds(v, res.dataset, sp.frame_difference_intervals(signals[v.video].frame_diff, v.fps, **setting))
  ]


def _subset(res: LongReadResult, videos: Sequence[LongVideo]) -> LongReadResult:
  return dataclasses.replace(res, videos=list(videos))


def _f1(res: LongReadResult, videos, preds, rule: str, kind: str = "all") -> float:
  return ev.evaluate([_subset(res, videos)], preds, rule=rule)["overall"][kind]["f1"]


def select(
  res: LongReadResult,
  videos: Sequence[LongVideo],
  candidates: Sequence,
  predict: Callable,
  rule: str,
  kind: str = "all",
) -> tuple[int, float]:
  """(index of the best candidate by F1 of ``kind`` (micro | macro | all) on ``videos``, its F1); the first
  wins ties."""
  best, best_f1 = 0, -1.0
  for i, c in enumerate(candidates):
    f1 = _f1(res, videos, predict(res, videos, c), rule, kind)
    if f1 > best_f1 + 1e-12:
      best, best_f1 = i, f1
  return best, best_f1


def select_spotter(
  res: LongReadResult,
  videos: Sequence[LongVideo],
  signals: dict[str, sp.MotionSignal],
  base: sp.SpotParams,
  rule: str,
  space: Sequence[dict] = SPOT_GRID,
) -> tuple[sp.SpotParams, float]:
  """Staged grid search on ``videos``: each stage of ``space`` ({field: values}) in turn, by micro F1 for the
  first stage, by macro F1 for the second (the earlier stages' choice fixed), then by all. Returns (params, F1
  over micro + macro on ``videos``)."""
  params = base
  predict = lambda r, vs, c: spot_predictions(r, vs, signals, c)  # noqa: E731
  for n, stage in enumerate(space):
    cands = grid(params, stage)
    i, _ = select(res, videos, cands, predict, rule, ("micro", "macro")[n] if n < 2 else "all")
    params = cands[i]
  return params, _f1(res, videos, predict(res, videos, params), rule)


def baseline_candidates(train: Sequence[LongVideo], counts: Sequence[int] = BASELINE_COUNTS) -> list[dict]:
  """Window lengths from the training ground truth (median length per type) x window ``counts`` per type."""

  def med(t, default):
    lens = [i.length for v in train for i in v.intervals if i.type == t]
    return int(np.median(lens)) if lens else default

  fps = train[0].fps if train else 30.0
  mi, ma = med("micro", max(1, int(round(0.4 * fps)))), med("macro", max(1, int(round(1.0 * fps))))
  return [{"micro_frames": mi, "macro_frames": ma, "n_micro": a, "n_macro": b} for a in counts for b in counts]


def _tuned(params: sp.SpotParams, space: Sequence[dict]) -> dict:
  return {k: getattr(params, k) for stage in space for k in stage}


def run_loso(
  res: LongReadResult,
  signals: dict[str, sp.MotionSignal],
  base: sp.SpotParams,
  *,
  rule: str = "megc2020",
  space: Sequence[dict] = SPOT_GRID,
  baseline_counts: Sequence[int] = BASELINE_COUNTS,
  log: Optional[Callable[[str], None]] = None,
) -> dict:
  """LOSO over the subjects of one dataset.

  Args:
    res: the dataset (videos with frames).
    signals: :func:`compute_signals` of it.
    base: the fixed spotter settings (the grid varies the extraction settings over it).
    rule: counting rule for selection and scoring ('megc2020' | 'one-to-one').
    space: the staged grid (default :data:`SPOT_GRID`).
    baseline_counts: the baseline's candidate window counts per video and type (default :data:`BASELINE_COUNTS`).
    log: progress lines.
  Returns:
    ``{'folds': [{'subject', 'spotter': {params, train_f1}, 'baseline': {setting, train_f1}}],
    'predictions': {'spotter': [Prediction], 'baseline': [...]}}``; predictions of each video come from the
    fold that held its subject out.
  """
  subjects = sorted({v.subject for v in res.videos})
  if len(subjects) < 2:
    raise DataError(f"{res.annotation_file}: LOSO needs at least 2 subjects, found {len(subjects)}")
  folds, preds = [], {"spotter": [], "baseline": []}
  for s in subjects:
    train = [v for v in res.videos if v.subject != s]
    test = [v for v in res.videos if v.subject == s]
    params, f1 = select_spotter(res, train, signals, base, rule, space)
    bcands = baseline_candidates(train, baseline_counts)
    j, bf1 = select(res, train, bcands, lambda r, vs, c: baseline_predictions(r, vs, signals, c), rule)
    preds["spotter"] += spot_predictions(res, test, signals, params)
    preds["baseline"] += baseline_predictions(res, test, signals, bcands[j])
    chosen = _tuned(params, space)
    folds.append(
      {"subject": s, "spotter": {"params": chosen, "train_f1": f1}, "baseline": {"setting": bcands[j], "train_f1": bf1}}
    )
    if log:
      log(f"  fold {s}: spotter {chosen} (train F1 {f1:.3f}); baseline {bcands[j]} (train F1 {bf1:.3f})")
  return {"folds": folds, "predictions": preds}


def select_all(
  res: LongReadResult,
  signals: dict[str, sp.MotionSignal],
  base: sp.SpotParams,
  *,
  rule: str = "megc2020",
  space: Sequence[dict] = SPOT_GRID,
) -> tuple[sp.SpotParams, float]:
  """The setting chosen on ALL subjects (for spotting new videos with ``python -m mer_jax.spot --params``)."""
  return select_spotter(res, res.videos, signals, base, rule, space)


def stderr_log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)
