"""LOSO spotting benchmark: the training-free spotter vs a frame-difference baseline, thresholds from training
subjects only.

    python -m mer_jax.spot_bench --dataset cas_long|samm_lv|both --root DIR --out OUT_DIR [--rule megc2020|one-to-one]
    python -m mer_jax.spot_bench --dataset both --synth --out OUT_DIR [--subjects 2 --videos-per-subject 2 --seconds S]

``--root`` is the dataset folder (annotation file + frames; with ``--dataset both``, a folder holding
``cas_long/`` and ``samm_lv/``); ``--synth`` first writes SynthME long videos (:mod:`mer_jax.spotting.synth_long`)
into ``OUT_DIR/synthme`` (small defaults, for CI). For each dataset the motion signal of every video is computed
once (:func:`mer_jax.spotting.loso.compute_signals`), then each subject is held out in turn: the spotter's
thresholds and the baseline's window counts are chosen by F1 on the other subjects, and applied to it
(:mod:`mer_jax.spotting.loso`). Scores pool the held-out predictions of all folds (:mod:`mer_jax.spotting.evaluate`).

Writes ``OUT_DIR/results.json`` (everything: per-fold choices, per-subject counts, overall counts of both methods
under both counting rules, throughput), ``OUT_DIR/results.md`` (the tables) and ``OUT_DIR/params_<dataset>.json``
(the setting chosen on all subjects, for ``python -m mer_jax.spot --params``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import Optional, Sequence

from mer_jax import reporting
from mer_jax.errors import ConfigError, DataError, run_cli
from mer_jax.spot import load_params
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import loso
from mer_jax.spotting import spotter as sp
from mer_jax.spotting.readers import CAS_LONG, DISPLAY_NAMES, SAMM_LV, read_long

DATASETS = (CAS_LONG, SAMM_LV)
METHODS = ("spotter", "baseline")


def machine() -> str:
  return f"{os.cpu_count()}-core {platform.machine()}"


def bench_dataset(root: str, base: sp.SpotParams, rule: str, log) -> dict:
  """LOSO on one dataset folder -> the dataset's part of results.json."""
  res = read_long(root)
  if not res.videos:
    raise DataError(f"{root}: no videos with annotated intervals")
  log(f"{DISPLAY_NAMES[res.dataset]}: {len(res.videos)} videos, {len({v.subject for v in res.videos})} subjects")
  t0 = time.monotonic()
  signals = loso.compute_signals(res, base, log=log)
  sig_s = time.monotonic() - t0
  frames = sum(len(s.signal) for s in signals.values())
  out = loso.run_loso(res, signals, base, rule=rule, log=log)
  scores = {m: {r: ev.evaluate([res], out["predictions"][m], rule=r) for r in ev.MATCHINGS} for m in METHODS}
  chosen, f1_all = loso.select_all(res, signals, base, rule=rule)
  fps = res.videos[0].fps
  return {
    "dataset": res.dataset,
    "root": os.path.abspath(root),
    "videos": len(res.videos),
    "subjects": sorted({v.subject for v in res.videos}),
    "fps": fps,
    "gt": {t: len(res.intervals(t)) for t in ("micro", "macro")},
    "throughput": {
      "frames": frames,
      "seconds": sig_s,
      "frames_per_s": frames / max(sig_s, 1e-9),
      "realtime_factor": frames / max(sig_s, 1e-9) / fps,
    },
    "folds": out["folds"],
    "overall": {m: {r: scores[m][r]["overall"] for r in ev.MATCHINGS} for m in METHODS},
    "per_subject": {m: scores[m][rule]["subjects"][res.dataset] for m in METHODS},
    "predictions": {
      m: [
        {"video": p.video, "onset": p.onset, "offset": p.offset, "type": p.type, "score": round(p.score, 4)}
        for p in out["predictions"][m]
      ]
      for m in METHODS
    },
    "chosen_on_all_subjects": {"params": chosen.as_dict(), "train_f1": f1_all},
  }


def _f(x: float) -> str:
  return f"{x:.3f}"


