"""Preprocessing cost of the two EVM orders on a CASME II-sized synthetic set, in one run.

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python benchmarks/preprocess_bench.py --sample 40
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python benchmarks/preprocess_bench.py   # all 255 clips

The set: SynthME in the CASME II layout (mer_jax.data.synth), 255 clips (CASME II's count) at 200 fps whose
onset..offset lengths are spread around 70 frames (LENGTHS), drawn at 480x480 and widened to 640x480 (CASME II's
frame size) by repeating the edge columns, so the face box is ~300-340 px as in the real set. With --sample N only
N clips (spread over all lengths) are generated and timed, and the full-set time is projected.

For each order (configs/cde.py with ``evm.order`` = "fast", then "paper") every clip goes through
mer_jax.data.preprocess.preprocess_sample (JPEG reading, face detection, apex, EVM, resize), one after the other
as the TFDS builder does, in a fresh set of jit caches (the two orders compile different shapes). Reported per
order: wall time, time per clip, the XLA compilations and their backend compile seconds, and the ratio
paper / fast. The frames are read once before timing (page cache warm for both orders).
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
import warnings

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mer_jax import reporting  # noqa: E402
from mer_jax.data import preprocess, readers, synth  # noqa: E402

FULL_SET = 255  # CASME II clips
LENGTHS = (46, 56, 66, 76, 86, 96)  # onset..offset frames (mean 71); CASME II clips are 0.2-0.5 s at 200 fps
FRAME = (480, 640)  # CASME II frame size (H, W)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _widen(root: str, width: int) -> None:
  """Pads every frame under ``root`` to ``width`` columns by repeating its edge columns (in place)."""
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith(".jpg"):
        p = os.path.join(d, f)
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        left = (width - img.shape[1]) // 2
        img = cv2.copyMakeBorder(img, 0, 0, left, width - img.shape[1] - left, cv2.BORDER_REPLICATE)
        cv2.imwrite(p, img, (cv2.IMWRITE_JPEG_QUALITY, 95))


def make_set(out: str, clips: int, seed: int) -> list:
  """SynthME CASME II clips, ``clips`` in all, spread over LENGTHS -> reader samples."""
  samples = []
  per = [clips // len(LENGTHS) + (i < clips % len(LENGTHS)) for i in range(len(LENGTHS))]
  for i, (length, n) in enumerate(zip(LENGTHS, per)):
    if n == 0:
      continue
    root = os.path.join(out, f"len{length}")
    if os.path.isdir(root):  # --keep: a set written by an earlier run
      samples += readers.read_casme2(root).samples
      continue
    synth.generate(
      "casme2", root, seed=seed + i, subjects=1, clips_per_subject=n, clip_frames=length, frame_size=FRAME[0]
    )
    _widen(root, FRAME[1])
    samples += readers.read_casme2(root).samples
  return samples


def time_order(samples: list, order: str) -> dict:
  """Preprocesses every sample with configs/cde.py in ``order``; returns timings and compile counts."""
  import jax

  from configs import cde

  config = cde.get_config()
  config.evm.order = order
  compiles = []

  def listener(event, duration, **kw):
    if event == COMPILE_EVENT:
      compiles.append(duration)

  jax.clear_caches()
  jax.monitoring.register_event_duration_secs_listener(listener)
  per_clip = []
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      start = time.perf_counter()
      for s in samples:
        t0 = time.perf_counter()
        out = preprocess.preprocess_sample(s, config)
        per_clip.append(time.perf_counter() - t0)
        assert out.shape == (112, 112, 3)
      total = time.perf_counter() - start
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return {
    "total": total,
    "per_clip": total / len(samples),
    "median": float(np.median(per_clip)),
    "compiles": len(compiles),
    "compile_s": float(sum(compiles)),
  }


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sample", type=int, default=0, help="time this many clips (0: the full 255-clip set)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--keep", default="", help="write the set here (or reuse it) and keep it (default: a temporary folder)"
  )
  args = ap.parse_args()
  n = args.sample or FULL_SET
  out = args.keep or tempfile.mkdtemp(prefix="preprocess_bench_")
  try:
    t0 = time.perf_counter()
    samples = make_set(out, n, args.seed)
    gen = time.perf_counter() - t0
    for s in samples:  # warm the page cache for both orders alike
      preprocess.read_frames(s.frame_paths[s.onset : s.offset + 1])
    import jax

    from configs import cde
    from mer_jax.data import face as face_lib

    cfg = cde.get_config()
    lengths = [s.offset - s.onset + 1 for s in samples]
    boxes = [
      face_lib.clip_face_box(preprocess.read_frames(s.frame_paths[s.onset : s.onset + 1])).size
      for s in samples[:: max(1, len(samples) // 8)]
    ]
    head = reporting.git_commit_of_repo() or "?"
    print(
      f"# preprocess benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | "
      f"git {head} | jax {jax.__version__} on {jax.default_backend()} | {platform.machine()}, "
      f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} | "
      f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}"
    )
    print(
      f"# {len(samples)} SynthME CASME II clips ({'sample of ' + str(FULL_SET) if args.sample else 'full set'})"
      f", {FRAME[1]}x{FRAME[0]} at 200 fps, onset..offset {min(lengths)}-{max(lengths)} frames "
      f"(mean {np.mean(lengths):.0f}), face boxes ~{min(boxes)}-{max(boxes)} px (paper working sizes "
      f"{sorted({preprocess.work_size(b, cfg.evm) for b in boxes})}); configs/cde.py EVM "
      f"(temporal_filter={cfg.evm.temporal_filter}); set generated in {gen:.0f} s"
    )
    res = {order: time_order(samples, order) for order in ("fast", "paper")}
    print(
      f"{'order':6} {'total s':>8} {'s/clip':>7} {'median':>7} {'compiles':>8} {'compile s':>9} {'projected 255 s':>15}"
    )
    for order, r in res.items():
      proj = r["per_clip"] * FULL_SET
      print(
        f"{order:6} {r['total']:8.1f} {r['per_clip']:7.3f} {r['median']:7.3f} {r['compiles']:8d} "
        f"{r['compile_s']:9.1f} {proj:15.0f}"
      )
    f, p = res["fast"], res["paper"]
    steady = ((p["total"] - p["compile_s"]) / len(samples)) / ((f["total"] - f["compile_s"]) / len(samples))
    print(
      f"paper / fast: {p['total'] / f['total']:.2f}x total, {p['median'] / f['median']:.2f}x median clip, "
      f"{steady:.2f}x without backend compile time"
    )
    if args.sample:
      print(
        f"projection to {FULL_SET} clips = time per clip x {FULL_SET} (an upper bound: the number of "
        "compilations is bounded by the working sizes and lengths, not by the clip count)"
      )
  finally:
    if not args.keep:
      shutil.rmtree(out, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
