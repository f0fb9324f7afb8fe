"""Temporal band-pass filters along axis 0 (time) of [T, ...] arrays.

* ``ideal``: keep the rFFT bins whose frequency k * fps / T lies in [f_lo, f_hi] (both ends included). Working on
  the one-sided rFFT of a real signal and inverting with irfft is the *symmetric* mask: an in-band sinusoid keeps
  its full amplitude. (The MIT code masked only positive frequencies of a full FFT and took the real part, which
  halves in-band signals; ``mit_compatible=True`` reproduces that, with its strict inequalities.)
* ``butterworth``: first-order Butterworth band = low-pass(f_hi) - low-pass(f_lo), cut-offs normalised by the
  Nyquist frequency fps / 2 as in scipy.signal.butter (the MIT code divided by fps; ``mit_compatible=True``).
* ``iir``: two-rate exponential moving averages, y = ema(r_hi) - ema(r_lo), with r = 1 - exp(-2 pi f / fps)
  (the RC low-pass whose -3 dB cut-off is f), unless explicit rates are given (the MIT IIR variant takes the
  per-frame rates r1 > r2 directly; ``band_units="mit_rates"`` in mer_jax.evm.magnify).

The recursive filters start in the steady state of frame 0 (both low-passes equal x[0]), as the MIT code's
Butterworth and IIR variants do (lowpass1 = lowpass2 = the first frame's pyramid), so the output at frame 0 is
exactly 0 and a static clip stays exactly static: the filters measure change *since the first frame*
(onset-referenced).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

FILTERS = ("ideal", "butterworth", "iir")


def ideal_bin_gains(
  num_frames: int, fps: float, band: Sequence[float], mit_compatible: bool = False
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (bins, gains): the rFFT bin indices in the passband and their gains (1.0; MIT mode 0.5/1.0)."""
  lo, hi = float(band[0]), float(band[1])
  k = np.arange(num_frames // 2 + 1)
  freq = k * float(fps) / num_frames
  if mit_compatible:
    keep = (freq > lo) & (freq < hi)
  else:
    # a tiny tolerance so that a band edge given as k * fps / T (in decimal) includes that bin
    eps = 1e-9 * max(1.0, abs(fps))
    keep = (freq >= lo - eps) & (freq <= hi + eps)
  bins = k[keep]
  gains = np.ones(bins.shape, np.float64)
  if mit_compatible:
    real_bin = (bins == 0) | ((num_frames % 2 == 0) & (bins == num_frames // 2))
    gains = np.where(real_bin, 1.0, 0.5)
  return bins, gains


def ideal_bandpass(
  x: jnp.ndarray, fps: float, band: Sequence[float], mit_compatible: bool = False, axis: int = 0
) -> jnp.ndarray:
  """[T, ...] -> [T, ...]: ideal (FFT mask) band-pass along time (``axis``, default 0).

  An empty passband gives zeros."""
  axis = axis % x.ndim
  t = x.shape[axis]
  bins, gains = ideal_bin_gains(t, fps, band, mit_compatible)
  mask = np.zeros(t // 2 + 1, np.float32)
  mask[bins] = gains
  spec = jnp.fft.rfft(x, axis=axis)
  spec = spec * jnp.asarray(mask).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
  return jnp.fft.irfft(spec, n=t, axis=axis).astype(x.dtype)


def ideal_projection(num_frames: int, bins: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(Q [T, r] orthonormal, column gains [r]) such that Q diag(g) Q^T is the ideal band-pass along time.

  The columns are the cosine and sine of each in-band rFFT bin (one column for DC and Nyquist), so
  Q diag(g) Q^T x == irfft(mask * rfft(x)) with mask[bins] = gains.
  """
  t = np.arange(num_frames)
  cols, col_gains = [], []
  for k, g in zip(bins, gains):
    theta = 2.0 * np.pi * k * t / num_frames
    if k == 0 or 2 * k == num_frames:
      cols.append(np.cos(theta) / np.sqrt(num_frames))
      col_gains.append(g)
    else:
      cols += [np.cos(theta) * np.sqrt(2.0 / num_frames), np.sin(theta) * np.sqrt(2.0 / num_frames)]
      col_gains += [g, g]
  return np.stack(cols, axis=1), np.asarray(col_gains)


def butter1_lowpass(cutoff: float, fps: float, mit_compatible: bool = False) -> tuple[float, float, float]:
  """First-order Butterworth low-pass (b0, b1, a1) for y[t] = b0 x[t] + b1 x[t-1] - a1 y[t-1].

  Same as scipy.signal.butter(1, cutoff / (fps / 2)) (bilinear transform with pre-warping);
  MIT mode normalises by fps instead of fps / 2.
  """
  wn = cutoff / fps if mit_compatible else cutoff / (fps / 2.0)
  if not 0.0 < wn < 1.0:
    raise ValueError(f"normalised cut-off {wn:g} is outside (0, 1)")
  k = math.tan(math.pi * wn / 2.0)
  b = k / (1.0 + k)
  return b, b, (k - 1.0) / (k + 1.0)


def iir_rates(band: Sequence[float], fps: float) -> tuple[float, float]:
  """(r_hi, r_lo) of the two-rate IIR for a band in Hz: r = 1 - exp(-2 pi f / fps)."""
  return tuple(1.0 - math.exp(-2.0 * math.pi * float(f) / fps) for f in (band[1], band[0]))


def iir_cutoffs_hz(rates: Sequence[float], fps: float) -> tuple[float, ...]:
  """The -3 dB cut-offs in Hz of per-frame EMA rates at ``fps``: f = -fps ln(1 - r) / (2 pi) (inverse of iir_rates).

  e.g. the MIT rates (0.1, 0.4) at 200 fps -> (3.35, 16.3) Hz, at 100 fps -> (1.68, 8.13) Hz.
  """
  return tuple(-float(fps) * math.log(1.0 - float(r)) / (2.0 * math.pi) for r in rates)


def _two_lowpass_difference(x: jnp.ndarray, step_hi, step_lo) -> jnp.ndarray:
  """lax.scan over time; both states start at x[0]; returns lowpass_hi - lowpass_lo, [T, ...]."""

  def body(carry, xt):
    y_hi, y_lo, x_prev = carry
    y_hi = step_hi(y_hi, xt, x_prev)
    y_lo = step_lo(y_lo, xt, x_prev)
    return (y_hi, y_lo, xt), y_hi - y_lo

  x0 = x[0]
  _, out = lax.scan(body, (x0, x0, x0), x[1:])
  return jnp.concatenate([jnp.zeros_like(x[:1]), out], axis=0)


def butterworth_bandpass(
  x: jnp.ndarray, fps: float, band: Sequence[float], mit_compatible: bool = False
) -> jnp.ndarray:
  """[T, ...] -> [T, ...]: first-order Butterworth band-pass (difference of two low-passes), state from frame 0."""
  bh0, bh1, ah = butter1_lowpass(band[1], fps, mit_compatible)
  if band[0] > 0:
    bl0, bl1, al = butter1_lowpass(band[0], fps, mit_compatible)
  else:  # f_lo = 0: the low-pass stays at x[0]
    bl0, bl1, al = 0.0, 0.0, -1.0
  return _two_lowpass_difference(
    x, lambda y, xt, xp: bh0 * xt + bh1 * xp - ah * y, lambda y, xt, xp: bl0 * xt + bl1 * xp - al * y
  )


def iir_bandpass(
  x: jnp.ndarray, fps: float, band: Sequence[float], rates: Sequence[float] | None = None
) -> jnp.ndarray:
  """[T, ...] -> [T, ...]: two-rate IIR, ema(r_hi) - ema(r_lo), state from frame 0."""
  r_hi, r_lo = iir_rates(band, fps) if rates is None else (float(rates[0]), float(rates[1]))
  return _two_lowpass_difference(x, lambda y, xt, xp: y + r_hi * (xt - y), lambda y, xt, xp: y + r_lo * (xt - y))


def nearest_usable_band(num_frames: int, fps: float, band: Sequence[float]) -> tuple[float, float]:
  """A band around the non-DC rFFT bin nearest to ``band`` (half a bin either side), for error messages."""
  df = fps / num_frames
  centre = 0.5 * (band[0] + band[1])
  k = int(min(max(round(centre / df), 1), num_frames // 2))
  return (k - 0.5) * df, (k + 0.5) * df


def min_frames_for_band(fps: float, band: Sequence[float], limit: int = 1_000_000) -> int | None:
  """Smallest clip length T whose rFFT has a non-DC bin in ``band`` (None if none up to ``limit``)."""
  if band[1] <= 0:
    return None
  t = max(2, int(math.floor(fps / band[1])))
  while t <= limit:
    if np.any(ideal_bin_gains(t, fps, band)[0] > 0):
      return t
    t += 1
  return None
