"""Spotting throughput: frames per second of the motion signal (mer_jax.spotting.spotter.motion_signal) on this CPU,
against real time at 30 fps, for a phone-like 640x360 video of a SynthME face (decoding not included).

    python benchmarks/spot_bench.py [--frames 300] [--flows farneback,dis]

Prints one line per setting: frames/s and the real-time factor (frames/s / 30); >= 1 keeps up with a 30 fps
camera. Name a run by date, machine and commit when quoting it (docs/spotting.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import cv2
import numpy as np

from mer_jax import reporting
from mer_jax.data import synth
from mer_jax.spot_bench import machine
from mer_jax.spotting import spotter as sp
from mer_jax.spotting import synth_long


def phone_frames(n: int) -> list[np.ndarray]:
  """[n] uint8 BGR 640x360 frames: a 300-px SynthME face with one smile and one head move."""
  rng = np.random.default_rng(0)
  ident = synth.make_identity(rng)
  events = [
    synth_long._Event("macro", n // 4, 24, apex=10, aus=synth.expression_aus("positive", rng), amplitude=7.0),
    synth_long._Event("head", n // 2, 12, amplitude=3.0, shift=(2.5, 1.0, 1.0)),
  ]
  out = []
  for img in synth_long.render_video(ident, events, n, frame_size=120, rng=np.random.default_rng(1)):
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[30:330, 170:470] = cv2.resize(img, (300, 300), interpolation=cv2.INTER_CUBIC)
    out.append(canvas)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--frames", type=int, default=300)
  ap.add_argument("--flows", default="farneback,dis")
  a = ap.parse_args()
  frames = phone_frames(a.frames)
  head = reporting.git_commit_of_repo() or "unknown"
  print(
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}, "
    f"commit {head}; {a.frames} frames 640x360 at 30 fps, OpenCV threads {cv2.getNumThreads()}"
  )
  for flow in a.flows.split(","):
    for register in (True, False):
      p = dataclasses.replace(sp.SpotParams(), flow=flow, register=register)
      t0 = time.perf_counter()
      sp.motion_signal(iter(frames), 30.0, p)
      dt = time.perf_counter() - t0
      fps = a.frames / dt
      print(f"  flow={flow:9s} register={str(register):5s}: {fps:6.1f} frames/s = {fps / 30:.2f}x real time at 30 fps")


if __name__ == "__main__":
  main()