def format_markdown(results: dict) -> str:
  rule = results["rule"]
  lines = [
    f"# Spotting benchmark (LOSO, IoU >= 0.5, {rule} counting)",
    "",
    f"{results['date']}, {results['machine']}, commit {results['commit']}. Thresholds chosen on the "
    "training subjects of each fold only.",
    "",
  ]
  if results.get("synthetic"):
    lines += ["SynthME long videos (synthetic): these numbers say nothing about real spotting.", ""]
  for d in results["datasets"]:
    name = DISPLAY_NAMES[d["dataset"]]
    tp = d["throughput"]
    lines += [
      f"## {name}: {d['videos']} videos, {len(d['subjects'])} subjects, {d['gt']['micro']} micro + "
      f"{d['gt']['macro']} macro",
      "",
      f"Motion signal: {tp['frames']} frames in {tp['seconds']:.1f} s = {tp['frames_per_s']:.0f} frames/s "
      f"({tp['realtime_factor']:.2f}x real time at {d['fps']:g} fps).",
      "",
      "| method | micro F1 | macro F1 | all F1 | all TP / FP / FN | one-to-one all F1 |",
      "|---|---|---|---|---|---|",
    ]
    for m in METHODS:
      o = d["overall"][m][rule]
      o1 = d["overall"][m]["one-to-one"]
      a = o["all"]
      lines.append(
        f"| {m} | {_f(o['micro']['f1'])} | {_f(o['macro']['f1'])} | {_f(a['f1'])} | "
        f"{a['tp']} / {a['fp']} / {a['fn']} | {_f(o1['all']['f1'])} |"
      )
    lines += [
      "",
      "| held-out subject | spotter TP / FP / FN | spotter F1 | baseline TP / FP / FN | baseline F1 | "
      "micro threshold | macro threshold |",
      "|---|---|---|---|---|---|---|",
    ]
    folds = {f["subject"]: f for f in d["folds"]}
    for s in d["subjects"]:
      row = [s]
      for m in METHODS:
        c = d["per_subject"][m][s]
        tp_, fp_, fn_ = (sum(c[t][k] for t in ("micro", "macro")) for k in ("tp", "fp", "fn"))
        f1 = ev.Counts(tp_, fp_, fn_).f1
        row += [f"{tp_} / {fp_} / {fn_}", _f(f1)]
      p = folds[s]["spotter"]["params"]
      row += [f"{p['threshold']:g}", f"{p['macro_threshold']:g}"]
      lines.append("| " + " | ".join(row) + " |")
    lines.append("")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.spot_bench", description=__doc__.split("\n\n")[0])
  ap.add_argument("--dataset", required=True, choices=DATASETS + ("both",))
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--root", help="dataset folder (both: a folder holding cas_long/ and samm_lv/)")
  src.add_argument("--synth", action="store_true", help="write SynthME long videos into OUT/synthme and use them")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--rule", choices=ev.MATCHINGS, default="megc2020", help="counting rule for selection and tables")
  ap.add_argument("--params", default=None, help="JSON of fixed spotter settings (flow, k_seconds, ...)")
  ap.add_argument("--subjects", type=int, default=2, help="SynthME: subjects")
  ap.add_argument("--videos-per-subject", type=int, default=2, help="SynthME: videos per subject")
  ap.add_argument("--seconds", type=float, default=None, help="SynthME: video length (default 20 CAS, 12 SAMM-LV)")
  ap.add_argument("--seed", type=int, default=0, help="SynthME seed")
  ap.add_argument("--quiet", action="store_true")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  a = parse_args(argv)
  log = (lambda msg: None) if a.quiet else loso.stderr_log
  base = load_params(a.params)
  datasets = DATASETS if a.dataset == "both" else (a.dataset,)
  os.makedirs(a.out, exist_ok=True)
  roots = {}
  if a.synth:
    from mer_jax.spotting import synth_long

    if a.subjects < 2:
      raise ConfigError(f"--subjects {a.subjects}: LOSO needs at least 2 subjects")
    for d in datasets:
      root = os.path.join(a.out, "synthme", d)
      if not (os.path.isdir(root) and os.listdir(root)):
        log(f"writing SynthME {d} into {root}")
        synth_long.generate_long(
          d,
          root,
          seed=a.seed,
          subjects=a.subjects,
          videos_per_subject=a.videos_per_subject,
          seconds=a.seconds,
          quiet=a.quiet,
        )
      roots[d] = root
  else:
    for d in datasets:
      roots[d] = os.path.join(a.root, d) if a.dataset == "both" else a.root
      if not os.path.isdir(roots[d]):
        raise DataError(
          f"--root: {roots[d]} is not a folder; give the {DISPLAY_NAMES[d]} dataset folder"
          + (" (with --dataset both, a folder holding cas_long/ and samm_lv/)" if a.dataset == "both" else "")
        )
  results = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": machine(),
    "commit": reporting.git_commit_of_repo() or "unknown",
    "rule": a.rule,
    "synthetic": a.synth,
    "base_params": base.as_dict(),
    "grid": [dict(g) for g in loso.SPOT_GRID],
    "baseline_counts": list(loso.BASELINE_COUNTS),
    "datasets": [],
  }
  for d in datasets:
    part = bench_dataset(roots[d], base, a.rule, log)
    results["datasets"].append(part)
    with open(os.path.join(a.out, f"params_{d}.json"), "w") as f:
      json.dump(
        {
          "dataset": d,
          "note": "chosen on all subjects of " + roots[d],
          "params": part["chosen_on_all_subjects"]["params"],
        },
        f,
        indent=1,
      )
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  md = format_markdown(results)
  with open(os.path.join(a.out, "results.md"), "w") as f:
    f.write(md + "\n")
  print(md)
  return 0


if __name__ == "__main__":
  run_cli(main)
