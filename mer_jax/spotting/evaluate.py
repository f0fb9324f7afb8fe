"""Spotting evaluation: IoU matching, TP / FP / FN, precision / recall / F1, and STRS.

IoU is counted in frames with inclusive ends: ``|A & B| / |A | B|``, a length being ``offset - onset + 1``,
and compared exactly (as fractions, so IoU 0.5 is exactly 0.5). A prediction can only match a ground-truth
interval of the same video and the same type (micro / macro). Two counting rules:

* ``megc2020`` (the MEGC 2020 baseline's ``F1_small``): TP = ground-truth intervals hit by at least one
  prediction; FP = predictions - TP; FN = ground truths - TP. One prediction can credit two ground truths
  (then FP can be negative and precision = TP / predictions can exceed 1; reported as the rule gives it).
* ``one-to-one``: predictions in decreasing score (file order breaks ties) each take the not yet matched
  ground truth of highest IoU that passes the threshold (the earlier ground truth breaks ties); TP =
  matched pairs, FP = predictions - TP, FN = ground truths - TP. (The VOC matcher used by SOFTNet-style
  code instead marks a prediction FP when its single best-IoU ground truth is already taken.)

The threshold is ``IoU >= iou`` or, with ``strict``, ``IoU > iou`` (ABPN / AUW-GCN code). Counts are pooled
(summed) over videos, then over types ('all' = micro + macro) and over datasets ('overall'); F1 is computed
from the pooled counts, never averaged. Every video of the ground truth is counted, so a subject with no
predictions adds all its intervals as false negatives.

STRS (spot-then-recognise) = spotting F1 (micro) x analysis F1, the analysis being computed over the
correctly spotted micro-expressions only: each matched (ground truth, prediction) pair gives (true emotion,
predicted emotion), and UF1 / UAR come from :mod:`mer_jax.metrics` (the mean over the active classes of
per-class F1 / recall). For ``megc2020`` a ground truth hit by several predictions takes the emotion of its
best-IoU prediction (higher score, then file order break ties). Only datasets whose ground truth has
emotions (CAS(ME)^2) get an STRS. Differences from the public STRS script are listed in docs/spotting.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

from mer_jax import metrics
from mer_jax.errors import DataError
from mer_jax.spotting.readers import CAS_EMOTIONS, DISPLAY_NAMES, TYPES, LongReadResult, LongVideo

MATCHINGS = ("megc2020", "one-to-one")
TYPE_ALIASES = {
  "micro": "micro",
  "me": "micro",
  "micro-expression": "micro",
  "micro-1/2": "micro",
  "macro": "macro",
  "mae": "macro",
  "macro-expression": "macro",
}
NO_EMOTION = "(none)"


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One predicted interval, 1-based inclusive frame numbers of ``video`` (a ground-truth video id)."""

  video: str
  onset: int
  offset: int
  type: str  # 'micro' | 'macro'
  score: float = 0.0
  emotion: Optional[str] = None
  dataset: str = ""  # filled in when the video is resolved
  source: str = ""  # 'pred.json entry 3'


@dataclasses.dataclass(frozen=True)
class Counts:
  """Pooled counts; F1 from them (0 where undefined)."""

  tp: int = 0
  fp: int = 0
  fn: int = 0

  def __add__(self, o: "Counts") -> "Counts":
    return Counts(self.tp + o.tp, self.fp + o.fp, self.fn + o.fn)

  @property
  def n_pred(self) -> int:
    return self.tp + self.fp

  @property
  def n_gt(self) -> int:
    return self.tp + self.fn

  @property
  def precision(self) -> float:
    return self.tp / self.n_pred if self.n_pred > 0 else 0.0

  @property
  def recall(self) -> float:
    return self.tp / self.n_gt if self.n_gt > 0 else 0.0

  @property
  def f1(self) -> float:
    p, r = self.precision, self.recall
    return 2 * p * r / (p + r) if p + r > 0 else 0.0

  def as_dict(self) -> dict:
    return {
      "gt": self.n_gt,
      "pred": self.n_pred,
      "tp": self.tp,
      "fp": self.fp,
      "fn": self.fn,
      "precision": self.precision,
      "recall": self.recall,
      "f1": self.f1,
    }


# ---------------------------------------------------------------------------- matching


def iou(a: tuple[int, int], b: tuple[int, int]) -> Fraction:
  """Exact IoU of two inclusive frame ranges ``(onset, offset)``."""
  inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
  if inter <= 0:
    return Fraction(0)
  union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
  return Fraction(inter, union)


def passes(v: Fraction, threshold: Fraction, strict: bool) -> bool:
  return v > threshold if strict else v >= threshold


