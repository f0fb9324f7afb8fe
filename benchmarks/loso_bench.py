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

  .venv/bin/python benchmarks/loso_bench.py                        # tiny network, 32x32, 32/68 folds, 1 epoch (~3 min)
  .venv/bin/python benchmarks/loso_bench.py --folds 68             # the full CDE LOSO, 1 epoch (~5 min, 2 busy cores)
  .venv/bin/python benchmarks/loso_bench.py --folds 68 --epochs 3  # (~7.5 min on 2 busy cores)
  .venv/bin/python benchmarks/loso_bench.py --model paper --size 112 --epochs 200 --early-stopping 20
                                                                   # the GPU-session setting (hours on a CPU)
  .venv/bin/python benchmarks/loso_bench.py --folds 8 --mode vmapped --parallel-folds 8
  .venv/bin/python benchmarks/loso_bench.py --mode all   # + synchronous checkpoints, + folds sharded over processes

Modes: ``sequential`` (the baseline: folds one by one, ``finetune.parallel_folds=0``); ``vmapped`` (all folds,
or groups of ``--parallel-folds``, as one vmapped program); ``sharded`` (folds spread over ``--shards``
processes, each pinned to one CPU core and running its folds one by one: mer_jax.main's ``--fold_shard=k/n``
on one machine; wall time includes the processes' start-up); ``sequential-sync`` (the baseline with
``checkpoint_async=False``). The checkpoint column is the time the training loop was blocked by
checkpointing (saves and waits for background writes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

PIN_ENV = "MER_JAX_BENCH_CORE"
if os.environ.get(PIN_ENV):  # a sharded-mode worker: one core, set before JAX sizes its thread pool
  os.sched_setaffinity(0, {int(os.environ[PIN_ENV])})

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
from mer_jax.train.state import model_apply  # noqa: E402

CDE = (("casme2", 24, 145), ("samm", 28, 133), ("smic", 16, 164))  # (source, subjects, clips)
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


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
        x[r * h : (r + 1) * h, c * h : (c + 1) * h] += 0.5
        images.append(x)
        labels.append(y)
        subjects.append(f"{source}/s{s:02d}")
        sources.append(source)
        clips.append(f"{source}_s{s:02d}_{j:02d}")
  return ArrayDataset(
    images=np.stack(images),
    labels=np.asarray(labels, np.int32),
    subjects=np.asarray(subjects),
    sources=np.asarray(sources),
    clip_ids=np.asarray(clips),
    class_names=("negative", "positive", "surprise"),
  )


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
  c.checkpoint_async = not args.sync_checkpoints
  return c


class Meter:
  """Sums JAX compile-event durations and the time the training loop spends blocked in checkpointing
  (``RunCheckpoints.save``, and ``close``/``wait``, which wait for background writes) while active."""

  def __init__(self):
    self.compile_s = 0.0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    self.ckpt_s = 0.0
    self.ckpt_n = 0
    for name in ("save", "close", "wait"):
      self._wrap(name)

  def _wrap(self, name):
    real = getattr(ckpt.RunCheckpoints, name)
    meter = self

    def timed(self_, *a, **kw):
      t = time.perf_counter()
      try:
        return real(self_, *a, **kw)
      finally:
        if meter.active:
          meter.ckpt_s += time.perf_counter() - t
          meter.ckpt_n += name == "save"

    setattr(ckpt.RunCheckpoints, name, timed)

  def _on_event(self, event, duration, **_):
    if self.active and event in COMPILE_EVENTS:
      self.compile_s += duration

  def reset(self):
    self.compile_s, self.ckpt_s, self.ckpt_n = 0.0, 0.0, 0


def run_mode(config, ds, model, init, group: int, subjects, meter: Meter, workroot: str, sync: bool = False) -> dict:
  config = config.copy_and_resolve_references()
  config.finetune.parallel_folds = group
  if sync:
    config.checkpoint_async = False
  workdir = tempfile.mkdtemp(prefix=f"loso_{'vmap' if group else 'seq'}_", dir=workroot)
  jax.clear_caches()  # each mode pays its own compilation
  meter.reset()
  meter.active = True
  t = time.perf_counter()
  records = loso.run_loso(
    config, ds, workdir, apply_fn=model_apply(model), init_fn=lambda i: init, progress=False, subjects=subjects
  )
  wall = time.perf_counter() - t
  meter.active = False
  shutil.rmtree(workdir, ignore_errors=True)
  return dict(
    wall=wall,
    compile=meter.compile_s,
    ckpt=meter.ckpt_s,
    ckpt_n=meter.ckpt_n,
    records=records,
    epochs=[r["epochs_trained"] for r in records],
  )


def _worker_argv(argv: list) -> list:
  """The command-line arguments without --mode / --workdir / --shards (and their values)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in ("--mode", "--workdir", "--shards"):
      skip = True
    elif not a.startswith(("--mode=", "--workdir=", "--shards=")):
      out.append(a)
  return out


def run_sharded(argv: list, n: int, subjects, workroot: str) -> dict:
  """Folds sharded over ``n`` processes, each pinned to one CPU core (``os.sched_setaffinity`` at start-up, so
  XLA sizes its thread pool to 1) and running folds k, k+n, ... one by one: the ``--fold_shard=k/n`` recipe of
  mer_jax.main on one machine. Wall time = first start to last finish, process start-up included."""
  cores = sorted(os.sched_getaffinity(0))
  outs, procs = [], []
  t = time.perf_counter()
  for k in range(n):
    out = os.path.join(workroot, f"shard{k}.json")
    outs.append(out)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--worker={k}/{n}", f"--worker-out={out}"]
    env = dict(os.environ, **{PIN_ENV: str(cores[k % len(cores)])})
    procs.append(subprocess.Popen(cmd, env=env))
  codes = [p.wait() for p in procs]
  wall = time.perf_counter() - t
  if any(codes):
    raise SystemExit(f"a shard worker failed (exit codes {codes})")
  parts = []
  for out in outs:
    with open(out) as f:
      parts.append(json.load(f))
  by_subject = {r["subject"]: r for p in parts for r in p["records"]}
  records = [by_subject[s] for s in subjects]
  return dict(
    wall=wall,
    compile=max(p["compile"] for p in parts),
    ckpt=max(p["ckpt"] for p in parts),
    ckpt_n=sum(p["ckpt_n"] for p in parts),
    records=records,
    epochs=[r["epochs_trained"] for r in records],
  )


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument(
    "--model",
    choices=("tiny", "paper"),
    default="tiny",
    help="tiny: stem 8, growth 8, blocks (2, 2); paper: the 3.14M-parameter network",
  )
  ap.add_argument("--size", type=int, default=32, help="image side (the paper uses 112)")
  ap.add_argument("--epochs", type=int, default=1, help="epochs per fold (same for both modes)")
  ap.add_argument(
    "--early-stopping", type=int, default=0, help="patience in epochs (0: off, every fold trains exactly --epochs)"
  )
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument(
    "--folds",
    type=int,
    default=32,
    help="first N subjects as held-out folds (68: the full CDE LOSO; 32 keeps the default run ~3 min on 2 busy cores)",
  )
  ap.add_argument("--parallel-folds", type=int, default=0, help="folds per vmapped group (0: all in one)")
  ap.add_argument("--checkpoint-every", type=int, default=1, help="config.checkpoint_every_epochs")
  ap.add_argument(
    "--sync-checkpoints",
    action="store_true",
    help="config.checkpoint_async=False: every checkpoint is on disk before training goes on",
  )
  ap.add_argument("--clip-scale", type=float, default=1.0, help="multiply the CDE clip counts")
  ap.add_argument(
    "--mode",
    choices=("both", "sequential", "vmapped", "sharded", "all"),
    default="both",
    help="both: sequential and vmapped; all: also 'sequential-sync' (synchronous checkpoints) and "
    "'sharded' (folds spread over --shards processes, one CPU core each)",
  )
  ap.add_argument(
    "--shards",
    type=int,
    default=len(os.sched_getaffinity(0)),
    help="processes of the sharded mode (default: the usable CPU cores)",
  )
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
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
  if args.worker:  # one shard of the sharded mode (started by run_sharded)
    k, n = (int(v) for v in args.worker.split("/"))
    r = run_mode(config, ds, model, init, 0, subjects[k::n], meter, workroot)
    keep = ("subject", "y_true", "y_pred", "probs", "epochs_trained")
    r["records"] = [{key: rec[key] for key in keep} for rec in r["records"]]
    with open(args.worker_out, "w") as f:
      json.dump(r, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return

  dev = jax.devices()[0]
  print(f"# LOSO benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
  print(
    f"# device: jax {jax.__version__} {dev.platform} ({dev.device_kind}) x{jax.device_count()}, "
    f"{os.cpu_count()} CPU cores, {platform.machine()}"
  )
  print(
    f"# synthetic CDE: {len(ds)} clips, {len(all_subjects)} subjects, {len(subjects)} folds run; "
    f"model {args.model} ({count_params(init['params']):,} params) at {args.size}x{args.size}; "
    f"{args.epochs} epochs, early stopping {'off' if not args.early_stopping else args.early_stopping}, "
    f"batch {args.batch}, vmapped groups of {group}; checkpoints every {args.checkpoint_every} epoch(s), "
    f"{'synchronous' if args.sync_checkpoints else 'asynchronous'}"
  )
  results = {}
  modes = {"both": ["sequential", "vmapped"], "all": ["sequential-sync", "sequential", "vmapped", "sharded"]}.get(
    args.mode, [args.mode]
  )
  for mode in modes:
    print(f"  running {mode} ...", file=sys.stderr, flush=True)
    if mode == "sharded":
      results[mode] = run_sharded(
        _worker_argv(sys.argv[1:]) + [f"--workdir={workroot}"], args.shards, subjects, workroot
      )
    else:
      results[mode] = run_mode(
        config,
        ds,
        model,
        init,
        group if mode == "vmapped" else 0,
        subjects,
        meter,
        workroot,
        sync=mode == "sequential-sync",
      )
  if not args.workdir:
    shutil.rmtree(workroot, ignore_errors=True)

  n = len(subjects)
  base = results.get("sequential")
  print(
    f"\n{'mode':<16} {'wall s':>8} {'compile s':>10} {'ckpt s':>8} {'per-fold s':>11} {'speed-up':>9} "
    f"{'excl. compile':>14} {'excl. compile+ckpt':>19}"
  )
  for mode, r in results.items():
    per_fold = (r["wall"] - r["compile"]) / n
    up = f"{base['wall'] / r['wall']:.2f}x" if base else "-"
    up_nc = f"{(base['wall'] - base['compile']) / (r['wall'] - r['compile']):.2f}x" if base else "-"
    pure = lambda q: q["wall"] - q["compile"] - q["ckpt"]
    up_pure = f"{pure(base) / pure(r):.2f}x" if base else "-"
    if mode == "sharded":  # compile / checkpoint: the slowest shard's, overlapping with the others' work
      per_fold, up_nc, up_pure = r["wall"] / n, "-", "-"
    print(
      f"{mode:<16} {r['wall']:8.1f} {r['compile']:10.1f} {r['ckpt']:8.1f} {per_fold:11.2f} {up:>9} {up_nc:>14} "
      f"{up_pure:>19}"
    )
  for mode, r in results.items():
    acc = np.mean([np.mean(np.asarray(x["y_true"]) == np.asarray(x["y_pred"])) for x in r["records"]])
    print(
      f"{mode}: mean fold test accuracy {acc:.3f}, epochs trained {min(r['epochs'])}-{max(r['epochs'])}, "
      f"{r['ckpt_n']} checkpoint saves"
    )
  for other in ("vmapped", "sharded"):
    if "sequential" in results and other in results:
      a, b = (np.concatenate([np.asarray(x["probs"]) for x in results[m]["records"]]) for m in ("sequential", other))
      same = all(
        x["y_pred"] == y["y_pred"] for x, y in zip(results["sequential"]["records"], results[other]["records"])
      )
      print(f"{other} vs sequential: predictions identical: {same} (max |prob difference| {np.max(np.abs(a - b)):.2e})")
      drift = describe_divergence(results["sequential"]["records"], results[other]["records"])
      print(f"{other} vs sequential: {drift}")


def describe_divergence(seq: list, other: list) -> str:
  """How two modes' training drifts apart, epoch by epoch: the largest absolute difference of a fold's epoch-mean
  training loss (absolute, because a loss that collapses towards 0 makes relative differences meaningless).
  Differences that start at float rounding (~1e-7 of a loss ~1 at epoch 0) and grow over the epochs are rounding
  amplified by training (different but equally valid summation orders, e.g. a GPU's grouped convolutions); a
  difference already large at epoch 0 means the two modes do not compute the same step."""
  worst: dict[int, float] = {}
  for x, y in zip(seq, other):
    for hx, hy in zip(x["history"], y["history"]):
      worst[hx["epoch"]] = max(worst.get(hx["epoch"], 0.0), abs(hx["train_loss"] - hy["train_loss"]))
  if not worst:
    return "no epochs to compare"
  epochs = sorted(worst)
  shown = sorted({e for e in epochs if e < 3 or e % 10 == 9} | {epochs[-1]})
  above = next((e for e in epochs if worst[e] > 1e-3), None)
  return (
    "training-loss |difference| by epoch (max over folds): "
    + ", ".join(f"{e}: {worst[e]:.1e}" for e in shown)
    + ("; first above 1e-3 at epoch " + str(above) if above is not None else "; never above 1e-3")
  )


if __name__ == "__main__":
  main()
