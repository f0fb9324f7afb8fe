"""EVM ablation on SynthME: no EVM vs the two readings of the paper's band "0.1-0.4" (Hz / MIT IIR rates).

  python -m experiments.evm_ablation --workdir=runs/evm_ablation [--seeds=0,1,2] [--amplitude 0.25 0.75]
      [--config=configs/synth_demo.py] [--variants=no-evm,hz,...] [--subjects=N --clips=N --macro-images=N]
      [--dry-run] [--assemble-only] [--rerun] [--keep-going] [--config.finetune.epochs=5 ...]

CDE LOSO on SynthME at the demo's size (configs/synth_demo.py), every variant of :data:`VARIANTS` for every
seed. Per seed the runner writes SynthME itself (``<workdir>/seed<S>/synthme/<layout>``, seed S, peak motion
``--amplitude`` px at a 112-px face: smaller than SynthME's default 0.5-1.5 px, where magnification matters)
and runs ``python -m mer_jax.main`` once per variant into ``<workdir>/seed<S>/<variant>`` with
``--config.seed=S``, the data roots pointing at that SynthME and one shared TFDS cache folder. Only the first
variant of a seed pretrains; the others reuse its pretraining through ``config.pretrained_checkpoint``
(pretraining sees only the macro images, which EVM does not touch: the same network on the same data, as in
experiments/ablation.py).

A variant whose override names a config field this checkout does not have (e.g. ``evm.order`` before it
exists) is skipped with a note; a variant whose settings equal an earlier one's (e.g. ``hz`` and ``hz-fast``
when "fast" is the default order) is not run again but reported from that run. Runs whose results.json
exists are not started again (``--rerun`` forces it; mer_jax.main resumes an interrupted run).

Outputs: ``<workdir>/evm_ablation.md`` (UF1 / UAR / accuracy, mean +- sample std over seeds, per variant)
and ``<workdir>/evm_ablation.json`` (the per-seed numbers, settings, skipped variants). SynthME numbers say
how the settings behave on sub-pixel synthetic motion, not how they do on real micro-expressions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # `python experiments/evm_ablation.py`: make `mer_jax` importable from a checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mer_jax import config_defaults, configuration  # noqa: E402

# The two band readings as evm-section overrides (mer_jax/config_defaults.py EVM_READINGS defines them).
HZ = {f"evm.{k}": v for k, v in config_defaults.EVM_READINGS["hz"].items()}
MIT_RATES = {f"evm.{k}": v for k, v in config_defaults.EVM_READINGS["mit_rates"].items()}
# The variants, as data: (name, {config field: value}). Fields are mer_jax/config_defaults.py names.
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
  ("no-evm", {"evm.enabled": False}),
  ("hz", HZ),
  ("mit-rates", MIT_RATES),
  ("hz-paper", {**HZ, "evm.order": "paper"}),
  ("hz-fast", {**HZ, "evm.order": "fast"}),
  ("mit-rates-paper", {**MIT_RATES, "evm.order": "paper"}),
  ("mit-rates-fast", {**MIT_RATES, "evm.order": "fast"}),
)
_BENCHMARK = " (the benchmark configs' reading)"
DESCRIPTIONS = {
  "no-evm": "no magnification",
  "hz": "band 0.1-0.4 Hz, first-order Butterworth from the onset"
  + (_BENCHMARK if config_defaults.BENCHMARK_EVM_READING == "hz" else ""),
  "mit-rates": "MIT IIR, per-frame rates r2 = 0.1, r1 = 0.4"
  + (_BENCHMARK if config_defaults.BENCHMARK_EVM_READING == "mit_rates" else ""),
}
MICRO = ("casme2", "samm", "smic")
MACRO = ("ck", "rafdb", "fer2013")
METRICS = ("uf1", "uar", "accuracy")
DEFAULT_AMPLITUDE = (0.25, 0.75)  # px at a 112-px face; SynthME's default is (0.5, 1.5)


def load_config(path: str):
  """``get_config()`` of a config file (an ml_collections.ConfigDict); SystemExit with the error otherwise."""
  from mer_jax.errors import ConfigError

  try:
    return configuration.load_config_file(path)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None


def check_variants(config, run: Sequence[tuple[str, dict]], extra: Sequence[str]) -> None:
  """Validates ``config`` with each planned variant's overrides and ``extra`` applied (start-up check).

  Raises:
    SystemExit: with the :mod:`mer_jax.configuration` message, naming the variant.
  """
  from mer_jax.errors import ConfigError

  try:
    configuration.apply_overrides(config, extra)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  for name, ov in run:
    try:
      configuration.validate(configuration.apply_overrides(configuration.apply_overrides(config, ov), extra))
    except ConfigError as e:
      raise SystemExit(f"error: variant {name!r}: {e}") from None


def has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def get_field(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def plan_variants(config, variants=VARIANTS, only: Optional[Sequence[str]] = None):
  """Returns (run, alias, skipped): the variants to run [(name, overrides)], {duplicate: the variant it equals},
  and {skipped variant: why}. Equality is over the values of every field any variant overrides."""
  names = [n for n, _ in variants]
  if only:
    bad = [n for n in only if n not in names]
    if bad:
      raise SystemExit(f"error: unknown variant(s) {bad}; choose from {', '.join(names)}")
  keys = sorted({k for _, ov in variants for k in ov})
  run, alias, skipped, seen = [], {}, {}, {}
  for name, ov in variants:
    if only and name not in only:
      continue
    missing = [k for k in ov if not has_field(config, k)]
    if missing:
      skipped[name] = (
        f"config field(s) {', '.join(missing)} do not exist in this checkout "
        "(mer_jax/config_defaults.py); variant not run"
      )
      continue
    eff = tuple((k, repr(ov[k] if k in ov else get_field(config, k) if has_field(config, k) else None)) for k in keys)
    if eff in seen:
      alias[name] = seen[eff]
      continue
    seen[eff] = name
    run.append((name, dict(ov)))
  return run, alias, skipped


def _flag(key: str, value: Any) -> str:
  return f"--config.{key}={value}"


def seed_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed{seed}")


def synth_dir(workdir: str, seed: int) -> str:
  return os.path.join(seed_dir(workdir, seed), "synthme")


def command(
  python: str,
  config_path: str,
  workdir: str,
  seed: int,
  name: str,
  overrides: dict,
  pretrain_from: Optional[str],
  extra: Sequence[str],
) -> list[str]:
  """The mer_jax.main command line of one (seed, variant) run."""
  sd = seed_dir(workdir, seed)
  cmd = [
    python,
    "-m",
    "mer_jax.main",
    f"--config={config_path}",
    f"--workdir={os.path.join(sd, name)}",
    _flag("seed", seed),
    _flag("data.cache_dir", os.path.join(sd, "tfds")),
  ]
  cmd += [_flag(f"data.roots.{d}", os.path.join(synth_dir(workdir, seed), d)) for d in MICRO + MACRO]
  cmd += [_flag(k, v) for k, v in overrides.items()]
  if pretrain_from:
    cmd.append(_flag("pretrained_checkpoint", os.path.join(sd, pretrain_from, "pretrain")))
  return cmd + list(extra)


def ensure_synthme(
  workdir: str, seed: int, amplitude: tuple[float, float], subjects: int, clips: int, images: int
) -> None:
  """Writes SynthME (all six layouts) for ``seed`` unless a complete copy with the same settings is there."""
  import shutil

  from mer_jax.data import synth

  out = synth_dir(workdir, seed)
  stamp_path = os.path.join(out, ".evm_ablation_settings.json")
  stamp = json.dumps(
    {"seed": seed, "amplitude": list(amplitude), "subjects": subjects, "clips": clips, "images": images}, sort_keys=True
  )
  if os.path.isfile(stamp_path):
    with open(stamp_path, encoding="utf-8") as f:
      if f.read() == stamp:
        return
  if os.path.exists(out):
    shutil.rmtree(out)
  print(
    f"[evm_ablation] seed {seed}: writing SynthME to {out} (amplitude {amplitude[0]:g}-{amplitude[1]:g} px)", flush=True
  )
  for layout in MICRO + MACRO:
    micro = layout in MICRO
    synth.generate(
      layout,
      os.path.join(out, layout),
      seed=seed,
      subjects=(subjects or None) if micro else None,
      clips_per_subject=(clips or None) if micro else None,
      images=None if micro else (images or None),
      amplitude=amplitude,
    )
  with open(stamp_path, "w", encoding="utf-8") as f:
    f.write(stamp)


def read_metrics(run_dir: str) -> Optional[dict]:
  """{uf1, uar, accuracy} of the whole set (CDE "Mixed") from a finished run, or None."""
  from mer_jax import reporting
  from mer_jax.errors import UserError

  try:
    res = reporting.load_results(run_dir)
  except UserError:
    return None
  agg = res["aggregate"][reporting.MIXED]
  return {m: float(agg[m]) for m in METRICS}


def summarise(per_seed: dict[str, dict[str, Optional[dict]]]) -> dict[str, dict]:
  """{variant: {metric: (mean, sample std, n)}} over the seeds with results."""
  import numpy as np

  out = {}
  for name, seeds in per_seed.items():
    done = [m for m in seeds.values() if m]
    out[name] = {}
    for metric in METRICS:
      vals = np.array([m[metric] for m in done], np.float64)
      out[name][metric] = (
        float(vals.mean()) if vals.size else float("nan"),
        float(vals.std(ddof=1)) if vals.size > 1 else float("nan"),
        int(vals.size),
      )
  return out


def table_markdown(
  order: Sequence[str], summary: dict, alias: dict, skipped: dict, settings: dict, per_seed: dict
) -> str:
  def cell(mean, std, n):
    if n == 0:
      return "-"
    return f"{mean:.4f} +- {std:.4f}" if n > 1 else f"{mean:.4f}"

  lines = ["| variant | settings | UF1 | UAR | accuracy | seeds |", "|---|---|---|---|---|---|"]
  for name in order:
    if name in skipped:
      lines.append(f"| {name} | skipped: {skipped[name]} | - | - | - | 0 |")
      continue
    src = alias.get(name, name)
    s = summary[src]
    note = f" (same settings as {src}: its runs)" if src != name else ""
    lines.append(
      f"| {name} | {settings[name]}{note} | {cell(*s['uf1'])} | {cell(*s['uar'])} | "
      f"{cell(*s['accuracy'])} | {s['uf1'][2]} |"
    )
  lines += ["", "Per seed (UF1 / UAR / accuracy):", ""]
  for name in order:
    if name in skipped or name in alias:
      continue
    parts = [
      f"seed {sd}: " + (" / ".join(f"{m[k]:.4f}" for k in METRICS) if m else "missing")
      for sd, m in per_seed[name].items()
    ]
    lines.append(f"* {name}: " + "; ".join(parts))
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
  ap = argparse.ArgumentParser(prog="python -m experiments.evm_ablation", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="root folder: seed<S>/<variant> run folders and the tables")
  ap.add_argument("--config", default="configs/synth_demo.py", help="base config (default configs/synth_demo.py)")
  ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
  ap.add_argument("--variants", default="", help=f"comma list (default all: {', '.join(n for n, _ in VARIANTS)})")
  ap.add_argument(
    "--amplitude",
    type=float,
    nargs=2,
    default=DEFAULT_AMPLITUDE,
    metavar=("LO", "HI"),
    help="SynthME peak motion range, px at a 112-px face (default 0.25 0.75)",
  )
  ap.add_argument("--subjects", type=int, default=0, help="SynthME subjects per micro set (0: generator default 3)")
  ap.add_argument("--clips", type=int, default=0, help="SynthME clips per subject (0: generator default 9)")
  ap.add_argument("--macro-images", type=int, default=0, help="SynthME RAF-DB/FER-2013 images (0: default)")
  ap.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
  ap.add_argument("--assemble-only", action="store_true", help="only build the tables from finished runs")
  ap.add_argument("--rerun", action="store_true", help="start runs again even if results.json exists")
  ap.add_argument("--keep-going", action="store_true", help="go on after a failed run; the tables mark it missing")
  ap.add_argument("--python", default=sys.executable, help="interpreter for the runs (default: this one)")
  args, extra = configuration.parse_known_overrides(ap, argv)
  try:
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    ap.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
  if not args.seed_list:
    ap.error("--seeds is empty")
  if not 0 < args.amplitude[0] <= args.amplitude[1]:
    ap.error(f"--amplitude must satisfy 0 < LO <= HI, got {args.amplitude}")
  args.workdir = os.path.abspath(args.workdir)  # the runs' paths (data roots, pretraining) do not depend on cwd
  return args, extra


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, extra = parse_args(argv)
  from mer_jax import reporting

  config = load_config(args.config)
  only = [v.strip() for v in args.variants.split(",") if v.strip()] or None
  run, alias, skipped = plan_variants(config, VARIANTS, only)
  order = [n for n, _ in VARIANTS if not only or n in only]
  settings = {n: DESCRIPTIONS.get(n) or ", ".join(f"{k}={v}" for k, v in ov.items()) for n, ov in VARIANTS}
  for name, why in skipped.items():
    print(f"[evm_ablation] note: {name}: {why}", flush=True)
  for name, src in alias.items():
    print(f"[evm_ablation] note: {name} has the same settings as {src}; reported from its runs", flush=True)
  if not run:
    print("error: no variant to run (all skipped)", file=sys.stderr)
    return 2
  if not args.assemble_only:
    check_variants(config, run, extra)
  first = run[0][0]
  plan = [
    (
      seed,
      name,
      command(args.python, args.config, args.workdir, seed, name, ov, None if name == first else first, extra),
    )
    for seed in args.seed_list
    for name, ov in run
  ]
  if args.dry_run:
    print(
      f"# {len(plan)} runs ({len(run)} variants x {len(args.seed_list)} seeds); SynthME amplitude "
      f"{args.amplitude[0]:g}-{args.amplitude[1]:g} px, written per seed to {synth_dir(args.workdir, 0)} ..."
    )
    for _, _, cmd in plan:
      print(shlex.join(cmd))
    return 0

  failed = []
  if not args.assemble_only:
    t0 = time.time()
    for i, (seed, name, cmd) in enumerate(plan):
      wd = os.path.join(seed_dir(args.workdir, seed), name)
      if not args.rerun and os.path.isfile(os.path.join(wd, reporting.RESULTS_JSON)):
        print(f"[evm_ablation] {i + 1}/{len(plan)} seed {seed} {name}: finished earlier, skipping", flush=True)
        continue
      if name != first and not os.path.isdir(os.path.join(seed_dir(args.workdir, seed), first, "pretrain")):
        print(
          f"[evm_ablation] seed {seed} {name}: no pretraining in {first} (that run failed); skipping",
          file=sys.stderr,
          flush=True,
        )
        failed.append((seed, name))
        continue
      ensure_synthme(args.workdir, seed, tuple(args.amplitude), args.subjects, args.clips, args.macro_images)
      print(f"[evm_ablation] {i + 1}/{len(plan)} seed {seed} {name}: {shlex.join(cmd)}", flush=True)
      rc = subprocess.call(cmd)
      print(
        f"[evm_ablation] seed {seed} {name} finished with exit code {rc} ({time.time() - t0:.0f} s elapsed)", flush=True
      )
      if rc != 0:
        failed.append((seed, name))
        if not args.keep_going:
          print(
            f"error: the run for seed {seed}, variant {name!r} failed (exit code {rc}); fix it and re-run "
            "this command (finished runs are skipped), or pass --keep-going",
            file=sys.stderr,
          )
          return 1

  per_seed = {
    name: {seed: read_metrics(os.path.join(seed_dir(args.workdir, seed), name)) for seed in args.seed_list}
    for name, _ in run
  }
  summary = summarise(per_seed)
  commit = reporting.git_commit_of_repo() or "unknown"
  header = (
    f"# EVM ablation on SynthME (CDE LOSO, {args.config}, seeds {args.seeds}, motion amplitude "
    f"{args.amplitude[0]:g}-{args.amplitude[1]:g} px at 112 px)\n\n"
    f"UF1 / UAR / accuracy of the whole set, mean +- sample std over seeds. "
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, git {commit}.\n\n"
  )
  md = header + table_markdown(order, summary, alias, skipped, settings, per_seed) + "\n"
  os.makedirs(args.workdir, exist_ok=True)
  reporting.atomic_write_text(os.path.join(args.workdir, "evm_ablation.md"), md)
  payload = {
    "config": args.config,
    "seeds": args.seed_list,
    "amplitude_px_at_112": list(args.amplitude),
    "extra_overrides": extra,
    "git_commit": commit,
    "variants": {n: ov for n, ov in VARIANTS if n in order},
    "aliases": alias,
    "skipped": skipped,
    "per_seed": {n: {str(s): m for s, m in seeds.items()} for n, seeds in per_seed.items()},
    "summary": {n: {m: {"mean": v[0], "std": v[1], "n": v[2]} for m, v in s.items()} for n, s in summary.items()},
  }
  reporting.atomic_write_text(
    os.path.join(args.workdir, "evm_ablation.json"), json.dumps(payload, indent=1, default=str) + "\n"
  )
  print(md)
  print(f"[evm_ablation] wrote {os.path.join(args.workdir, 'evm_ablation.md')} and evm_ablation.json")
  if failed:
    print(f"[evm_ablation] failed runs: {failed}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
