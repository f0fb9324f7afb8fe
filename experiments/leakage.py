"""How much does choosing each LOSO fold's model on the held-out subject inflate the results?

  python experiments/leakage.py --workdir=runs/leakage [--config=configs/cde.py]
      [--config.data.roots.casme2=... ...] [--dry-run] [--assemble-only] [--rerun] [--keep-going]
      [--bootstrap-samples=2000] [--seed=0]

Runs one benchmark config three ways (``python -m mer_jax.main`` into ``<workdir>/<variant>``), from the same
pretrained weights, fold seeds and initial heads:

  validation    model selection (best epoch, plateau, early stopping) on a validation split of the
                training subjects: mer_jax's default, a proper LOSO estimate;
  test-subject  the same selection on the held-out subject (``finetune.test_fold_early_stopping=True``): the
                practice of several public MER repositories; it also trains on all other clips (no split);
  last-epoch    no selection: the weights after the last epoch (``finetune.select_best=False``; the validation
                split still drives the learning-rate plateau).

The ``validation`` run pretrains; the other two reuse its pretraining (``--config.pretrained_checkpoint``), so
all three start every fold from identical weights. Then it writes ``<workdir>/leakage.md`` and ``leakage.json``:
UF1 / UAR / accuracy of each variant (composite and per dataset), the inflation ``test-subject - validation``
(and ``validation - last-epoch``) with a paired percentile bootstrap CI over subjects (each resample draws
subjects with replacement and scores both variants on that same draw), and a per-fold table.

The runs are started and skipped exactly as in experiments/ablation.py (a finished run's results.json is
reused; ``mer_jax.main`` resumes an interrupted one). Extra ``--config.*`` arguments go to every run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # `python experiments/leakage.py`: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import ablation  # noqa: E402
from mer_jax import configuration  # noqa: E402

DEFAULT = "validation"
TEST_SUBJECT = "test-subject"
LAST_EPOCH = "last-epoch"
# Variant -> (row label, config overrides); the first one pretrains, the others reuse its pretraining.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
  DEFAULT: ("Selection on training-subject validation (default)", ()),
  TEST_SUBJECT: ("Selection on the held-out subject (leaky)", ("--config.finetune.test_fold_early_stopping=True",)),
  LAST_EPOCH: ("Last epoch, no selection", ("--config.finetune.select_best=False",)),
}
# (A, B, name): paired differences score(A) - score(B) reported with a CI.
COMPARISONS = (
  (TEST_SUBJECT, DEFAULT, "inflation: test-subject - validation"),
  (DEFAULT, LAST_EPOCH, "validation - last epoch"),
)
METRICS = ("uf1", "uar", "accuracy")
MIXED = "Mixed"


def plan(python: str, config: str, workdir: str, extra: Sequence[str]) -> list[tuple[str, list[str]]]:
  """[(variant, command)]: the validation run first; the others reuse its pretraining unless the extra
  arguments disable pretraining or name a pretrained checkpoint themselves."""
  own_pretraining = any(a.startswith("--config.pretrained_checkpoint=") for a in extra) or any(
    a.split("=", 1)[0] == "--config.pretrain.enabled" and a.split("=", 1)[-1].lower() in ("false", "0") for a in extra
  )
  out = []
  for v, (_, overrides) in VARIANTS.items():
    ov = list(overrides)
    if v != DEFAULT and not own_pretraining:
      ov.append(f"--config.pretrained_checkpoint={os.path.join(workdir, DEFAULT, 'pretrain')}")
    out.append((v, ablation.command(python, config, workdir, v, extra, False, overrides=ov)))
  return out


def _fold_table(res: Mapping[str, Any]) -> dict[str, dict]:
  """subject -> fold entry of a results.json."""
  return {f["subject"]: f for f in res["folds"]}


def _check_paired(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """The subjects shared by every run, after checking that each holds the same clips with the same labels."""
  from mer_jax.errors import UserError

  tables = {v: _fold_table(r) for v, r in runs.items()}
  first = next(iter(tables))
  subjects = list(tables[first])
  for v, t in tables.items():
    if sorted(t) != sorted(subjects):
      raise UserError(
        f"the {v} run holds other LOSO subjects than the {first} run "
        f"({len(t)} vs {len(subjects)}); were they made with the same data? re-run with --rerun"
      )
    for s in subjects:
      a, b = tables[first][s], t[s]
      if list(a["clip_ids"]) != list(b["clip_ids"]) or list(a["y_true"]) != list(b["y_true"]):
        raise UserError(
          f"subject {s}: the {v} and {first} runs hold different clips or labels; the runs must use the same data"
        )
  return subjects


def _per_subject(res: Mapping[str, Any], subjects: Sequence[str], source: str, k: int) -> np.ndarray:
  """[G, K, K] confusion matrices of ``subjects`` (only clips of ``source`` unless it is Mixed)."""
  from mer_jax import reporting

  folds = _fold_table(res)
  yt, yp, g = [], [], []
  for s in subjects:
    f = folds[s]
    for t, p, src in zip(f["y_true"], f["y_pred"], f["clip_sources"]):
      if source == MIXED or src == source:
        yt.append(t)
        yp.append(p)
        g.append(s)
  keep = [s for s in subjects if s in set(g)]
  return reporting.group_confusions(
    np.asarray(yt, np.int64), np.asarray(yp, np.int64), np.asarray(g, object), k, order=keep
  )[1]


def analyse(runs: Mapping[str, Mapping[str, Any]], *, samples: int, seed: int) -> dict:
  """Scores, paired bootstrap differences and per-fold rows from the variants' results.json contents."""
  from mer_jax import metrics, reporting

  subjects = _check_paired(runs)
  first = next(iter(runs.values()))
  k = len(first["class_names"])
  sources = [MIXED] + [s for s in first["sources"] if len(first["sources"]) > 1]
  conf = {v: {src: _per_subject(r, subjects, src, k) for src in sources} for v, r in runs.items()}
  scores = {
    v: {src: {m: float(metrics.from_confusion(c.sum(0))[m]) for m in METRICS} for src, c in by_src.items()}
    for v, by_src in conf.items()
  }
  diffs = []
  for a, b, name in COMPARISONS:
    if a in runs and b in runs:
      for src in sources:
        d = reporting.paired_bootstrap_diff(conf[a][src], conf[b][src], samples=samples, seed=seed)
        diffs.append({"comparison": name, "a": a, "b": b, "source": src, **d})
  tables = {v: _fold_table(r) for v, r in runs.items()}
  folds = []
  for s in subjects:
    row: dict = {"subject": s, "n": tables[DEFAULT if DEFAULT in runs else next(iter(runs))][s]["n"]}
    for v in runs:
      f = tables[v][s]
      row[v] = {
        "correct": int(np.sum(np.asarray(f["y_true"]) == np.asarray(f["y_pred"]))),
        "accuracy": f["accuracy"],
        "best_epoch": f["best_epoch"],
        "epochs_trained": f["epochs_trained"],
      }
    folds.append(row)
  return {
    "variants": {
      v: {
        "label": VARIANTS.get(v, (v,))[0],
        "git_commit": r.get("git_commit"),
        "seed": r.get("seed"),
        "model_selection": r.get("model_selection"),
      }
      for v, r in runs.items()
    },
    "subjects": len(subjects),
    "sources": sources,
    "scores": scores,
    "differences": diffs,
    "bootstrap": {"samples": int(samples), "seed": int(seed), "level": 0.95, "unit": "subject (paired)"},
    "folds": folds,
  }


