"""Temporal gain of the two readings of the paper's band "0.1-0.4" at the apex of a micro-expression.

  python -m mer_jax.evm.gains [--band 0.1,0.4] [--alpha 15] [--fps 200,100] [--rise 0.07,0.1,0.15,0.2]

A micro-expression is modelled as an intensity (or displacement) profile rising as a raised cosine from the
onset frame (n = 0) to the apex (n = N = round(rise_s * fps)): x[n] = (1 - cos(pi n / N)) / 2. The clip starts at
the onset, so the recursive filters start from x[0] (as mer_jax.evm does), and the band-pass output at the apex
divided by the rise x[N] - x[0] = 1 is the *apex gain* g. The Laplacian pipeline then adds alpha_l * g times the
change to level l, so the apex is magnified 1 + alpha_l * g times (alpha_l <= alpha, see motion_level_alphas).

Readings (``evm.band_units``):
  * "hz": a band in Hz. The benchmark configs run the first-order Butterworth band-pass (``hz_butterworth``);
    the RC two-rate IIR on the same band (``hz_iir``) is shown too. The gain depends on the onset-to-apex time in
    seconds, almost not on fps.
  * "mit_rates": the MIT IIR with per-frame rates (r2, r1) = band. The rates are per frame, so the band in Hz
    scales with fps (filters.iir_cutoffs_hz) and the gain depends on the onset-to-apex time in *frames*.

Everything runs through the package's own filters (mer_jax.evm.filters, float32).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mer_jax.evm import filters

READINGS = ("hz_butterworth", "hz_iir", "mit_rates")
PAPER_BAND = (0.1, 0.4)
FPS_VALUES = (200.0, 100.0)
RISE_SECONDS = (0.07, 0.1, 0.15, 0.2)


def raised_cosine_rise(frames: int) -> np.ndarray:
  """[frames + 1] float64: 0 at the onset (n = 0) rising as a raised cosine to 1 at the apex (n = frames)."""
  if frames < 1:
    raise ValueError(f"the rise must last at least 1 frame, got {frames}")
  n = np.arange(frames + 1, dtype=np.float64)
  return 0.5 * (1.0 - np.cos(np.pi * n / frames))


def bandpass(x: np.ndarray, fps: float, reading: str, band: Sequence[float] = PAPER_BAND) -> np.ndarray:
  """[T] -> [T]: the temporal band-pass of ``reading`` (see READINGS), state from x[0], by mer_jax.evm.filters."""
  xt = jnp.asarray(np.asarray(x, np.float32)[:, None])
  if reading == "hz_butterworth":
    y = filters.butterworth_bandpass(xt, fps, band)
  elif reading == "hz_iir":
    y = filters.iir_bandpass(xt, fps, band)
  elif reading == "mit_rates":
    y = filters.iir_bandpass(xt, fps, band, rates=(band[1], band[0]))  # (r_hi, r_lo) = (r1, r2)
  else:
    raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
  return np.asarray(y, np.float64)[:, 0]


def apex_gain(reading: str, rise_s: float, fps: float, band: Sequence[float] = PAPER_BAND) -> float:
  """Band-pass output at the apex / (x(apex) - x(onset)) for a raised-cosine rise lasting ``rise_s`` seconds."""
  frames = int(round(rise_s * fps))
  x = raised_cosine_rise(frames)
  return float(bandpass(x, fps, reading, band)[-1] / (x[-1] - x[0]))


def step_gain(reading: str, frames: int, fps: float, band: Sequence[float] = PAPER_BAND) -> float:
  """Output ``frames`` frames after the onset for a unit step right after it (x[0] = 0, x[n >= 1] = 1).

  The figures of docs/evm.md "Effective gain" and the README (Butterworth 0.1-0.4 Hz at 200 fps: 0.158, 0.356,
  0.445 at 20, 60, 100 frames).
  """
  x = np.ones(frames + 1)
  x[0] = 0.0
  return float(bandpass(x, fps, reading, band)[-1])


def apex_gain_table(
  band: Sequence[float] = PAPER_BAND,
  fps_values: Sequence[float] = FPS_VALUES,
  rise_seconds: Sequence[float] = RISE_SECONDS,
) -> list[dict]:
  """One row per (fps, onset-to-apex time): {"fps", "rise_s", "frames", <reading>: gain for each reading}."""
  rows = []
  for fps in fps_values:
    for rise in rise_seconds:
      row = {"fps": float(fps), "rise_s": float(rise), "frames": int(round(rise * fps))}
      row.update({r: apex_gain(r, rise, fps, band) for r in READINGS})
      rows.append(row)
  return rows


def table_markdown(rows: Sequence[dict], alpha: float = 15.0, band: Sequence[float] = PAPER_BAND) -> str:
  """The apex-gain table (gain g and the magnification 1 + alpha g of the fully amplified levels) as markdown."""
  lines = [
    f"| fps | onset-to-apex | frames | Hz, Butterworth {band[0]:g}-{band[1]:g} Hz | Hz, IIR | "
    f"MIT rates ({band[0]:g}, {band[1]:g}) (band in Hz) | 1 + {alpha:g} g: Butterworth / MIT |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lo, hi = filters.iir_cutoffs_hz(band, r["fps"])
    lines.append(
      f"| {r['fps']:g} | {r['rise_s']:g} s | {r['frames']} | {r['hz_butterworth']:.3f} | "
      f"{r['hz_iir']:.3f} | {r['mit_rates']:.3f} ({lo:.1f}-{hi:.1f} Hz) | "
      f"{1 + alpha * r['hz_butterworth']:.2f} / {1 + alpha * r['mit_rates']:.2f} |"
    )
  return "\n".join(lines)


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(p) for p in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.evm.gains", description=__doc__.split("\n\n")[0])
  ap.add_argument("--band", type=_floats, default=PAPER_BAND, help="LOW,HIGH: Hz, and (r2, r1) for mit_rates")
  ap.add_argument("--alpha", type=float, default=15.0, help="alpha for the 1 + alpha g column (paper: 15)")
  ap.add_argument("--fps", type=_floats, default=FPS_VALUES, help="frame rates (default 200,100)")
  ap.add_argument("--rise", type=_floats, default=RISE_SECONDS, help="onset-to-apex times in s")
  a = ap.parse_args(argv)
  if len(a.band) != 2 or not 0 < a.band[0] < a.band[1] < 1:
    ap.error(f"--band must be LOW,HIGH with 0 < LOW < HIGH < 1 (valid as Hz and as MIT rates), got {a.band}")
  print(table_markdown(apex_gain_table(a.band, a.fps, a.rise), a.alpha, a.band))
  steps = [(fps, n) for fps in a.fps for n in (20, 60, 100)]
  print()
  print("Unit step right after the onset (x[0] = 0, x[n >= 1] = 1), output n frames after the onset:")
  for fps, n in steps:
    print(
      f"  {fps:g} fps, n = {n:3d} ({n / fps:.2f} s): "
      + ", ".join(f"{r} {step_gain(r, n, fps, a.band):.3f}" for r in READINGS)
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
