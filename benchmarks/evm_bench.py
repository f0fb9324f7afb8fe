"""EVM speed: jitted mer_jax.evm.magnify vs a straightforward OpenCV (pyrDown/pyrUp) + NumPy FFT implementation.

Same inputs, same algorithm (YIQ, Laplacian pyramid, ideal temporal band-pass, per-level alpha with lambda_c,
chrominance attenuation, collapse, back to RGB, clip). Prints frames/s of both, the ratio and the device.

  .venv/bin/python benchmarks/evm_bench.py            # 112^2, 256^2, 640x480, batch of 112^2 clips (< 3 min on 2 cores)
  .venv/bin/python benchmarks/evm_bench.py --memory   # also one 300-frame 640x480 clip (peak RSS reported)
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python benchmarks/evm_bench.py   # transparent huge pages for
      # malloc: removes most first-touch page faults of buffers > 32 MiB (256^2 and 640x480: 1.6x-2.8x faster)

jax timings exclude compilation (reported separately); each number is the best of --repeats runs (default 5;
OpenCV: --repeats - 1).
Bands: "narrow" 0.4-3 Hz (few FFT bins in band, typical EVM use), "wide" 0.4-12 Hz (most bins in band:
the full T-frame path); "butterworth" runs the recursive filter on the narrow band (no OpenCV counterpart).
"batch": magnify_batch on [B, T, H, W, C]; "donated": the same with donate=True (the output reuses the input
buffer instead of a fresh allocation; see docs/evm.md, Batches).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.evm import color, filters, magnify, magnify_batch, magnify_jit, motion_level_alphas, pyramids

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peaks  # noqa: E402  (benchmarks/peaks.py)

FPS = 30.0
ALPHA, LAMBDA_C, CA = 15.0, 16.0, 0.1
BANDS = {"narrow": (0.4, 3.0), "wide": (0.4, 12.0)}


def opencv_evm(video: np.ndarray, fps: float, band, alpha=ALPHA, lambda_c=LAMBDA_C, ca=CA) -> np.ndarray:
  """Reference-style EVM with cv2.pyrDown/pyrUp per frame and numpy.fft along time. [T,H,W,3] -> same."""
  t, h, w, _ = video.shape
  n = pyramids.max_levels(h, w)
  shapes = pyramids.level_shapes(h, w, n)
  to_yiq, to_rgb = color.RGB_TO_YIQ.astype(np.float32), color.YIQ_TO_RGB.astype(np.float32)
  yiq = cv2.transform(video.reshape(-1, 1, 3), to_yiq).reshape(video.shape)  # ~15x faster than numpy (N,3)@(3,3)
  stacks = [np.empty((t, sh[0], sh[1], 3), np.float32) for sh in shapes]
  for i in range(t):
    g = yiq[i]
    for lev in range(n):
      g2 = cv2.pyrDown(g)
      stacks[lev][i] = g - cv2.pyrUp(g2, dstsize=(g.shape[1], g.shape[0]))
      g = g2
    stacks[n][i] = g
  bins, _ = filters.ideal_bin_gains(t, fps, band)
  mask = np.zeros(t // 2 + 1, np.float32)
  mask[bins] = 1
  level_alphas = motion_level_alphas(h, w, n, alpha, lambda_c)
  chan = np.array([1.0, ca, ca], np.float32)
  for lev in range(n + 1):
    if level_alphas[lev] == 0:
      stacks[lev][:] = 0
      continue
    spec = np.fft.rfft(stacks[lev], axis=0) * mask[:, None, None, None]
    stacks[lev] = np.fft.irfft(spec, n=t, axis=0).astype(np.float32) * (np.float32(level_alphas[lev]) * chan)
  out = np.empty_like(video)
  for i in range(t):
    img = stacks[n][i]
    for lev in range(n - 1, -1, -1):
      img = cv2.pyrUp(img, dstsize=(shapes[lev][1], shapes[lev][0])) + stacks[lev][i]
    out[i] = np.clip(cv2.transform(yiq[i] + img, to_rgb), 0, 1)
  return out


def best_time(fn, repeats):
  """(best wall-clock s, best process CPU s, all threads) over ``repeats`` runs."""
  wall = cpu = float("inf")
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
  return wall, cpu


def clip(t, h, w, seed=0, batch=None):
  rng = np.random.default_rng(seed)
  shape = (t, h, w, 3) if batch is None else (batch, t, h, w, 3)
  base = rng.random(shape[:-4] + (1, h, w, 3), dtype=np.float32) * 0.6 + 0.2
  return (base + 0.02 * rng.standard_normal(shape, dtype=np.float32)).clip(0, 1)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--frames", type=int, default=64)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--memory", action="store_true", help="also run a 300-frame 640x480 clip")
  ap.add_argument("--check", action="store_true", help="also check both implementations agree")
  args = ap.parse_args()
  dev = jax.devices()[0]
  print(
    f"# EVM benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | jax {jax.__version__} "
    f"on {dev.platform}:{dev.device_kind} | cv2 {cv2.__version__} ({cv2.getNumThreads()} threads) | "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
    f"{os.getloadavg()[0]:.1f} | T={args.frames} frames at {FPS:g} fps, alpha {ALPHA:g} | "
    f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"
  )
  print("fps = frames / wall-clock s; cpu-fps = frames / process CPU s (all threads; steadier on a shared machine)")
  print(
    f"{'case':<24}{'band':<12}{'opencv fps':>11}{'jax fps':>9}{'ratio':>7}"
    f"{'opencv cpu-fps':>16}{'jax cpu-fps':>13}{'ratio':>7}{'compile s':>11}"
  )
  t = args.frames
  traffic = []  # (case, band, bytes accessed per call (XLA cost analysis), best seconds) of single clips
  cases = [
    ("112x112", 112, 112, None, False),
    ("256x256", 256, 256, None, False),
    ("640x480", 480, 640, None, False),
    (f"batch {args.batch} x 112x112", 112, 112, args.batch, False),
    (f"donated {args.batch} x 112x112", 112, 112, args.batch, True),
  ]
  for name, h, w, batch, donate in cases:
    video = clip(t, h, w, batch=batch)
    nframes = video.shape[0] * (t if batch else 1) if batch else t
    for band_name in ("narrow", "wide", "butterworth"):
      band = BANDS["narrow" if band_name == "butterworth" else band_name]
      kind = "butterworth" if band_name == "butterworth" else "ideal"
      opts = dict(alpha=ALPHA, freq_band=band, lambda_c=LAMBDA_C, chrom_attenuation=CA, temporal_filter=kind)
      xv = jnp.asarray(video)
      if donate:
        # each call consumes its input buffer: the copies are made here, outside the timed calls
        pool = [jnp.array(xv, copy=True) for _ in range(args.repeats + 1)]
        # (B023: each `run` is timed and dropped within its own iteration)
        run = lambda: magnify_batch(pool.pop(), FPS, donate=True, **opts).block_until_ready()  # noqa: B023
      elif batch:
        run = lambda: magnify_batch(xv, FPS, **opts).block_until_ready()  # noqa: B023
      else:
        run = lambda: magnify(xv, FPS, **opts).block_until_ready()  # noqa: B023
      t0 = time.perf_counter()
      out = run()
      compile_s = time.perf_counter() - t0
      jt, jc = best_time(run, args.repeats)
      if not batch:
        cost = magnify_jit.lower(xv, FPS, **opts).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("bytes accessed"):
          traffic.append((name, band_name, float(cost["bytes accessed"]), jt))
      if kind == "ideal":
        frames_in = list(video) if batch else [video]
        ct, cc = best_time(lambda: [opencv_evm(v, FPS, band) for v in frames_in], max(1, args.repeats - 1))  # noqa: B023
        cv = (
          f"{nframes / ct:11.0f}{nframes / jt:9.0f}{ct / jt:7.1f}{nframes / cc:16.0f}{nframes / jc:13.0f}{cc / jc:7.1f}"
        )
        if args.check:
          ref = np.stack([opencv_evm(v, FPS, band) for v in frames_in])
          got = np.asarray(out).reshape(ref.shape)
          inner = (Ellipsis, slice(8, -8), slice(8, -8), slice(None))  # interior rows and columns
          print(
            f"    max |jax - opencv| interior {np.abs(got - ref)[inner].max():.2e}, "
            f"mean all {np.abs(got - ref).mean():.2e}"
          )
      else:
        cv = f"{'-':>11}{nframes / jt:9.0f}{'-':>7}{'-':>16}{nframes / jc:13.0f}{'-':>7}"
      print(f"{name:<24}{band_name:<12}{cv}{compile_s:11.1f}", flush=True)
  if traffic:
    peak = peaks.bandwidth_gbs()
    sheet = (peaks.datasheet(dev) or {}).get("bandwidth")
    print(
      "\nmemory traffic of one clip (XLA cost analysis: bytes accessed) / time, against a large jitted "
      "elementwise pass measured in this run:"
    )
    for name, band_name, nbytes, sec in traffic:
      print(
        f"  {name:<10}{band_name:<12}{nbytes / 2**20:8.0f} MiB per call: "
        + peaks.describe(nbytes / sec / 1e9, peak, sheet, "GB/s")
      )
  if args.memory:
    video = clip(300, 480, 640)
    for kind in ("ideal", "butterworth"):
      t0 = time.perf_counter()
      magnify(jnp.asarray(video), FPS, alpha=ALPHA, freq_band=BANDS["narrow"], temporal_filter=kind).block_until_ready()
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      print(f"300 x 640x480 {kind}: {time.perf_counter() - t0:.1f} s incl. compile, peak RSS so far {rss:.2f} GiB")


if __name__ == "__main__":
  main()
