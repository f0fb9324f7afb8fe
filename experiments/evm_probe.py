"""A LOSO linear probe on the preprocessed apex faces of each EVM-ablation run.

    python -m experiments.evm_probe --workdir=runs/evm_ablation      # after experiments.evm_ablation

The network's LOSO scores on SynthME at the demo's size are dominated by how the small network trains (many
folds keep one class); the question the EVM ablation asks -- does a reading / an order make sub-pixel motion
easier to tell apart? -- is answered more directly by a fixed linear read-out of the images each variant
produces. For every ``<workdir>/seed<S>/<variant>`` run this loads the run's preprocessed micro-expression
arrays (its TFDS cache, built by the run; nothing is preprocessed again), and for every held-out subject fits
a ridge classifier (one-vs-rest, targets centred one-hot, features standardised on the training subjects,
penalty ``--ridge`` x the mean squared feature norm, solved in the dual) on the other subjects' apex faces.
Scores are pooled over folds as in MEGC 2019 (:mod:`mer_jax.metrics`). The same read-out, penalty and folds
for every variant, so the differences come from the images alone.

Writes ``<workdir>/evm_probe.md`` (mean +- std over seeds per variant) and ``evm_probe.json`` (per seed).
SynthME numbers are evidence about amplifying sub-pixel motion, not about real micro-expression recognition.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional

import ml_collections
import numpy as np

from mer_jax import metrics
from mer_jax.errors import UserError, run_cli


def ridge_loso(
  images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, num_classes: int, ridge: float = 1.0
) -> np.ndarray:
  """LOSO predictions of a ridge classifier on flattened images.

  Args:
    images: [N, H, W, C] float.
    labels: [N] int class indices.
    subjects: [N] subject ids (one fold per distinct id).
    num_classes: K.
    ridge: penalty as a multiple of the mean squared norm of the standardised training features.
  Returns:
    [N] int predictions, each made by the model that did not see that sample's subject.
  """
  x_all = images.reshape(len(images), -1).astype(np.float64)
  pred = np.zeros(len(labels), np.int64)
  for s in np.unique(subjects):
    test = subjects == s
    x, y = x_all[~test], labels[~test]
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs, xt = (x - mean) / std, (x_all[test] - mean) / std
    targets = np.eye(num_classes)[y] - np.eye(num_classes)[y].mean(0)
    gram = xs @ xs.T
    lam = ridge * np.trace(gram) / len(xs)
    dual = np.linalg.solve(gram + lam * np.eye(len(xs)), targets)  # [n_train, K]
    pred[test] = np.argmax((xt @ xs.T) @ dual, axis=1)
  return pred


def probe_run(run_dir: str, ridge: float) -> dict:
  """Scores of the probe on one finished run's micro arrays (read from its cache)."""
  from mer_jax.data import pipeline

  with open(os.path.join(run_dir, "config.json")) as fh:
    config = ml_collections.ConfigDict(json.load(fh))
  data = pipeline.load_arrays(config, run_dir, "micro", log=lambda _msg: None)
  k = len(data.class_names)
  pred = ridge_loso(data.images, data.labels, data.subjects, k, ridge)
  m = metrics.compute(data.labels, pred, k)
  return {"uf1": float(m["uf1"]), "uar": float(m["uar"]), "accuracy": float(m["accuracy"]), "n": int(len(pred))}


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m experiments.evm_probe", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="the experiments.evm_ablation workdir (seed<S>/<variant>)")
  ap.add_argument("--ridge", type=float, default=1.0, help="penalty x mean squared feature norm (default 1)")
  a = ap.parse_args(argv)
  if not os.path.isdir(a.workdir):
    raise UserError(f"--workdir {a.workdir} does not exist; run python -m experiments.evm_ablation first")
  per_seed: dict[str, dict[str, dict]] = {}
  for seed_dir in sorted(d for d in os.listdir(a.workdir) if re.fullmatch(r"seed\d+", d)):
    for variant in sorted(os.listdir(os.path.join(a.workdir, seed_dir))):
      run_dir = os.path.join(a.workdir, seed_dir, variant)
      if not os.path.exists(os.path.join(run_dir, "results.json")):
        continue
      per_seed.setdefault(variant, {})[seed_dir] = probe_run(run_dir, a.ridge)
      print(f"[evm_probe] {seed_dir} {variant}: {per_seed[variant][seed_dir]}", file=sys.stderr, flush=True)
  if not per_seed:
    raise UserError(f"no finished runs (seed<S>/<variant>/results.json) under {a.workdir}")
  lines = ["| variant | seeds | UF1 | UAR | Acc |", "|---|---|---|---|---|"]
  for variant, runs in per_seed.items():
    vals = {k: np.array([r[k] for r in runs.values()]) for k in ("uf1", "uar", "accuracy")}
    lines.append(
      f"| {variant} | {len(runs)} | "
      + " | ".join(
        f"{vals[k].mean():.3f} +- {vals[k].std(ddof=1) if len(runs) > 1 else 0.0:.3f}"
        for k in ("uf1", "uar", "accuracy")
      )
      + " |"
    )
  table = "\n".join(lines)
  head = (
    f"LOSO ridge probe (penalty {a.ridge:g}) on each run's preprocessed apex faces; mean +- std over "
    "seeds. SynthME: evidence about amplifying sub-pixel motion, not about real MER.\n\n"
  )
  with open(os.path.join(a.workdir, "evm_probe.md"), "w") as fh:
    fh.write(head + table + "\n")
  with open(os.path.join(a.workdir, "evm_probe.json"), "w") as fh:
    json.dump({"ridge": a.ridge, "runs": per_seed}, fh, indent=1)
  print(head + table)
  return 0


if __name__ == "__main__":
  run_cli(lambda: main(sys.argv[1:]))