def match(
  preds: Sequence[tuple[int, int]],
  scores: Sequence[float],
  gts: Sequence[tuple[int, int]],
  *,
  threshold: Fraction,
  strict: bool,
  rule: str,
) -> tuple[Counts, list[tuple[int, int]]]:
  """Matches the predictions of ONE video and type against its ground truths.

  Args:
    preds: ``[(onset, offset)]`` predictions, in file order.
    scores: their confidences (one-to-one order).
    gts: ``[(onset, offset)]`` ground truths.
    threshold: IoU threshold (exact fraction).
    strict: IoU > threshold instead of >=.
    rule: 'megc2020' or 'one-to-one' (module docstring).
  Returns:
    (Counts, pairs): pairs ``(gt index, pred index)`` of the correctly spotted ground truths, one per TP.
  """
  ious = [[iou(p, g) for g in gts] for p in preds]
  pairs: list[tuple[int, int]] = []
  if rule == "megc2020":
    for gi in range(len(gts)):
      hits = [pi for pi in range(len(preds)) if passes(ious[pi][gi], threshold, strict)]
      if hits:
        best = min(hits, key=lambda pi: (-ious[pi][gi], -scores[pi], pi))
        pairs.append((gi, best))
  elif rule == "one-to-one":
    taken: set[int] = set()
    for pi in sorted(range(len(preds)), key=lambda i: (-scores[i], i)):
      cand = [gi for gi in range(len(gts)) if gi not in taken and passes(ious[pi][gi], threshold, strict)]
      if cand:
        gi = min(cand, key=lambda g: (-ious[pi][g], g))
        taken.add(gi)
        pairs.append((gi, pi))
    pairs.sort()
  else:
    raise ValueError(f"unknown matching rule {rule!r}; expected one of {MATCHINGS}")
  tp = len(pairs)
  return Counts(tp=tp, fp=len(preds) - tp, fn=len(gts) - tp), pairs


# ---------------------------------------------------------------------------- evaluation


def _video_index(gts: Sequence[LongReadResult]) -> dict[str, list[tuple[str, LongVideo]]]:
  """Every accepted spelling of a video -> [(dataset, video)]."""
  index: dict[str, list[tuple[str, LongVideo]]] = {}
  for res in gts:
    for v in res.videos:
      for name in (v.video,) + v.aliases:
        lst = index.setdefault(name.lower(), [])
        if all(v is not w for _, w in lst):
          lst.append((res.dataset, v))
  return index


def resolve(preds: Sequence[Prediction], gts: Sequence[LongReadResult], pred_file: str) -> list[Prediction]:
  """Maps each prediction's video to a ground-truth video id (DataError naming the entry otherwise)."""
  index = _video_index(gts)
  examples = ", ".join(sorted({v.video for r in gts for v in r.videos})[:4])
  out = []
  for p in preds:
    hits = index.get(p.video.strip().lower(), [])
    if p.dataset:
      hits = [h for h in hits if h[0] == p.dataset]
    if not hits:
      raise DataError(
        f"{p.source}: unknown video {p.video!r}: it is not in the ground truth "
        f"({', '.join(os.path.basename(r.annotation_file) for r in gts)}); videos are named like "
        f"{examples}; fix the prediction file or give the right --gt"
      )
    if len(hits) > 1:
      raise DataError(
        f"{p.source}: video {p.video!r} names videos of "
        f'{" and ".join(DISPLAY_NAMES[d] for d, _ in hits)}; add "dataset": "cas_long" or '
        '"samm_lv" to the entry'
      )
    ds, v = hits[0]
    if v.num_frames is not None and p.offset > v.num_frames:
      raise DataError(f"{p.source}: offset {p.offset} is past the last frame ({v.num_frames}) of video {v.video}")
    out.append(dataclasses.replace(p, video=v.video, dataset=ds))
  return out


