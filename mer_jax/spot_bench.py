"""LOSO spotting benchmark: the training-free spotter vs a frame-difference baseline, thresholds from training
subjects only.

    python -m mer_jax.spot_bench --config=configs/spot_cas_long.py --workdir=OUT_DIR --config.root=DIR
    python -m mer_jax.spot_bench --config=configs/spot_samm_lv.py --workdir=OUT_DIR --config.root=DIR
    python -m mer_jax.spot_bench --config=configs/spot_synth_demo.py --workdir=OUT_DIR    # SynthME, both layouts
        [--config.<field>=<value> ...] [--quiet]

The config (:func:`mer_jax.config_defaults.get_spot_bench_config`, one file per benchmark as for recognition)
names the dataset (``cas_long``, ``samm_lv`` or ``both``), its folder (``root``: annotation file + frames; for
``both`` a folder holding ``cas_long/`` and ``samm_lv/``), the counting rule, the fixed spotter settings
(``spotter.*``), the grid searched on the training subjects (``grid.micro.*``, ``grid.macro.*``) and the
baseline's window counts; ``synth.enabled`` first writes SynthME long videos (:mod:`mer_jax.spotting.synth_long`)
into ``OUT_DIR/synthme``. Any field can be overridden on the command line, e.g. ``--config.rule=one-to-one``,
``--config.spotter.flow=dis``, ``--config.grid.micro.threshold=(4.0,6.0)``. For each dataset the motion signal of
every video is computed once (:func:`mer_jax.spotting.loso.compute_signals`), then each subject is held out in
turn: the spotter's thresholds and the baseline's window counts are chosen by F1 on the other subjects, and
applied to it (:mod:`mer_jax.spotting.loso`). Scores pool the held-out predictions of all folds
(:mod:`mer_jax.spotting.evaluate`).

Writes ``OUT_DIR/results.json`` (everything: the config, per-fold choices, per-subject counts, overall counts of
both methods under both counting rules, throughput, the held-out predictions), ``OUT_DIR/results.md`` (the
tables) and ``OUT_DIR/params_<dataset>.json`` (the setting chosen on all subjects, for
``python -m mer_jax.spot --params``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import Optional, Sequence

import ml_collections

from mer_jax import configuration, reporting
from mer_jax.errors import ConfigError, DataError, run_cli
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import loso
from mer_jax.spotting import spotter as sp
from mer_jax.spotting.readers import CAS_LONG, DISPLAY_NAMES, SAMM_LV, read_long

DATASETS = (CAS_LONG, SAMM_LV)
METHODS = ("spotter", "baseline")


def machine() -> str:
  return f"{os.cpu_count()}-core {platform.machine()}"


def bench_dataset(
  root: str,
  base: sp.SpotParams,
  rule: str,
  log,
  *,
  space: Sequence[dict] = loso.SPOT_GRID,
  counts: Sequence[int] = loso.BASELINE_COUNTS,
) -> dict:
  """LOSO on one dataset folder -> the dataset's part of results.json (``space``: the spotter's two-stage grid,
  ``counts``: the baseline's window counts)."""
  res = read_long(root)
  if not res.videos:
    raise DataError(f"{root}: no videos with annotated intervals")
  log(f"{DISPLAY_NAMES[res.dataset]}: {len(res.videos)} videos, {len({v.subject for v in res.videos})} subjects")
  t0 = time.monotonic()
  signals = loso.compute_signals(res, base, log=log)
  sig_s = time.monotonic() - t0
  frames = sum(len(s.signal) for s in signals.values())
  out = loso.run_loso(res, signals, base, rule=rule, space=space, baseline_counts=counts, log=log)
  scores = {m: {r: ev.evaluate([res], out["predictions"][m], rule=r) for r in ev.MATCHINGS} for m in METHODS}
  chosen, f1_all = loso.select_all(res, signals, base, rule=rule, space=space)
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
      p = {**results["base_params"], **folds[s]["spotter"]["params"]}
      row += [f"{p['threshold']:g}", f"{p['macro_threshold']:g}"]
      lines.append("| " + " | ".join(row) + " |")
    lines.append("")
  return "\n".join(lines)


