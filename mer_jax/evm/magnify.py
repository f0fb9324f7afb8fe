"""Eulerian Video Magnification (Wu et al. 2012) as pure, jittable jax.numpy.

Paper settings (Gan et al., Sec. 3.2 / 4.1.2): alpha = 15, band "0.1-0.4". Two readings of that band
(``band_units``): "hz" (default), a temporal band in hertz (see docs/evm.md for the frequency-resolution trap:
short clips have no FFT bin in that band), and "mit_rates", the per-frame low-pass rates (r2, r1) of the MIT
reference code's IIR variant (amplify_spatial_lpyr_temporal_iir), which runs that program exactly.

How it is computed (exactly the reference algorithm, reorganised because every stage is linear):
  out = clip(x + A^-1 diag(1, ca, ca) A . S(F(x)), 0, 1)
where A is RGB->YIQ, ca the chrominance attenuation, F the temporal band-pass (per pixel) and S the spatial
operator (Laplacian: build pyramid, scale band l by alpha_l, collapse; Gaussian: down-sample ``levels`` times,
times alpha, up-sample). F, S and A act on different axes and are linear, so they commute: the YIQ
conversion becomes one 3x3 matrix on the amplified change; for the ideal filter S runs on the few in-band
cos/sin coefficients (2 per FFT bin) instead of all T frames; and the unamplified finest levels are taken
out as S(x) = up^k(S_k(down^k(x))), so the temporal work can run on a down-sampled clip. All paths give the
MIT result up to float32 rounding (tested against a literal float64 NumPy implementation in tests/test_evm.py).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mer_jax.errors import ConfigError, EVMError
from mer_jax.evm import color, filters, pyramids

PYRAMIDS = ("laplacian", "gaussian")
ON_EMPTY_BAND = ("error", "fallback")
BAND_UNITS = ("hz", "mit_rates")
IDEAL_METHODS = ("auto", "projection", "fft", "time")
FALLBACK_FILTER = "butterworth"
STATIC_ARGNAMES = (
  "fps",
  "alpha",
  "freq_band",
  "pyramid",
  "levels",
  "lambda_c",
  "chrom_attenuation",
  "temporal_filter",
  "on_empty_band",
  "mit_compatible",
  "iir_rates",
  "exaggeration",
  "chunk_bytes",
  "ideal_method",
  "band_units",
)
DEFAULT_CHUNK_BYTES = 256 * 2**20
REDUCE_MIN_RATIO = 5  # ideal projection with r coefficients: full-resolution pass while 5 r < T
MAX_PROJECTION_SIZE = 1 << 18  # ideal filter: matrix-product projection while T x r is at most this, else FFT


class EVMWarning(UserWarning):
  """Emitted when magnification falls back to another filter (``on_empty_band="fallback"``)."""


def motion_level_alphas(
  height: int,
  width: int,
  levels: int,
  alpha: float,
  lambda_c: float,
  exaggeration: float = 2.0,
  clip_negative: bool = True,
) -> np.ndarray:
  """Per-level amplification of the Laplacian (motion) pipeline, [levels + 1], finest first, residual last.

  delta = lambda_c / 8 / (1 + alpha); lambda = sqrt(H^2 + W^2) / 3 at the coarsest level (the residual),
  halving per finer level; alpha_l = min(alpha, (lambda / delta / 8 - 1) * exaggeration), clipped at 0 where
  lambda < lambda_c / (1 + alpha) (tiny frames or a large lambda_c, where the MIT code multiplies by the
  negative value and inverts the motion; ``clip_negative=False`` does that too); the finest band and the
  residual get 0.
  """
  lam = math.sqrt(height**2 + width**2) / 3.0
  delta = lambda_c / 8.0 / (1.0 + alpha)
  out = np.zeros(levels + 1, np.float64)
  for lev in range(levels, -1, -1):
    if 0 < lev < levels:
      cur = (lam / delta / 8.0 - 1.0) * exaggeration
      out[lev] = min(max(cur, 0.0) if clip_negative else cur, alpha)
    lam /= 2.0
  return out


def chroma_matrix(channels: int, chrom_attenuation: float) -> np.ndarray:
  """[C, C] matrix applied to the amplified band-pass signal: A^-1 diag(1, ca, ca) A for RGB, [[1]] for grey."""
  if channels == 1:
    return np.ones((1, 1))
  return color.YIQ_TO_RGB @ np.diag([1.0, chrom_attenuation, chrom_attenuation]) @ color.RGB_TO_YIQ


def _laplacian_operator(x: jnp.ndarray, levels: int, level_alphas: np.ndarray) -> jnp.ndarray:
  """collapse(alpha_l * L_l(x)) for [N, H, W, C], with one up-sampling per level.

  With L_l = g_l - up(g_{l+1}) and a linear ``up``, the collapse out_l = up(out_{l+1}) + a_l L_l equals
  a_l g_l + up(out_{l+1} - a_l g_{l+1}): the Laplacian bands are never formed.
  """
  g = pyramids.build_gaussian(x, levels)
  a = [float(v) for v in level_alphas]
  out = a[levels] * g[levels] if a[levels] else None
  for lev in range(levels - 1, -1, -1):
    low = out if not a[lev] else (-a[lev] * g[lev + 1] if out is None else out - a[lev] * g[lev + 1])
    out = None if low is None else pyramids.up(low, g[lev].shape[1:3])
    if a[lev]:
      out = a[lev] * g[lev] if out is None else out + a[lev] * g[lev]
  return jnp.zeros_like(x) if out is None else out


def _mix_channels(x: jnp.ndarray, m: np.ndarray) -> jnp.ndarray:
  """y[..., i] = sum_j m[i, j] x[..., j] for a small constant matrix m ([..., C] -> [..., C])."""
  chans = [x[..., j] for j in range(x.shape[-1])]
  return jnp.stack([sum(float(m[i, j]) * chans[j] for j in range(len(chans))) for i in range(m.shape[0])], -1)


def _map_frames(fn, x: jnp.ndarray, chunk_bytes: int | None, frame_bytes: int | None = None) -> jnp.ndarray:
  """Applies a per-frame operator ``fn`` ([N, ...] -> [N, ...]) in chunks of frames to bound memory.

  frame_bytes: the larger of one input / output frame (default: one input frame).
  """
  n = x.shape[0]
  if frame_bytes is None:
    frame_bytes = x.dtype.itemsize * math.prod(x.shape[1:])
  per_frame = 8 * frame_bytes  # pyramid temporaries ~ 8 frames
  chunk = n if chunk_bytes is None else max(1, min(n, chunk_bytes // per_frame))
  if chunk >= n:
    return fn(x)
  num = -(-n // chunk)
  chunk = -(-n // num)  # balanced: pads fewer than ``num`` frames
  xp = jnp.pad(x, [(0, num * chunk - n)] + [(0, 0)] * (x.ndim - 1))
  y = lax.map(fn, xp.reshape((num, chunk) + x.shape[1:]))
  return y.reshape((num * chunk,) + y.shape[2:])[:n]


def _check_options(
  alpha,
  freq_band,
  pyramid,
  levels,
  lambda_c,
  chrom_attenuation,
  temporal_filter,
  on_empty_band,
  ideal_method="auto",
  band_units="hz",
  iir_rates=None,
) -> tuple[float, float]:
  if pyramid not in PYRAMIDS:
    raise ConfigError(f"evm.pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
  if temporal_filter not in filters.FILTERS:
    raise ConfigError(f"evm.temporal_filter must be one of {filters.FILTERS}, got {temporal_filter!r}")
  if ideal_method not in IDEAL_METHODS:
    raise ConfigError(f"ideal_method must be one of {IDEAL_METHODS}, got {ideal_method!r}")
  if on_empty_band not in ON_EMPTY_BAND:
    raise ConfigError(f"evm.on_empty_band must be one of {ON_EMPTY_BAND}, got {on_empty_band!r}")
  if band_units not in BAND_UNITS:
    raise ConfigError(f"evm.band_units must be one of {BAND_UNITS}, got {band_units!r}")
  what = "two frequencies in Hz" if band_units == "hz" else "two per-frame rates"
  try:
    lo, hi = (float(f) for f in freq_band)
  except (TypeError, ValueError):
    raise ConfigError(f"evm.freq_band must be {what} (low, high), got {freq_band!r}") from None
  if band_units == "mit_rates":
    if temporal_filter != "iir":
      raise ConfigError(
        f"evm.band_units='mit_rates' reads evm.freq_band as the per-frame rates of the MIT "
        f"two-rate IIR filter, but evm.temporal_filter={temporal_filter!r}: set "
        f"evm.temporal_filter='iir', or evm.band_units='hz' to read the band in Hz"
      )
    if iir_rates is not None:
      raise ConfigError(
        f"iir_rates={tuple(iir_rates)!r} contradicts evm.band_units='mit_rates', which takes "
        f"the rates from evm.freq_band (r2, r1) = {tuple(freq_band)!r}: pass only one of them"
      )
    if not 0.0 < lo < hi < 1.0:
      raise ConfigError(
        f"evm.freq_band={tuple(freq_band)!r} with evm.band_units='mit_rates' must be per-frame "
        f"rates (r2, r1) with 0 < r2 < r1 < 1, low first (the MIT example: (0.05, 0.4))"
      )
  elif not 0.0 <= lo < hi:
    raise ConfigError(f"evm.freq_band must satisfy 0 <= low < high, got {freq_band!r}")
  if not alpha >= 0:
    raise ConfigError(f"evm.alpha must be >= 0, got {alpha!r}")
  if not lambda_c > 0:
    raise ConfigError(f"evm.lambda_c must be > 0, got {lambda_c!r}")
  if not chrom_attenuation >= 0:
    raise ConfigError(f"evm.chrom_attenuation must be >= 0, got {chrom_attenuation!r}")
  if not (levels == "auto" or (isinstance(levels, numbers.Integral) and not isinstance(levels, bool))):
    raise ConfigError(f"evm.levels must be 'auto' or an integer, got {levels!r}")
  return lo, hi


def empty_band_message(num_frames: int, fps: float, band: Sequence[float]) -> str:
  """The explanation shown when the ideal filter has no rFFT bin in ``band``."""
  df = fps / num_frames
  near = filters.nearest_usable_band(num_frames, fps, band)
  need = filters.min_frames_for_band(fps, band)
  need_txt = f", or a clip of at least {need} frames ({need / fps:.2f} s) for this band" if need else ""
  return (
    f"empty passband: the ideal temporal filter has no frequency bin in freq_band=({band[0]:g}, "
    f"{band[1]:g}) Hz for a clip of {num_frames} frames ({num_frames / fps:.3f} s) at fps={fps:g} "
    f"(bins are every fps/T = {df:.4g} Hz), so it would amplify nothing. Use the nearest usable band "
    f"({near[0]:.4g}, {near[1]:.4g}) Hz{need_txt}, or temporal_filter='butterworth'/'iir' "
    f"(onset-referenced), or on_empty_band='fallback'."
  )


def _resolve(
  shape: tuple[int, ...],
  fps,
  alpha,
  freq_band,
  pyramid,
  levels,
  lambda_c,
  chrom_attenuation,
  temporal_filter,
  on_empty_band,
  mit_compatible,
  iir_rates,
  exaggeration,
  chunk_bytes,
  ideal_method,
  band_units="hz",
) -> dict:
  """Validates the options for clips of ``shape`` = (T, H, W, C); returns the static arguments of the core.

  Runs in Python on every call (errors, and the fallback warning, which names the caller of magnify /
  magnify_batch).
  """
  if isinstance(fps, jax.core.Tracer):
    raise TypeError("fps must be a Python number (mark it static under jax.jit: static_argnames=('fps', ...))")
  lo, hi = _check_options(
    alpha,
    freq_band,
    pyramid,
    levels,
    lambda_c,
    chrom_attenuation,
    temporal_filter,
    on_empty_band,
    ideal_method,
    band_units,
    iir_rates,
  )
  band = (lo, hi)
  if band_units == "mit_rates":  # the MIT IIR: lowpass1 at rate r1 = high, lowpass2 at r2 = low, no fps involved
    iir_rates = (hi, lo)
  fps = float(fps)
  if not fps > 0:
    raise EVMError(f"fps must be > 0, got {fps!r}")
  t, h, w, c = shape
  if t < 3:
    raise EVMError(f"clip too short: {t} frames; the temporal filters need at least 3 frames")
  try:
    n_levels = pyramids.check_levels(h, w, levels, pyramid)
  except ValueError as e:
    raise EVMError(str(e)) from None

  if temporal_filter == "ideal":
    bins, gains = filters.ideal_bin_gains(t, fps, band, mit_compatible)
    if bins.size == 0:
      msg = empty_band_message(t, fps, band)
      if on_empty_band == "error":
        raise EVMError(msg)
      warnings.warn(
        EVMWarning(
          f"{msg} Falling back to temporal_filter='{FALLBACK_FILTER}' on the same band "
          "(state initialised at frame 0: amplifies the change since the first frame)."
        ),
        stacklevel=3,
      )
      temporal_filter = FALLBACK_FILTER
  nyquist = fps if mit_compatible and temporal_filter == "butterworth" else fps / 2.0
  if temporal_filter != "ideal" and not hi < nyquist and not (temporal_filter == "iir" and iir_rates):
    raise EVMError(
      f"freq_band high edge {hi:g} Hz must be below {nyquist:g} Hz for the {temporal_filter} filter at fps={fps:g}"
    )
  return dict(
    fps=fps,
    alpha=float(alpha),
    band=band,
    pyramid=pyramid,
    n_levels=n_levels,
    lambda_c=float(lambda_c),
    chrom_attenuation=float(chrom_attenuation),
    temporal_filter=temporal_filter,
    mit_compatible=bool(mit_compatible),
    iir_rates=None if iir_rates is None else tuple(float(r) for r in iir_rates),
    exaggeration=float(exaggeration),
    chunk_bytes=chunk_bytes,
    ideal_method=ideal_method,
  )


def magnify(
  video: jnp.ndarray,
  fps: float,
  *,
  alpha: float = 15.0,
  freq_band: Sequence[float] = (0.1, 0.4),
  pyramid: str = "laplacian",
  levels: Any = "auto",
  lambda_c: float = 16.0,
  chrom_attenuation: float = 0.1,
  temporal_filter: str = "ideal",
  on_empty_band: str = "error",
  mit_compatible: bool = False,
  iir_rates: tuple[float, float] | None = None,
  exaggeration: float = 2.0,
  chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
  ideal_method: str = "auto",
  band_units: str = "hz",
) -> jnp.ndarray:
  """Magnifies the motion (``pyramid="laplacian"``) or colour (``"gaussian"``) changes of one clip.

  Args:
    video: float32 [T, H, W, C] in [0, 1], C = 3 (RGB, processed in YIQ) or C = 1 (grey, e.g. SAMM).
    fps: frame rate in Hz (a Python number: static under jit).
    alpha: amplification factor (paper: 15).
    freq_band: (low, high) temporal passband in Hz (paper: 0.1-0.4), or with ``band_units="mit_rates"`` the
      per-frame rates (r2, r1) of the MIT IIR's two low-passes, 0 < r2 < r1 < 1.
    pyramid: "laplacian" (motion: per-level alpha limited by ``lambda_c``) or "gaussian" (colour:
      down-sample ``levels`` times, amplify by alpha, up-sample).
    levels: number of pyramid halvings, or "auto" (laplacian: the MIT code's maxPyrHt, halvings n -> floor(n/2)
      while both sides >= 5 px, see pyramids.auto_levels; gaussian: min(4, that)).
    lambda_c: spatial cut-off wavelength in px (laplacian only).
    chrom_attenuation: I and Q are amplified ``chrom_attenuation`` times less than Y (ignored for C = 1).
    temporal_filter: "ideal" (FFT mask), "butterworth" (first-order band) or "iir" (two-rate EMA); the last
      two are initialised at frame 0 (onset-referenced).
    on_empty_band: "error" raises EVMError when the ideal filter has no bin in the band; "fallback" warns
      (EVMWarning) and uses the Butterworth filter on the same band instead.
    mit_compatible: reproduce the MIT code's ideal half-gain mask, fs-normalised Butterworth cut-offs and
      negative per-level alphas (motion inverted where lambda < lambda_c / (1 + alpha)).
    iir_rates: explicit (r_hi, r_lo) for the IIR filter instead of deriving them from ``freq_band``.
    exaggeration: factor of the per-level alphas (MIT: 2).
    chunk_bytes: process the spatial pyramid in chunks of frames of about this many bytes of input
      (None: all at once).
    ideal_method: how the ideal filter is evaluated, all equal up to float rounding: "projection" (matrix
      products with the in-band cos/sin basis), "fft" (rfft, spatial pass on the in-band coefficients, irfft),
      "time" (band-pass all T frames, then the spatial pass); "auto" picks the cheapest.
    band_units: how ``freq_band`` is read. "hz": a band in hertz for ``temporal_filter``. "mit_rates": the
      MIT reference code's amplify_spatial_lpyr_temporal_iir(alpha, lambda_c, r1, r2, chromAttenuation) with
      (r2, r1) = freq_band: lowpass1/2 = exponential averages at rates r1/r2 started from the first frame,
      filtered = lowpass1 - lowpass2 (no conversion through fps, so its band in Hz scales with the frame
      rate: ~3.4-16 Hz at 200 fps for (0.1, 0.4)); needs ``temporal_filter="iir"`` (ConfigError otherwise)
      and no ``iir_rates``. Everything else is the same pipeline (see docs/evm.md, "Two readings").

  Returns:
    float32 [T, H, W, C] in [0, 1].

  The computation is compiled once per clip shape and settings (validation runs in Python first, so errors
  and the fallback warning appear on every call). Under an outer ``jax.jit`` every argument except ``video``
  must be static (see :data:`STATIC_ARGNAMES` and :func:`magnify_jit`); it vmaps over a batch of
  equal-length clips, but :func:`magnify_batch` is faster for that.
  """
  video = jnp.asarray(video, jnp.float32)
  if video.ndim != 4 or video.shape[-1] not in (1, 3):
    raise EVMError(f"video must be [T, H, W, C] with C = 1 or 3, got shape {tuple(video.shape)}")
  core = _resolve(
    video.shape,
    fps,
    alpha,
    freq_band,
    pyramid,
    levels,
    lambda_c,
    chrom_attenuation,
    temporal_filter,
    on_empty_band,
    mit_compatible,
    iir_rates,
    exaggeration,
    chunk_bytes,
    ideal_method,
    band_units,
  )
  return _magnify_core(video, **core)


def _time_matmul(m: np.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """y[b, i] = sum_t m[i, t] x[b, t] for a constant [S, T] matrix: [B, T, ...] -> [B, S, ...].

  One matrix product per clip on the [T, pixels] view of x, written as a batched dot_general so that
  XLA:CPU needs no transpose of x or y (an einsum "st,bthwc->bshwc" lowered to a product over the
  transposed [pixels, T] layout plus copies: ~2x slower, measured).
  """
  b, t = x.shape[:2]
  mb = jnp.broadcast_to(jnp.asarray(m, jnp.float32), (b,) + m.shape)
  y = lax.dot_general(mb, x.reshape(b, t, -1), (((2,), (1,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)
  return y.reshape((b, m.shape[0]) + x.shape[2:])


def _frames(x: jnp.ndarray) -> jnp.ndarray:
  """[B, T, ...] -> [B * T, ...] (free: a reshape of contiguous clips)."""
  return x.reshape((-1,) + x.shape[2:])


@functools.partial(
  jax.jit,
  static_argnames=(
    "fps",
    "alpha",
    "band",
    "pyramid",
    "n_levels",
    "lambda_c",
    "chrom_attenuation",
    "temporal_filter",
    "mit_compatible",
    "iir_rates",
    "exaggeration",
    "chunk_bytes",
    "ideal_method",
    "reduce",
  ),
)
def _magnify_core(
  videos,
  *,
  fps,
  alpha,
  band,
  pyramid,
  n_levels,
  lambda_c,
  chrom_attenuation,
  temporal_filter,
  mit_compatible,
  iir_rates,
  exaggeration,
  chunk_bytes,
  ideal_method,
  reduce=None,
):
  """The computation of :func:`magnify` on validated, static settings, natively batched over clips.

  videos: float32 [B, T, H, W, C] -> same, or one clip [T, H, W, C] -> same. The spatial operators act per
  frame, so they run on the B * T frames of all clips at once ([B * T, H, W, C], a free reshape); the temporal
  ones act along axis 1.

  The finest levels that are not amplified (Laplacian: the finest band; Gaussian: all ``levels``) only
  down-sample on the way in and up-sample on the way out, and up-sampling is linear, so
  S(x) = up^k(S_k(down^k(x))). All frames are down-sampled ``k`` times, every temporal and remaining
  spatial step runs at 1/4^k of the pixels, and the change is up-sampled back once.
  """
  if videos.ndim == 4:  # one clip: the same program with B = 1 (the [None] / [0] are free inside the jit)
    return _magnify_core(
      videos[None],
      fps=fps,
      alpha=alpha,
      band=band,
      pyramid=pyramid,
      n_levels=n_levels,
      lambda_c=lambda_c,
      chrom_attenuation=chrom_attenuation,
      temporal_filter=temporal_filter,
      mit_compatible=mit_compatible,
      iir_rates=iir_rates,
      exaggeration=exaggeration,
      chunk_bytes=chunk_bytes,
      ideal_method=ideal_method,
      reduce=reduce,
    )[0]
  b, t, h, w, c = videos.shape
  shapes = pyramids.level_shapes(h, w, n_levels)
  mix = chroma_matrix(c, chrom_attenuation)
  if pyramid == "laplacian":
    level_alphas = motion_level_alphas(h, w, n_levels, alpha, lambda_c, exaggeration, clip_negative=not mit_compatible)
    nonzero = np.flatnonzero(level_alphas)
    if nonzero.size == 0:
      return jnp.clip(videos, 0.0, 1.0)
    skip = int(nonzero[0])
  else:
    skip = n_levels
  if temporal_filter == "ideal":
    bins, gains = filters.ideal_bin_gains(t, fps, band, mit_compatible)
    basis, col_gains = filters.ideal_projection(t, bins, gains)
    if ideal_method == "auto":
      r = basis.shape[1]
      ideal_method = "projection" if r < t and r * t <= MAX_PROJECTION_SIZE else "fft" if 2 * bins.size < t else "time"
  if reduce is None:
    # Full resolution is cheaper only for a few in-band coefficients (measured on CPU, see docs/evm.md).
    reduce = not (temporal_filter == "ideal" and ideal_method == "projection" and basis.shape[1] * REDUCE_MIN_RATIO < t)
  if not reduce:
    skip = 0
  if pyramid == "laplacian":
    operator = lambda x: _mix_channels(_laplacian_operator(x, n_levels - skip, level_alphas[skip:]), mix)
  elif skip == n_levels:
    operator = lambda x: _mix_channels(x, alpha * mix)
  else:
    operator = lambda x: _mix_channels(alpha * pyramids.gaussian_down_up(x, n_levels - skip), mix)
  # [N, h_k, w_k, C] -> amplified change at that size, RGB (or grey); the 3x3 mix written out so XLA fuses it

  def per_frame(fn, x, frame_bytes=None):  # fn: [N, ...] -> [N, ...] on the frames of [B, T', ...]
    y = _map_frames(fn, _frames(x), chunk_bytes, frame_bytes)
    return y.reshape(x.shape[:2] + y.shape[1:])

  def down_k(x):
    for _ in range(skip):
      x = pyramids.down(x)
    return x

  def up_k(x):
    for shape in reversed(shapes[:skip]):
      x = pyramids.up(x, shape)
    return x

  frame_bytes = 4 * h * w * c
  small = per_frame(down_k, videos, frame_bytes) if skip else videos  # [B, T, h_k, w_k, C]
  if temporal_filter == "ideal" and ideal_method == "projection":
    # the spatial operator on the r = basis.shape[1] in-band cos/sin coefficients; matrix products along time
    coeffs = _time_matmul(basis.T * col_gains[:, None], small)  # [B, r, h_k, w_k, C]
    coeffs = per_frame(operator, coeffs)
    delta = _time_matmul(basis, coeffs)  # [B, T, h_k, w_k, C]
  elif temporal_filter == "ideal" and ideal_method == "fft":
    # the spatial operator on the in-band Fourier coefficients only (real and imaginary parts as 2k frames)
    k = bins.size
    spec = jnp.take(jnp.fft.rfft(small, axis=1), jnp.asarray(bins), axis=1)
    spec = spec * jnp.asarray(gains, jnp.float32).reshape((k, 1, 1, 1))
    coeffs = per_frame(operator, jnp.concatenate([spec.real, spec.imag], axis=1))
    full = (
      jnp.zeros((b, t // 2 + 1) + small.shape[2:], spec.dtype)
      .at[:, jnp.asarray(bins)]
      .set(lax.complex(coeffs[:, :k], coeffs[:, k:]))
    )
    delta = jnp.fft.irfft(full, n=t, axis=1)
  else:
    if temporal_filter == "ideal":
      filtered = filters.ideal_bandpass(small, fps, band, mit_compatible, axis=1)
    else:
      # the recursive filters scan over a leading time axis: [B, T, ...] -> [T, B, ...] (free for B = 1)
      small_t = jnp.moveaxis(small, 1, 0)
      if temporal_filter == "butterworth":
        filtered = filters.butterworth_bandpass(small_t, fps, band, mit_compatible)
      else:
        filtered = filters.iir_bandpass(small_t, fps, band, iir_rates)
      filtered = jnp.moveaxis(filtered, 0, 1)
    delta = per_frame(operator, filtered)
  if skip:
    delta = per_frame(up_k, delta, frame_bytes)
  return jnp.clip(videos + delta, 0.0, 1.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=STATIC_ARGNAMES)
def magnify_jit(video: jnp.ndarray, fps: float, **options: Any) -> jnp.ndarray:
  """:func:`magnify` under ``jax.jit``: ``video`` traced, ``fps`` and every option static.

  Compiled once per clip shape and settings; validation errors and the fallback warning happen when a new
  combination is compiled (not on every call, unlike :func:`magnify`).

  Args:
    video: float32 [T, H, W, C] in [0, 1], C = 1 or 3.
    fps: frame rate in Hz.
    **options: :func:`magnify`'s keyword options (all in :data:`STATIC_ARGNAMES`).

  Returns:
    float32 [T, H, W, C] in [0, 1], as :func:`magnify`.
  """
  return magnify(video, fps, **options)


BATCH_MODES = ("native", "loop", "map", "vmap")
LOOP_GROUP_BYTES = 16 * 2**20  # "loop" mode: clips per step so that one step's input is at most this (>= 1 clip)


def magnify_batch(
  videos: jnp.ndarray, fps: float, vectorize: bool | str | None = None, donate: bool = False, **kwargs
) -> jnp.ndarray:
  """:func:`magnify` over equal-length clips, jitted: [B, T, H, W, C] -> [B, T, H, W, C].

  Same options (keywords) as :func:`magnify`, validated in Python on every call (errors, fallback warning);
  the result equals magnify per clip up to float rounding, in every mode.

  vectorize: how the clips are batched:
    "native": one program on the whole batch (the spatial passes on all B * T frames at once, the temporal
      ones along the time axis of each clip); the default on GPU/TPU (what vmap gives, without per-clip
      reshapes).
    "loop": groups of clips (about LOOP_GROUP_BYTES of input each) one after the other, each result written
      in place into the output; with ``donate=True`` the output reuses the input buffer. The default on CPU
      with ``donate=True``.
    "map" (or False): jax.lax.map over clips; the default on CPU without donation.
    "vmap" (or True): jax.vmap of magnify.
  donate: donate ``videos`` to the computation (it is deleted; pass a copy to keep it). On CPU this saves
    the fresh output allocation, whose first-touch page faults cost as much as the EVM itself for large
    batches (see docs/evm.md, Batches).
  """
  videos = jnp.asarray(videos, jnp.float32)
  if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
    raise EVMError(f"videos must be [B, T, H, W, C] with C = 1 or 3, got shape {tuple(videos.shape)}")
  mode = ("vmap" if vectorize else "map") if isinstance(vectorize, bool) else vectorize
  if mode is None:
    mode = "native" if jax.default_backend() != "cpu" else "loop" if donate else "map"
  if mode not in BATCH_MODES:
    raise ConfigError(f"vectorize must be one of {BATCH_MODES}, True, False or None, got {vectorize!r}")
  unknown = sorted(set(kwargs) - set(_MAGNIFY_DEFAULTS))
  if unknown:
    raise TypeError(f"magnify_batch() got unexpected keyword argument(s) {unknown}; it takes magnify's options")
  core = _resolve(videos.shape[1:], fps, **{**_MAGNIFY_DEFAULTS, **kwargs})
  clip_bytes = 4 * math.prod(videos.shape[1:])
  group = max(1, min(videos.shape[0], LOOP_GROUP_BYTES // clip_bytes))
  run = _batch_core_donated if donate else _batch_core
  return run(videos, core=tuple(sorted(core.items())), mode=mode, group=group)


def _batch(videos, *, core, mode, group):
  """[B, T, H, W, C] -> same, by ``mode`` (see magnify_batch); ``core`` the static settings as sorted items."""
  fn = functools.partial(_magnify_core, **dict(core))
  if mode == "native":
    return fn(videos)
  if mode == "vmap":
    return jax.vmap(fn)(videos)
  if mode == "map":
    return lax.map(fn, videos)
  b = videos.shape[0]
  steps = b // group

  def body(i, out):  # reads its clips from the carried output (still the input there) and overwrites them
    start = i * group
    return lax.dynamic_update_slice_in_dim(out, fn(lax.dynamic_slice_in_dim(out, start, group)), start, 0)

  out = lax.fori_loop(0, steps, body, videos)
  if steps * group < b:
    out = out.at[steps * group :].set(fn(out[steps * group :]))
  return out


_BATCH_STATIC = ("core", "mode", "group")
_batch_core = jax.jit(_batch, static_argnames=_BATCH_STATIC)
_batch_core_donated = jax.jit(_batch, static_argnames=_BATCH_STATIC, donate_argnums=0)


_MAGNIFY_DEFAULTS = {
  k: v.default for k, v in inspect.signature(magnify).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY
}


_CONFIG_KEYS = (
  "alpha",
  "freq_band",
  "pyramid",
  "levels",
  "lambda_c",
  "chrom_attenuation",
  "temporal_filter",
  "on_empty_band",
)
_OPTIONAL_CONFIG_KEYS = {"band_units": "hz"}  # read when present (config_defaults has it; older dicts may not)


def options_from_config(evm_cfg) -> dict:
  """The magnify() keyword arguments from the ``evm`` section of the config (mer_jax.config_defaults).

  Reads alpha, freq_band, pyramid, levels, lambda_c, chrom_attenuation, temporal_filter, on_empty_band,
  band_units (default "hz" when absent) and, when present, the optional mit_compatible. Raises ConfigError
  naming ``evm.<key>`` for a missing or bad value or a contradictory combination.
  """
  missing = [k for k in _CONFIG_KEYS if k not in evm_cfg]
  if missing:
    raise ConfigError(f"config section evm is missing key(s) {missing}")
  opts = {k: evm_cfg[k] for k in _CONFIG_KEYS}
  for key, default in _OPTIONAL_CONFIG_KEYS.items():
    opts[key] = evm_cfg[key] if key in evm_cfg else default
  for key in ("alpha", "lambda_c", "chrom_attenuation"):
    if isinstance(opts[key], bool) or not isinstance(opts[key], (int, float)):
      raise ConfigError(f"evm.{key} must be a number, got {opts[key]!r}")
    opts[key] = float(opts[key])
  what = "two frequencies in Hz" if opts["band_units"] != "mit_rates" else "two per-frame rates"
  try:
    opts["freq_band"] = tuple(float(f) for f in opts["freq_band"])
  except (TypeError, ValueError):
    raise ConfigError(f"evm.freq_band must be {what}, got {opts['freq_band']!r}") from None
  if len(opts["freq_band"]) != 2:
    raise ConfigError(f"evm.freq_band must be {what}, got {opts['freq_band']!r}")
  _check_options(**{k: opts[k] for k in _CONFIG_KEYS + tuple(_OPTIONAL_CONFIG_KEYS)})
  if "mit_compatible" in evm_cfg:  # optional key, not in config_defaults
    opts["mit_compatible"] = bool(evm_cfg["mit_compatible"])
  return opts


def magnify_from_config(video: jnp.ndarray, fps: float, evm_cfg, **overrides) -> jnp.ndarray:
  """magnify() driven by the ``evm`` config section; returns ``video`` unchanged when evm.enabled is False.

  [T, H, W, C] float32 -> same. Compiled once per clip shape and settings; errors and the fallback warning
  happen on every call. ``overrides`` are passed to magnify (e.g. chunk_bytes, mit_compatible).
  """
  if not evm_cfg.get("enabled", True):
    return video
  if fps is None:
    raise EVMError("EVM needs the clip's frame rate (fps), but none is known for this clip")
  opts = options_from_config(evm_cfg)
  opts.update(overrides)
  return magnify(video, float(fps), **opts)
