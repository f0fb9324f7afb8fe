"""LOSO wall time: every fold one by one vs folds vmapped into one program (mer_jax.train.loso.run_loso).

A synthetic composite (CDE) data set with the paper's subject structure: 68 subjects (CASME II 24,
SAMM 28, SMIC-HS 16) holding 442 clips (145 / 133 / 164, the 3-class CDE sizes), each clip a noise
image whose class shows as a bright quadrant (learnable, so early stopping and model selection behave
as in training). Both modes run ``run_loso`` end to end, as ``mer_jax.main`` does (validation split,
per-epoch validation, plateau, best-weight selection, checkpoints, test predictions), with the same
epochs and the same initial weights; the vmapped mode sets ``finetune.parallel_folds``.

Reported per mode: total wall time, compile time (JAX's own compile events: tracing, lowering, XLA),
checkpoint-writing time, and per-fold time = (wall - compile) / folds. The two modes' predictions are
compared (fit_many is documented to equal fit run by run).

  .venv/bin/python benchmarks/loso_bench.py                       # tiny network, 32x32, 32 of 68 folds, 1 epoch (~3 min)
  .venv/bin/python benchmarks/loso_bench.py --folds 68            # the full CDE LOSO, 1 epoch (~5 min on 2 busy cores)
  .venv/bin/python benchmarks/loso_bench.py --folds 68 --epochs 3 # (~7.5 min on 2 busy cores)
  .venv/bin/python benchmarks/loso_bench.py --model paper --size 112 --epochs 200 --early-stopping 20
                                                                   # the GPU-session setting (hours on a CPU)
  .venv/bin/python benchmarks/loso_bench.py --folds 8 --mode vmapped --parallel-folds 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mer_jax import config_defaults  # noqa: E402
from mer_jax.data.types import ArrayDataset  # noqa: E402
from mer_jax.models import build_model, count_params, init_variables  # noqa: E402
from mer_jax.train import checkpoint as ckpt  # noqa: E402
from mer_jax.train import loso  # noqa: E402

CDE = (("casme2", 24, 145), ("samm", 28, 133), ("smic", 16, 164))   # (source, subjects, clips)
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def synthetic_cde(size: int, seed: int = 0, scale: float = 1.0) -> ArrayDataset:
  """[442, size, size, 3] float32 CDE-shaped data (``scale`` multiplies the clip counts)."""
  rng = np.random.default_rng(seed)
  images, labels, subjects, sources, clips = [], [], [], [], []
  h = size // 2
  for source, n_subj, n_clips in CDE:
    n_clips = max(int(round(n_clips * scale)), 2 * n_subj)
    per = np.full(n_subj, n_clips // n_subj)
    per[: n_clips - per.sum()] += 1
    for s, n in enumerate(per):
      for j in range(n):
        y = int(rng.integers(0, 3))
        x = rng.uniform(0.0, 0.4, (size, size, 3)).astype(np.float32)
        r, c = divmod(y, 2)
        x[r * h:(r + 1) * h, c * h:(c + 1) * h] += 0.5
        images.append(x)
        labels.append(y)
        subjects.append(f"{source}/s{s:02d}")
        sources.append(source)
        clips.append(f"{source}_s{s:02d}_{j:02d}")
  return ArrayDataset(images=np.stack(images), labels=np.asarray(labels, np.int32),
                      subjects=np.asarray(subjects), sources=np.asarray(sources), clip_ids=np.asarray(clips),
                      class_names=("negative", "positive", "surprise"))


def make_config(args):
  c = config_defaults.get_base_config()
  c.image_size = args.size
  if args.model == "tiny":
    m = c.model
    m.stem_features, m.growth_rate, m.block_layers, m.reduction, m.head_pool = 8, 8, (2, 2), 2, 2
  ft = c.finetune
  ft.epochs, ft.batch_size = args.epochs, args.batch
  ft.early_stopping_patience = args.early_stopping
  c.checkpoint_every_epochs = args.checkpoint_every
  return c


class Meter:
  """Sums JAX compile-event durations and checkpoint-save durations while active."""

  def __init__(self):
    self.compile_s = 0.0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    self._save = ckpt.save
    self.ckpt_s = 0.0
    self.ckpt_n = 0

    def timed_save(*a, **kw):
      t = time.perf_counter()
      try:
        return self._save(*a, **kw)
      finally:
        if self.active:
          self.ckpt_s += time.perf_counter() - t
          self.ckpt_n += 1
    ckpt.save = timed_save

  def _on_event(self, event, duration, **_):
    if self.active and event in COMPILE_EVENTS:
      self.compile_s += duration

  def reset(self):
    self.compile_s, self.ckpt_s, self.ckpt_n = 0.0, 0.0, 0


def run_mode(config, ds, model, init, group: int, subjects, meter: Meter, workroot: str) -> dict:
  config = config.copy_and_resolve_references()
  config.finetune.parallel_folds = group
  workdir = tempfile.mkdtemp(prefix=f"loso_{'vmap' if group else 'seq'}_", dir=workroot)
  jax.clear_caches()            # each mode pays its own compilation
  meter.reset()
  meter.active = True
  t = time.perf_counter()
  records = loso.run_loso(config, ds, workdir, apply_fn=model.apply, init_fn=lambda i: init, progress=False,
                          subjects=subjects)
  wall = time.perf_counter() - t
  meter.active = False
  shutil.rmtree(workdir, ignore_errors=True)
  return dict(wall=wall, compile=meter.compile_s, ckpt=meter.ckpt_s, ckpt_n=meter.ckpt_n, records=records,
              epochs=[r["epochs_trained"] for r in records])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", choices=("tiny", "paper"), default="tiny",
                  help="tiny: stem 8, growth 8, blocks (2, 2); paper: the 3.14M-parameter network")
  ap.add_argument("--size", type=int, default=32, help="image side (the paper uses 112)")
  ap.add_argument("--epochs", type=int, default=1, help="epochs per fold (same for both modes)")
  ap.add_argument("--early-stopping", type=int, default=0, help="patience in epochs (0: off, every fold "
                  "trains exactly --epochs)")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--folds", type=int, default=32, help="first N subjects as held-out folds (68: the full CDE "
                  "LOSO; 32 keeps the default run ~3 min on 2 busy cores)")
  ap.add_argument("--parallel-folds", type=int, default=0, help="folds per vmapped group (0: all in one)")
  ap.add_argument("--checkpoint-every", type=int, default=1, help="config.checkpoint_every_epochs")
  ap.add_argument("--clip-scale", type=float, default=1.0, help="multiply the CDE clip counts")
  ap.add_argument("--mode", choices=("both", "sequential", "vmapped"), default="both")
  ap.add_argument("--workdir", default=None, help="where the runs write (default: a temporary folder)")
  args = ap.parse_args()

  config = make_config(args)
  ds = synthetic_cde(args.size, scale=args.clip_scale)
  all_subjects = loso.subjects_of(ds)
  subjects = all_subjects[: args.folds]
  model = build_model(config.model)
  init = jax.device_get(init_variables(model, jax.random.key(0), args.size, 3))
  group = args.parallel_folds or len(subjects)
  meter = Meter()
  workroot = args.workdir or tempfile.mkdtemp(prefix="loso_bench_")
  os.makedirs(workroot, exist_ok=True)

  dev = jax.devices()[0]
  print(f"# LOSO benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
  print(f"# device: jax {jax.__version__} {dev.platform} ({dev.device_kind}) x{jax.device_count()}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}")
  print(f"# synthetic CDE: {len(ds)} clips, {len(all_subjects)} subjects, {len(subjects)} folds run; "
        f"model {args.model} ({count_params(init['params']):,} params) at {args.size}x{args.size}; "
        f"{args.epochs} epochs, early stopping {'off' if not args.early_stopping else args.early_stopping}, "
        f"batch {args.batch}, vmapped groups of {group}")
  results = {}
  modes = ["sequential", "vmapped"] if args.mode == "both" else [args.mode]
  for mode in modes:
    print(f"  running {mode} ...", file=sys.stderr, flush=True)
    results[mode] = run_mode(config, ds, model, init, 0 if mode == "sequential" else group, subjects, meter,
                             workroot)
  if not args.workdir:
    shutil.rmtree(workroot, ignore_errors=True)

  n = len(subjects)
  base = results.get("sequential")
  print(f"\n{'mode':<11} {'wall s':>8} {'compile s':>10} {'ckpt s':>8} {'per-fold s':>11} {'speed-up':>9} "
        f"{'excl. compile':>14} {'excl. compile+ckpt':>19}")
  for mode, r in results.items():
    per_fold = (r["wall"] - r["compile"]) / n
    up = f"{base['wall'] / r['wall']:.2f}x" if base else "-"
    up_nc = f"{(base['wall'] - base['compile']) / (r['wall'] - r['compile']):.2f}x" if base else "-"
    pure = lambda q: q["wall"] - q["compile"] - q["ckpt"]
    up_pure = f"{pure(base) / pure(r):.2f}x" if base else "-"
    print(f"{mode:<11} {r['wall']:8.1f} {r['compile']:10.1f} {r['ckpt']:8.1f} {per_fold:11.2f} {up:>9} {up_nc:>14} "
          f"{up_pure:>19}")
  for mode, r in results.items():
    acc = np.mean([np.mean(np.asarray(x["y_true"]) == np.asarray(x["y_pred"])) for x in r["records"]])
    print(f"{mode}: mean fold test accuracy {acc:.3f}, epochs trained {min(r['epochs'])}-{max(r['epochs'])}, "
          f"{r['ckpt_n']} checkpoint saves")
  if len(results) == 2:
    a, b = (np.concatenate([np.asarray(x["probs"]) for x in results[m]["records"]]) for m in results)
    same = all(x["y_pred"] == y["y_pred"] for x, y in zip(results["sequential"]["records"],
                                                        results["vmapped"]["records"]))
    print(f"predictions identical: {same} (max |prob difference| {np.max(np.abs(a - b)):.2e})")


if __name__ == "__main__":
  main()
