"""Input pipeline: cached TFDS arrays -> device batches, and whether the train loop waits on input.

Stages, each in samples/s:

1. ``load_arrays`` on a built cache (reader + source fingerprint + cache read) (TFDS array_record -> uint8 ->
   float32 ArrayDataset): paid once per run;
2. batch assembly exactly as ``mer_jax.train.loop.fit`` does it: class-balanced ``epoch_plan`` indices,
   ``train_x[idx]`` gather, ``jax.device_put`` of images and labels (blocked until on the device);
3. training steps (jitted ``train_step``, paper network, batch 32) fed (a) with the batch already on the
   device and (b) with real input: the loop's own gather + device_put per step. (b) / (a) ~= 1 means the
   loop never waits on input. JAX dispatch is asynchronous, so the gather for step s+1 overlaps step s.

The cache is a small SynthME CASME II set (EVM off; built once into a temporary folder, build time
reported but not part of the input rate); the training arrays are that set tiled to ``--samples``.

  .venv/bin/python benchmarks/input_bench.py                  # paper network at 112x112 (~2 min on 2 cores)
  .venv/bin/python benchmarks/input_bench.py --model tiny     # a ~14k-parameter network: the worst case for input
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mer_jax import config_defaults  # noqa: E402
from mer_jax.data import pipeline, synth  # noqa: E402
from mer_jax.models import build_model, init_variables  # noqa: E402
from mer_jax.train.sampling import epoch_plan, epoch_rng  # noqa: E402
from mer_jax.train.state import create_state  # noqa: E402
from mer_jax.train.steps import train_step  # noqa: E402


def build_cache(workdir: str, size: int, subjects: int, clips: int) -> tuple:
  root = synth.generate(
    "casme2", os.path.join(workdir, "casme2"), seed=0, subjects=subjects, clips_per_subject=clips, clip_frames=16
  )
  c = config_defaults.get_base_config()
  c.image_size = size
  c.evm.enabled = False
  c.data.micro = ("casme2",)
  c.data.roots.casme2 = root
  quiet = lambda _msg: None
  t = time.perf_counter()
  pipeline.load_arrays(c, workdir, "micro", log=quiet)  # builds the cache
  build_s = time.perf_counter() - t
  times, ds = [], None
  for _ in range(3):
    t = time.perf_counter()
    ds = pipeline.load_arrays(c, workdir, "micro", log=quiet)  # cache hit
    times.append(time.perf_counter() - t)
  return ds, build_s, statistics.median(times)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", choices=("paper", "tiny"), default="paper")
  ap.add_argument("--size", type=int, default=112)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--samples", type=int, default=442, help="training-set size (CDE: 442)")
  ap.add_argument("--steps", type=int, default=2, help="training steps per timed block")
  ap.add_argument("--repeats", type=int, default=4, help="timed block pairs (on device, real input)")
  ap.add_argument("--subjects", type=int, default=3, help="SynthME subjects in the cache")
  ap.add_argument("--clips", type=int, default=6, help="SynthME clips per subject")
  args = ap.parse_args()

  dev = jax.devices()[0]
  print(f"# input-pipeline benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
  print(
    f"# device: jax {jax.__version__} {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, "
    f"{platform.machine()}"
  )
  workdir = tempfile.mkdtemp(prefix="input_bench_")
  try:
    ds, build_s, load_s = build_cache(workdir, args.size, args.subjects, args.clips)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  n_cache = len(ds)
  reps = -(-args.samples // n_cache)
  train_x = np.concatenate([ds.images] * reps)[: args.samples]
  train_y = np.concatenate([ds.labels] * reps)[: args.samples]
  print(
    f"# cache: {n_cache} SynthME CASME II clips at {args.size}x{args.size} (build {build_s:.1f} s, once); "
    f"training arrays {train_x.shape} float32 ({train_x.nbytes / 2**20:.0f} MiB); batch {args.batch}"
  )

  # 2. batch assembly as loop.fit does it.
  def batches(epoch):
    for idx in epoch_plan(train_y, args.batch, epoch_rng(0, epoch), True):
      yield (jax.device_put(np.asarray(train_x[idx], np.float32)), jax.device_put(np.asarray(train_y[idx], np.int32)))

  for x, _ in batches(99):  # warm-up
    x.block_until_ready()
  t, n = time.perf_counter(), 0
  for e in range(3):
    for x, y in batches(e):
      x.block_until_ready()
      y.block_until_ready()
      n += x.shape[0]
  assembly_rate = n / (time.perf_counter() - t)

  # 3. steps with the batch on the device vs with real input.
  mcfg = config_defaults.get_model_config(num_classes=int(train_y.max()) + 1 if train_y.max() >= 2 else 3)
  if args.model == "tiny":
    mcfg.stem_features, mcfg.growth_rate, mcfg.block_layers, mcfg.reduction, mcfg.head_pool = 8, 8, (2, 2), 2, 2
  model = build_model(mcfg)
  state = create_state(
    model.apply, init_variables(model, jax.random.key(0), args.size, 3), config_defaults.get_train_config(args.batch, 1)
  )
  step = jax.jit(train_step)
  x0, y0 = next(batches(0))
  state, loss = step(state, x0, y0)  # compile
  loss.block_until_ready()

  def on_device(state, n):
    for _ in range(n):
      state, loss = step(state, x0, y0)
    loss.block_until_ready()
    return state

  def real_input(state, n):
    it, e = batches(1), 1
    for _ in range(n):
      try:
        x, y = next(it)
      except StopIteration:
        e += 1
        it = batches(e)
        x, y = next(it)
      state, loss = step(state, x, y)
    loss.block_until_ready()
    return state

  times = {"on device": [], "real input": []}
  for _ in range(args.repeats):  # interleaved, so that machine load hits both alike
    for name, fn in (("on device", on_device), ("real input", real_input)):
      t = time.perf_counter()
      state = fn(state, args.steps)
      times[name].append((time.perf_counter() - t) / args.steps)
  dev_s, real_s = statistics.median(times["on device"]), statistics.median(times["real input"])
  pair_ratio = statistics.median(r / d for r, d in zip(times["real input"], times["on device"]))

  print(f"\n{'stage':<46} {'samples/s':>10} {'ms/batch':>9}")
  print(
    f"{'1. load_arrays (cache -> float32 arrays, once)':<46} {n_cache / load_s:10.0f} "
    f"{load_s / n_cache * args.batch * 1e3:9.2f}"
  )
  print(
    f"{'2. batch assembly (plan, gather, device_put)':<46} {assembly_rate:10.0f} "
    f"{args.batch / assembly_rate * 1e3:9.2f}"
  )
  print(f"{'3a. train step, batch already on device':<46} {args.batch / dev_s:10.1f} {dev_s * 1e3:9.1f}")
  print(f"{'3b. train step, real input (loop.fit path)':<46} {args.batch / real_s:10.1f} {real_s * 1e3:9.1f}")
  print(
    f"\nstep time real input / on device: {pair_ratio:.3f} (median over {args.repeats} adjacent block pairs; "
    f"{args.model} network); "
    f"input can feed {assembly_rate / (args.batch / dev_s):.0f}x the training rate"
  )


if __name__ == "__main__":
  main()
