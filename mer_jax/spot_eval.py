"""Scores spotted intervals against CAS(ME)^2 / SAMM Long Videos ground truth.

  python -m mer_jax.spot_eval --pred pred.json [--pred more.json ...] --gt "CAS(ME)^2code_final.xlsx"
      --gt SAMM_LongVideos_V2_Release.xlsx [--iou 0.5] [--iou-strict] [--matching megc2020|one-to-one|both]
      [--format auto|json|csv] [--json OUT]

Prints TP / FP / FN, precision, recall and F1 per type (micro / macro / all), per dataset and overall (counts
pooled, then F1), for each matching rule, and STRS where the ground truth has emotions. Several ``--pred`` files
(e.g. one ``mer_jax.spot`` output per video) are scored together. Counting rules, the
prediction formats and the differences from published scripts: docs/spotting.md and
:mod:`mer_jax.spotting.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction

from mer_jax import reporting
from mer_jax.errors import DataError, run_cli
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import readers

RULE_TEXT = {
  "megc2020": "TP = ground truths hit by >= 1 prediction, FP = predictions - TP (MEGC 2020 baseline)",
  "one-to-one": "each prediction (by score) takes at most one unmatched ground truth",
}


def _fmt(x: float) -> str:
  return f"{x:.4f}"


def format_report(result: dict, gts) -> str:
  """The text table of one :func:`mer_jax.spotting.evaluate.evaluate` result."""
  op = ">" if result["strict"] else ">="
  lines = [
    f"matching {result['rule']}: {RULE_TEXT[result['rule']]}; IoU {op} {float(Fraction(result['iou'])):g}",
    f"{'dataset':<11}{'type':<7}{'GT':>6}{'pred':>6}{'TP':>6}{'FP':>6}{'FN':>6}{'precision':>11}{'recall':>8}{'F1':>8}",
  ]

  def block(name: str, d: dict) -> None:
    for t in ("micro", "macro", "all"):
      c = d[t]
      lines.append(
        f"{name if t == 'micro' else '':<11}{t:<7}{c['gt']:>6}{c['pred']:>6}{c['tp']:>6}{c['fp']:>6}"
        f"{c['fn']:>6}{_fmt(c['precision']):>11}{_fmt(c['recall']):>8}{_fmt(c['f1']):>8}"
      )

  for ds, d in result["datasets"].items():
    block(readers.DISPLAY_NAMES[ds], d)
  block("overall", result["overall"])
  for ds, s in result["strs"].items():
    name = "overall" if ds == "overall" else readers.DISPLAY_NAMES[ds]
    lines.append(
      f"STRS {name}: spot F1 (micro) {_fmt(s['spot_f1'])} x analysis UF1 {_fmt(s['analysis_uf1'])} = "
      f"{_fmt(s['strs'])} (analysis UAR {_fmt(s['analysis_uar'])}, {s['analysed']} correctly spotted "
      "micro-expressions)"
    )
  for ds in result["no_strs"]:
    lines.append(f"STRS {readers.DISPLAY_NAMES[ds]}: not defined (its annotation has no emotions)")
  for ds, subs in result["subjects"].items():
    empty = [s for s, d in subs.items() if all(d[t]["pred"] == 0 for t in d)]
    if empty:
      lines.append(
        f"{readers.DISPLAY_NAMES[ds]}: {len(empty)} of {len(subs)} subjects without predictions "
        f"(their intervals count as false negatives): {', '.join(empty)}"
      )
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.spot_eval", description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--pred",
    required=True,
    action="append",
    help="predictions: .json list of {video, onset, offset, type, score} (or mer_jax.spot / analyse output), "
    "MEGC csv lines vid,pred_onset,pred_offset,type[,score][,emotion] or STR csv subject,video,onset,offset,emotion "
    "(repeat for several files, e.g. one per video)",
  )
  ap.add_argument(
    "--gt",
    required=True,
    action="append",
    help="ground truth: CAS(ME)^2code_final.xlsx, SAMM_LongVideos_V*_Release.xlsx or a dataset folder "
    "(repeat for several datasets)",
  )
  ap.add_argument("--iou", default="0.5", help="IoU threshold (default 0.5)")
  ap.add_argument("--iou-strict", action="store_true", help="count IoU > threshold instead of >=")
  ap.add_argument("--matching", default="both", choices=ev.MATCHINGS + ("both",))
  ap.add_argument("--format", default="auto", choices=("auto", "json", "csv"), help="prediction file format")
  ap.add_argument("--skip-bad", action="store_true", help="skip (and count) bad ground-truth rows")
  ap.add_argument("--json", default=None, help="also write the results (per dataset, type, subject) here")
  a = ap.parse_args(argv)
  try:
    thr = Fraction(a.iou)
  except (ValueError, ZeroDivisionError):
    raise DataError(f"--iou {a.iou!r} is not a number; give e.g. --iou 0.5") from None
  if not 0 <= thr <= 1:
    raise DataError(f"--iou {a.iou} is outside [0, 1]")
  gts = []
  for g in a.gt:
    res = readers.read_long(g, skip_bad=a.skip_bad, annotations_only=True)
    if any(r.dataset == res.dataset for r in gts):
      raise DataError(f"--gt {g}: a second {readers.DISPLAY_NAMES[res.dataset]} annotation; give each dataset once")
    gts.append(res)
  preds = [p for f in a.pred for p in ev.resolve(ev.load_predictions(f, a.format), gts, f)]
  rules = ev.MATCHINGS if a.matching == "both" else (a.matching,)
  results = {}
  out = []
  for res in gts:
    c = res.counts()
    rep = ", ".join(f"{k} {v}" for k, v in sorted(res.repairs.items())) or "none"
    out.append(
      f"{readers.DISPLAY_NAMES[res.dataset]} ({os.path.basename(res.annotation_file)}): {c['videos']} videos, "
      f"{c['subjects']} subject(s), {c['micro']} micro + {c['macro']} macro intervals; repaired: {rep}; "
      f"skipped rows: {c['skipped']}"
    )
  out.append(f"predictions: {len(preds)} from {', '.join(a.pred)}")
  for rule in rules:
    results[rule] = ev.evaluate(gts, preds, iou_threshold=thr, strict=a.iou_strict, rule=rule)
    out.append("")
    out.append(format_report(results[rule], gts))
  if a.json:
    doc = {
      "pred": [os.path.abspath(f) for f in a.pred],
      "gt": [r.annotation_file for r in gts],
      "repairs": {r.dataset: r.repairs for r in gts},
      "skipped": {r.dataset: r.skipped for r in gts},
      "results": results,
    }
    reporting.atomic_write_text(a.json, json.dumps(doc, indent=1))
  print("\n".join(out))
  sys.stdout.flush()
  return 0


if __name__ == "__main__":
  run_cli(main)