def evaluate(
  gts: Sequence[LongReadResult],
  preds: Sequence[Prediction],
  *,
  iou_threshold=0.5,
  strict: bool = False,
  rule: str = "megc2020",
) -> dict:
  """Scores resolved predictions against the ground truth.

  Args:
    gts: one LongReadResult per dataset.
    preds: predictions whose ``video`` / ``dataset`` are resolved (:func:`resolve`).
    iou_threshold: number or string ('0.5'); compared exactly.
    strict: IoU > threshold.
    rule: 'megc2020' | 'one-to-one'.
  Returns:
    ``{'rule', 'iou', 'strict', 'datasets': {ds: {'micro', 'macro', 'all': Counts-dict}}, 'overall': {...},
    'subjects': {ds: {subject: {type: Counts-dict}}}, 'strs': {...}}``.
  """
  threshold = Fraction(str(iou_threshold))
  by_video: dict[tuple[str, str, str], list[Prediction]] = {}
  for p in preds:
    by_video.setdefault((p.dataset, p.video, p.type), []).append(p)
  counts: dict[str, dict[str, Counts]] = {}
  subjects: dict[str, dict[str, dict[str, Counts]]] = {}
  emotion_pairs: dict[str, list[tuple[str, str]]] = {}
  for res in gts:
    ds = res.dataset
    counts[ds] = {t: Counts() for t in TYPES}
    subjects[ds] = {}
    emotion_pairs[ds] = []
    for v in res.videos:
      sc = subjects[ds].setdefault(v.subject, {t: Counts() for t in TYPES})
      for t in TYPES:
        g = [i for i in v.intervals if i.type == t]
        p = by_video.get((ds, v.video, t), [])
        c, pairs = match(
          [(x.onset, x.offset) for x in p],
          [x.score for x in p],
          [(i.onset, i.offset) for i in g],
          threshold=threshold,
          strict=strict,
          rule=rule,
        )
        counts[ds][t] = counts[ds][t] + c
        sc[t] = sc[t] + c
        if t == "micro":
          emotion_pairs[ds] += [(g[gi].emotion or "", p[pi].emotion or NO_EMOTION) for gi, pi in pairs]
  out_ds = {}
  for ds, c in counts.items():
    out_ds[ds] = {t: c[t].as_dict() for t in TYPES}
    out_ds[ds]["all"] = (c["micro"] + c["macro"]).as_dict()
  overall = {t: sum((counts[ds][t] for ds in counts), Counts()) for t in TYPES}
  out_overall = {t: overall[t].as_dict() for t in TYPES}
  out_overall["all"] = (overall["micro"] + overall["macro"]).as_dict()
  strs = {}
  with_emotion = [r.dataset for r in gts if any(i.emotion for v in r.videos for i in v.intervals)]
  for ds in with_emotion:
    strs[ds] = _strs(counts[ds]["micro"], emotion_pairs[ds])
  if len(with_emotion) > 1:
    strs["overall"] = _strs(
      sum((counts[ds]["micro"] for ds in with_emotion), Counts()),
      [pr for ds in with_emotion for pr in emotion_pairs[ds]],
    )
  return {
    "rule": rule,
    "iou": float(threshold),
    "strict": strict,
    "datasets": out_ds,
    "overall": out_overall,
    "subjects": {
      ds: {s: {t: c.as_dict() for t, c in d.items()} for s, d in sorted(sub.items())} for ds, sub in subjects.items()
    },
    "strs": strs,
    "no_strs": [r.dataset for r in gts if r.dataset not in with_emotion],
  }


def _strs(spot: Counts, pairs: list[tuple[str, str]]) -> dict:
  """STRS from the micro spotting counts and the (true, predicted) emotions of the spotted ones."""
  classes = list(CAS_EMOTIONS)
  for _, pe in pairs:
    if pe not in classes:
      classes.append(pe)
  for te, _ in pairs:
    if te not in classes:
      classes.append(te)
  idx = {c: i for i, c in enumerate(classes)}
  m = metrics.compute(
    np.array([idx[t] for t, _ in pairs], np.int64), np.array([idx[p] for _, p in pairs], np.int64), len(classes)
  )
  return {
    "spot_f1": spot.f1,
    "analysis_uf1": m["uf1"],
    "analysis_uar": m["uar"],
    "analysed": len(pairs),
    "strs": spot.f1 * m["uf1"],
    "classes": classes,
    "confusion": m["confusion"],
  }


# ---------------------------------------------------------------------------- prediction files


def _int(v, what: str, where: str) -> int:
  if isinstance(v, bool):
    raise DataError(f"{where}: {what} {v!r} is not a frame number")
  if isinstance(v, int):
    return v
  if isinstance(v, float) and v.is_integer():
    return int(v)
  s = str(v).strip() if v is not None else ""
  try:
    f = float(s)
  except ValueError:
    f = None
  if f is None or not f.is_integer():
    raise DataError(f"{where}: {what} {v!r} is not a frame number")
  return int(f)


def _prediction(where: str, video, onset, offset, type_, score, emotion, dataset="") -> Prediction:
  if video is None or str(video).strip() == "":
    raise DataError(f"{where}: no video")
  on, off = _int(onset, "onset", where), _int(offset, "offset", where)
  if on < 1:
    raise DataError(f"{where}: bad interval: onset {on} is not a frame number (frames are numbered from 1)")
  if off < on:
    raise DataError(f"{where}: bad interval: offset {off} is before onset {on}")
  t = TYPE_ALIASES.get(str(type_ or "").strip().lower().replace(" ", ""))
  if t is None:
    raise DataError(f"{where}: type {type_!r} is not one of micro, macro (or me, mae)")
  try:
    sc = 0.0 if score is None or str(score).strip() == "" else float(score)
  except ValueError:
    raise DataError(f"{where}: score {score!r} is not a number") from None
  if not np.isfinite(sc):
    raise DataError(f"{where}: score {score!r} is not a finite number")
  emo = None if emotion is None or str(emotion).strip() == "" else str(emotion).strip().lower()
  return Prediction(
    video=str(video).strip(),
    onset=on,
    offset=off,
    type=t,
    score=sc,
    emotion=emo,
    dataset=str(dataset or "").strip(),
    source=where,
  )