def spot_settings(config) -> tuple[sp.SpotParams, tuple[dict, dict], tuple[int, ...]]:
  """(fixed spotter settings, the two-stage grid, the baseline's window counts) of a spotting benchmark config,
  checked (ConfigError naming the field)."""
  if config.dataset not in DATASETS + ("both",):
    raise ConfigError(f"config.dataset={config.dataset!r}: use one of {', '.join(DATASETS + ('both',))}")
  if config.rule not in ev.MATCHINGS:
    raise ConfigError(f"config.rule={config.rule!r}: use one of {', '.join(ev.MATCHINGS)}")
  base = sp.SpotParams.from_dict(config.spotter.to_dict(), where="config.spotter")
  fields = set(base.as_dict())
  space = []
  for stage in ("micro", "macro"):
    grid = config.grid[stage].to_dict()
    for k, values in grid.items():
      if k not in fields:
        raise ConfigError(f"config.grid.{stage}.{k}: not a spotter setting; known: {', '.join(sorted(fields))}")
      if not isinstance(values, (tuple, list)) or not values:
        raise ConfigError(f"config.grid.{stage}.{k}={values!r}: give a non-empty tuple of candidate values")
      for v in values:
        sp.SpotParams.from_dict({**base.as_dict(), k: v}, where=f"config.grid.{stage}.{k}")
    space.append({k: tuple(v) for k, v in grid.items()})
  counts = tuple(config.baseline_counts)
  if not counts or any(not isinstance(n, int) or n < 0 for n in counts):
    raise ConfigError(f"config.baseline_counts={counts!r}: give a non-empty tuple of window counts >= 0")
  syn = config.synth
  if syn.enabled and syn.subjects < 2:
    raise ConfigError(f"config.synth.subjects={syn.subjects}: LOSO needs at least 2 subjects")
  if not syn.enabled and not config.root:
    raise ConfigError(
      "config.root is empty: give the dataset folder, e.g. --config.root=/data/CASME2_long (or run on SynthME: "
      "--config.synth.enabled=true)"
    )
  return base, (space[0], space[1]), counts


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
  """(arguments, the config with its ``--config.<field>=<value>`` overrides applied)."""
  ap = argparse.ArgumentParser(prog="python -m mer_jax.spot_bench", description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", required=True, help="spotting benchmark config (configs/spot_*.py)")
  ap.add_argument("--workdir", required=True, help="output folder (SynthME long videos go to <workdir>/synthme)")
  ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
  args, extra = configuration.parse_known_overrides(ap, argv)
  config = configuration.apply_overrides(configuration.load_config_file(args.config), extra)
  return args, config


def main(argv: Optional[Sequence[str]] = None) -> int:
  a, config = parse_args(argv)
  log = (lambda msg: None) if a.quiet else loso.stderr_log
  base, space, counts = spot_settings(config)
  datasets = DATASETS if config.dataset == "both" else (config.dataset,)
  os.makedirs(a.workdir, exist_ok=True)
  roots = {}
  if config.synth.enabled:
    from mer_jax.spotting import synth_long

    for d in datasets:
      root = os.path.join(a.workdir, "synthme", d)
      if not (os.path.isdir(root) and os.listdir(root)):
        log(f"writing SynthME {d} into {root}")
        synth_long.generate_long(
          d,
          root,
          seed=int(config.synth.seed),
          subjects=int(config.synth.subjects),
          videos_per_subject=int(config.synth.videos_per_subject),
          seconds=float(config.synth.seconds) or None,
          quiet=a.quiet,
        )
      roots[d] = root
  else:
    for d in datasets:
      roots[d] = os.path.join(config.root, d) if config.dataset == "both" else config.root
      if not os.path.isdir(roots[d]):
        raise DataError(
          f"config.root: {roots[d]} is not a folder; give the {DISPLAY_NAMES[d]} dataset folder"
          + (" (with dataset both, a folder holding cas_long/ and samm_lv/)" if config.dataset == "both" else "")
        )
  results = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": machine(),
    "commit": reporting.git_commit_of_repo() or "unknown",
    "config": config.to_dict(),
    "rule": config.rule,
    "synthetic": bool(config.synth.enabled),
    "base_params": base.as_dict(),
    "grid": [dict(g) for g in space],
    "baseline_counts": list(counts),
    "datasets": [],
  }
  for d in datasets:
    part = bench_dataset(roots[d], base, config.rule, log, space=space, counts=counts)
    results["datasets"].append(part)
    params = {
      "dataset": d,
      "note": "chosen on all subjects of " + roots[d],
      "params": part["chosen_on_all_subjects"]["params"],
    }
    reporting.atomic_write_text(os.path.join(a.workdir, f"params_{d}.json"), json.dumps(params, indent=1))
  reporting.atomic_write_text(os.path.join(a.workdir, "results.json"), json.dumps(results, indent=1))
  md = format_markdown(results)
  reporting.atomic_write_text(os.path.join(a.workdir, "results.md"), md + "\n")
  print(md)
  return 0


if __name__ == "__main__":
  run_cli(main)
