"""Runs the ablation sets of Tables 10-12 (plus EVM and pretraining on/off) and assembles the tables.

  python experiments/ablation.py --workdir=runs/ablation [--config=configs/cde.py]
      [--sets=attention,backbone,evm,pretraining] [--dry-run] [--assemble-only] [--keep-going]
      [--config.finetune.epochs=5 ...]

Every variant is one ``python -m mer_jax.main`` run with ``--config.x=...``
overrides into a sibling workdir ``<workdir>/<variant>``; the proposed model
(dense backbone, mixed attention, EVM, macro pretraining) is the shared baseline
row. Any extra ``--config.*`` argument is passed to every run (e.g. fewer epochs).
Runs whose ``results.json`` exists are not started again (``--rerun`` forces it;
``mer_jax.main`` itself resumes an interrupted run). The tables go to
``<workdir>/<table>/table.md`` (+ ``table.json``) and all of them to
``<workdir>/ablation.md``.

On SynthME: ``--config=configs/synth_demo.py`` (a few minutes per variant on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from mer_jax import configuration

# Variant -> config overrides {dotted field: value} (mer_jax/config_defaults.py names every field).
VARIANTS: dict[str, dict[str, Any]] = {
  "proposed": {},
  "attention-none": {"model.attention": "none"},
  "attention-channel": {"model.attention": "channel"},
  "attention-spatial": {"model.attention": "spatial"},
  "backbone-residual": {"model.backbone": "residual"},
  "evm-off": {"evm.enabled": False},
  "pretrain-off": {"pretrain.enabled": False},
}

# Table -> (title, [(row label, variant)]), rows in the paper's order.
TABLES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
  "table10_attention": (
    "Table 10: results of the attention ablation (CDE)",
    (("Ours", "proposed"), ("w/o Attention", "attention-none")),
  ),
  "table11_attention_kinds": (
    "Table 11: comparison of attention mechanisms (CDE)",
    (
      ("No attention", "attention-none"),
      ("Channel attention only", "attention-channel"),
      ("Spatial attention only", "attention-spatial"),
      ("Mixed attention (proposed)", "proposed"),
    ),
  ),
  "table12_backbone": (
    "Table 12: densely connected vs residual feature extractor (CDE)",
    (("Residual", "backbone-residual"), ("Densely connected (proposed)", "proposed")),
  ),
  "evm": ("EVM on/off (not in the paper)", (("Without EVM", "evm-off"), ("With EVM (proposed)", "proposed"))),
  "pretraining": (
    "Macro-expression pretraining on/off (not in the paper)",
    (("Without pretraining", "pretrain-off"), ("With pretraining (proposed)", "proposed")),
  ),
}

SETS: dict[str, tuple[str, ...]] = {
  "attention": ("table10_attention", "table11_attention_kinds"),
  "backbone": ("table12_backbone",),
  "evm": ("evm",),
  "pretraining": ("pretraining",),
}


def tables_for(sets: Sequence[str]) -> list[str]:
  out: list[str] = []
  for s in sets:
    if s not in SETS:
      raise SystemExit(f"error: unknown ablation set {s!r}; choose from {', '.join(SETS)} or all")
    out += [t for t in SETS[s] if t not in out]
  return out


def variants_for(tables: Sequence[str]) -> list[str]:
  """Variants needed by ``tables``, the proposed baseline first (others may reuse its pretraining)."""
  need = {v for t in tables for _, v in TABLES[t][1]}
  return [v for v in VARIANTS if v in need]


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """``{"model.attention": "none"}`` -> ``["--config.model.attention=none"]`` (mer_jax.main's override flags)."""
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def check_variants(config: str, variants: Sequence[str], extra: Sequence[str]) -> None:
  """Loads ``config`` and validates it with each variant's overrides and ``extra`` applied, before any run.

  Raises:
    mer_jax.errors.ConfigError: naming the variant, for a config file, override or value
      :mod:`mer_jax.configuration` rejects.
  """
  from mer_jax.errors import ConfigError

  base = configuration.load_config_file(config)
  configuration.apply_overrides(base, extra)  # the extra overrides' keys and types, named without a variant
  for v in variants:
    try:
      configuration.validate(configuration.apply_overrides(configuration.apply_overrides(base, VARIANTS[v]), extra))
    except ConfigError as e:
      raise ConfigError(f"variant {v!r}: {e}") from None


def command(
  python: str,
  config: str,
  workdir: str,
  variant: str,
  extra: Sequence[str],
  share_pretraining: bool,
  overrides: Optional[Sequence[str]] = None,
) -> list[str]:
  """The ``mer_jax.main`` command of one variant; ``overrides`` (flags) replaces ``VARIANTS[variant]``
  (other experiments)."""
  cmd = [python, "-m", "mer_jax.main", f"--config={config}", f"--workdir={os.path.join(workdir, variant)}"]
  cmd += override_flags(VARIANTS[variant]) if overrides is None else list(overrides)
  if share_pretraining and variant == "evm-off":
    # EVM only touches the micro clips: the proposed run's pretraining is the same network on the same data.
    cmd.append(f"--config.pretrained_checkpoint={os.path.join(workdir, 'proposed', 'pretrain')}")
  return cmd + list(extra)


def run_plan(
  plan: Sequence[tuple[str, list[str]]],
  workdir: str,
  *,
  rerun: bool = False,
  keep_going: bool = False,
  tag: str = "ablation",
) -> tuple[list[str], bool]:
  """Runs each ``(variant, command)`` in order, skipping variants whose ``<workdir>/<variant>/results.json`` exists.

  Returns (failed variants, stopped): ``stopped`` is True when a run failed and ``keep_going`` is off (the
  error is printed; later runs were not started).
  """
  from mer_jax import reporting

  failed: list[str] = []
  t0 = time.time()
  for i, (v, cmd) in enumerate(plan):
    wd = os.path.join(workdir, v)
    if not rerun and os.path.isfile(os.path.join(wd, reporting.RESULTS_JSON)):
      print(f"[{tag}] {i + 1}/{len(plan)} {v}: finished earlier ({wd}/results.json), skipping", flush=True)
      continue
    print(f"[{tag}] {i + 1}/{len(plan)} {v}: {shlex.join(cmd)}", flush=True)
    rc = subprocess.call(cmd)
    el = time.time() - t0
    print(f"[{tag}] {v} finished with exit code {rc} ({el:.0f} s elapsed)", flush=True)
    if rc != 0:
      failed.append(v)
      if not keep_going:
        print(
          f"error: the run for variant {v!r} failed (exit code {rc}); fix it and re-run this command "
          "(finished runs are skipped), or pass --keep-going",
          file=sys.stderr,
        )
        return failed, True
  return failed, False


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
  ap = argparse.ArgumentParser(prog="experiments/ablation.py", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="root folder; one sub-folder per variant")
  ap.add_argument("--config", default="configs/cde.py", help="benchmark config (default configs/cde.py)")
  ap.add_argument("--sets", default="all", help=f"comma list of {', '.join(SETS)} (default all)")
  ap.add_argument("--dry-run", action="store_true", help="print the commands and tables, run nothing")
  ap.add_argument("--assemble-only", action="store_true", help="only build the tables from finished runs")
  ap.add_argument("--rerun", action="store_true", help="start runs again even if results.json exists")
  ap.add_argument("--keep-going", action="store_true", help="go on after a failed run; tables list it as missing")
  ap.add_argument(
    "--no-share-pretraining",
    action="store_true",
    help="let the EVM-off run pretrain on its own instead of reusing the proposed run's",
  )
  ap.add_argument("--python", default=sys.executable, help="interpreter for the runs (default: this one)")
  return configuration.parse_known_overrides(ap, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, extra = parse_args(argv)
  from mer_jax import reporting
  from mer_jax.errors import UserError

  sets = list(SETS) if args.sets == "all" else [s.strip() for s in args.sets.split(",") if s.strip()]
  tables = tables_for(sets)
  variants = variants_for(tables)
  share = not args.no_share_pretraining and "proposed" in variants
  plan = [(v, command(args.python, args.config, args.workdir, v, extra, share)) for v in variants]
  if not args.assemble_only:
    try:
      check_variants(args.config, variants, extra)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2

  if args.dry_run:
    print(f"# {len(plan)} runs for {', '.join(tables)}")
    for _, cmd in plan:
      print(shlex.join(cmd))
    for t in tables:
      title, rows = TABLES[t]
      print(
        f"# {os.path.join(args.workdir, t, 'table.md')}: {title}: "
        + ", ".join(f"{lab} <- {os.path.join(args.workdir, v)}" for lab, v in rows)
      )
    return 0

  failed: list[str] = []
  if not args.assemble_only:
    failed, stopped = run_plan(plan, args.workdir, rerun=args.rerun, keep_going=args.keep_going)
    if stopped:
      return 1

  written, sections = {}, []
  for t in tables:
    title, rows = TABLES[t]
    runs = [(lab, os.path.join(args.workdir, v)) for lab, v in rows]
    try:
      paths = reporting.write_ablation_table(
        os.path.join(args.workdir, t), runs, title=title, missing_ok=args.keep_going or args.assemble_only
      )
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    written[t] = paths["table_md"]
    with open(paths["table_md"], encoding="utf-8") as f:
      sections.append(f.read())
  summary = os.path.join(args.workdir, "ablation.md")
  reporting.atomic_write_text(summary, "\n".join(sections))
  for t, p in written.items():
    print(f"[ablation] {TABLES[t][0]}: {p}")
  print(f"[ablation] all tables: {summary}")
  if failed:
    print(f"[ablation] failed runs (missing rows): {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