def load_predictions(path: str, fmt: str = "auto") -> list[Prediction]:
  """Reads a prediction file.

  Formats:
    json: a list of ``{"video", "onset", "offset", "type", "score"}`` objects (``"emotion"`` for STRS and
      ``"dataset"`` optional), or ``{"predictions": [...]}``; type micro / macro (or me / mae).
    csv (MEGC): one interval per line ``vid,pred_onset,pred_offset,type`` with type me / mae (the MEGC 2022
      submission columns), optionally followed by ``score`` and ``emotion``; a first line with a ``vid`` or
      ``video`` cell is a header, and then columns are found by name (vid / video, pred_onset / onset,
      pred_offset / offset, type, score, emotion).
    csv (STR): the spot-then-recognise columns ``subject,video,onset,offset,emotion`` (a header with an emotion
      and no type column): every line is a micro-expression.
  Args:
    path: the file.
    fmt: 'json', 'csv' or 'auto' (by extension: .json is json, anything else csv).
  Returns:
    Predictions in file order (videos not yet resolved).
  """
  if not os.path.isfile(path):
    raise DataError(f"prediction file {path} does not exist")
  if fmt == "auto":
    fmt = "json" if path.lower().endswith(".json") else "csv"
  base = os.path.basename(path)
  if fmt == "json":
    try:
      with open(path) as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(
        f"{path} is not valid JSON ({e}); expected a list of {{{{video, onset, offset, type, score}}}} objects"
      ) from None
    if isinstance(data, dict) and isinstance(data.get("predictions"), list):
      data = data["predictions"]
    if not isinstance(data, list):
      raise DataError(
        f'{path}: expected a JSON list of {{video, onset, offset, type, score}} objects (or {{"predictions": [...]}})'
      )
    out = []
    for n, e in enumerate(data, 1):
      where = f"{base} entry {n}"
      if not isinstance(e, dict):
        raise DataError(f"{where}: expected an object {{video, onset, offset, type, score}}, found {e!r:.60}")
      missing = [k for k in ("video", "onset", "offset", "type") if k not in e]
      if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
      out.append(
        _prediction(
          where, e["video"], e["onset"], e["offset"], e["type"], e.get("score"), e.get("emotion"), e.get("dataset", "")
        )
      )
    return out
  if fmt != "csv":
    raise DataError(f"unknown prediction format {fmt!r}; expected json, csv or auto")
  with open(path, newline="") as f:
    rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  cols = {"video": 0, "onset": 1, "offset": 2, "type": 3, "score": 4, "emotion": 5}
  start = 0
  if rows and any(c.strip().lower() in ("vid", "video") for c in rows[0]):
    names = {
      "vid": "video",
      "video": "video",
      "pred_onset": "onset",
      "onset": "onset",
      "pred_offset": "offset",
      "offset": "offset",
      "type": "type",
      "score": "score",
      "emotion": "emotion",
    }
    cols = {}
    for j, h in enumerate(rows[0]):
      k = names.get(h.strip().lower())
      if k is not None and k not in cols:
        cols[k] = j
    if "type" not in cols and "emotion" in cols:
      cols["type"] = None  # spot-then-recognise (STR) files: subject,video,onset,offset,emotion, micro only
    missing = [k for k in ("video", "onset", "offset", "type") if k not in cols]
    if missing:
      raise DataError(
        f"{path}: header has no column(s) {', '.join(missing)}; expected "
        "vid,pred_onset,pred_offset,type[,score][,emotion]"
      )
    start = 1
  out = []
  for n in range(start, len(rows)):
    r = rows[n]
    where = f"{base} line {n + 1}"
    if len(r) < 4:
      raise DataError(f"{where}: expected vid,pred_onset,pred_offset,type[,score][,emotion], found {','.join(r)!r}")
    get = lambda k, r=r: r[cols[k]] if cols.get(k) is not None and cols[k] < len(r) else None  # noqa: E731
    type_ = "micro" if "type" in cols and cols["type"] is None else get("type")
    out.append(_prediction(where, get("video"), get("onset"), get("offset"), type_, get("score"), get("emotion")))
  return out