def _display(src: str) -> str:
  from mer_jax.data.types import DISPLAY_NAMES

  return src if src == MIXED else DISPLAY_NAMES.get(src, src)


def markdown(out: Mapping[str, Any], title: str) -> str:
  """leakage.md: scores per variant, paired differences with CIs, per-fold table."""
  variants, sources = list(out["variants"]), out["sources"]
  lines = [
    f"# {title}",
    "",
    f"{out['subjects']} LOSO subjects; scores pooled over all folds (MEGC 2019). Same pretrained weights, "
    "fold seeds and initial heads in every variant.",
    "",
    "| Variant | " + " | ".join(f"{_display(s)} {m}" for s in sources for m in ("UF1", "UAR", "Acc (%)")) + " |",
    "|---|" + "---|" * (3 * len(sources)),
  ]
  for v in variants:
    sc = out["scores"][v]
    lines.append(
      f"| {out['variants'][v]['label']} | "
      + " | ".join(f"{sc[s]['uf1']:.4f} | {sc[s]['uar']:.4f} | {100 * sc[s]['accuracy']:.2f}" for s in sources)
      + " |"
    )
  b = out["bootstrap"]
  lines += [
    "",
    f"Paired differences, {int(100 * b['level'])}% percentile bootstrap CI over subjects "
    f"({b['samples']} resamples, seed {b['seed']}; both variants scored on the same resample):",
    "",
    "| Difference | Dataset | Subjects | UF1 [CI] | UAR [CI] | Acc (pp) [CI] |",
    "|---|---|---|---|---|---|",
  ]
  for d in out["differences"]:
    cells = []
    for m, scale in (("uf1", 1), ("uar", 1), ("accuracy", 100)):
      e = d[m]
      cells.append(
        f"{scale * e['diff']:+.4f} [{scale * e['low']:+.4f}, {scale * e['high']:+.4f}]"
        if scale == 1
        else f"{scale * e['diff']:+.2f} [{scale * e['low']:+.2f}, {scale * e['high']:+.2f}]"
      )
    lines.append(f"| {d['comparison']} | {_display(d['source'])} | {d['groups']} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "## Per-fold results (correct / n; best epoch in brackets, 0-based)",
    "",
    "| Subject | n | " + " | ".join(out["variants"][v]["label"] for v in variants) + " |",
    "|---|---|" + "---|" * len(variants),
  ]
  for f in out["folds"]:
    lines.append(
      f"| {f['subject']} | {f['n']} | "
      + " | ".join(f"{f[v]['correct']}/{f['n']} (ep {f[v]['best_epoch']})" for v in variants)
      + " |"
    )
  commits = sorted({str(v.get("git_commit")) for v in out["variants"].values()})
  lines += ["", f"git commit(s): {', '.join(commits)}."]
  return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
  ap = argparse.ArgumentParser(prog="experiments/leakage.py", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="root folder; one sub-folder per variant")
  ap.add_argument("--config", default="configs/cde.py", help="benchmark config (default configs/cde.py)")
  ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  ap.add_argument("--assemble-only", action="store_true", help="only analyse finished runs")
  ap.add_argument("--rerun", action="store_true", help="start runs again even if results.json exists")
  ap.add_argument("--keep-going", action="store_true", help="go on after a failed run; analyse the others")
  ap.add_argument("--bootstrap-samples", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
  ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
  ap.add_argument("--python", default=sys.executable, help="interpreter for the runs (default: this one)")
  return configuration.parse_known_overrides(ap, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, extra = parse_args(argv)
  from mer_jax import reporting
  from mer_jax.errors import UserError

  commands = plan(args.python, args.config, args.workdir, extra)
  if args.dry_run:
    for _, cmd in commands:
      print(shlex.join(cmd))
    return 0
  failed: list[str] = []
  if not args.assemble_only:
    failed, stopped = ablation.run_plan(
      commands, args.workdir, rerun=args.rerun, keep_going=args.keep_going, tag="leakage"
    )
    if stopped:
      return 1
  runs = {}
  for v, _ in commands:
    try:
      runs[v] = reporting.load_results(os.path.join(args.workdir, v))
    except UserError as e:
      if not (args.keep_going or args.assemble_only):
        print(f"error: {e}", file=sys.stderr)
        return 2
  if DEFAULT not in runs or len(runs) < 2:
    print(
      f"error: need the {DEFAULT} run and at least one other finished run under {args.workdir} "
      f"(found: {', '.join(runs) or 'none'})",
      file=sys.stderr,
    )
    return 2
  try:
    out = analyse(runs, samples=args.bootstrap_samples, seed=args.seed)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out["config"] = args.config
  out["extra_args"] = list(extra)
  title = f"Test-subject model selection vs proper LOSO ({os.path.basename(args.config)})"
  md_path, js_path = os.path.join(args.workdir, "leakage.md"), os.path.join(args.workdir, "leakage.json")
  reporting.atomic_write_text(md_path, markdown(out, title))
  reporting._atomic_write_json(js_path, reporting._jsonable(out))
  print(f"[leakage] {md_path}\n[leakage] {js_path}")
  for d in out["differences"]:
    if d["source"] == MIXED:
      print(
        f"[leakage] {d['comparison']}: UF1 {d['uf1']['diff']:+.4f} [{d['uf1']['low']:+.4f}, "
        f"{d['uf1']['high']:+.4f}], UAR {d['uar']['diff']:+.4f} [{d['uar']['low']:+.4f}, "
        f"{d['uar']['high']:+.4f}]"
      )
  if failed:
    print(f"[leakage] failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
