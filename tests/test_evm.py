"""Tests of mer_jax.evm against an independent float64 NumPy/SciPy implementation written here."""

from __future__ import annotations

import importlib
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, signal

from mer_jax import config_defaults
from mer_jax.errors import ConfigError, EVMError
from mer_jax.evm import (
  EVMWarning,
  color,
  filters,
  gains,
  magnify,
  magnify_batch,
  magnify_from_config,
  magnify_jit,
  motion_level_alphas,
  options_from_config,
  pyramids,
)

# ----------------------------------------------------------------------------------------------------------
# Independent float64 reference (literal MIT-style algorithm: per-frame YIQ + pyramids, filter every level,
# scale, collapse, add, back to RGB, clip). Pyramids via scipy.ndimage with mirror edges on zero-stuffed images.
# ----------------------------------------------------------------------------------------------------------
K = np.array([1, 4, 6, 4, 1], np.float64) / 16
RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def ref_reduce(img):  # [H, W, C]
  for ax in (0, 1):
    img = ndimage.correlate1d(img, K, axis=ax, mode="mirror")
    img = np.take(img, np.arange(0, img.shape[ax], 2), axis=ax)
  return img


def ref_expand(img, shape):
  for ax, m in zip((0, 1), shape):
    new = list(img.shape)
    new[ax] = m
    u = np.zeros(new)
    idx = [slice(None)] * 3
    idx[ax] = slice(0, m, 2)
    u[tuple(idx)] = img
    img = ndimage.correlate1d(u, 2 * K, axis=ax, mode="mirror")
  return img


def ref_height(h, w):
  """matlabPyrTools maxPyrHt(size, 5): buildLpyr(im, 'auto') builds this many bands plus the residual."""
  n = 0
  while min(h, w) >= 5:
    h, w, n = h // 2, w // 2, n + 1
  return n


def ref_lpyr(img, levels):
  out, g = [], img
  for _ in range(levels):
    g2 = ref_reduce(g)
    out.append(g - ref_expand(g2, g.shape[:2]))
    g = g2
  return out + [g]


def ref_collapse(pyr):
  img = pyr[-1]
  for band in reversed(pyr[:-1]):
    img = band + ref_expand(img, band.shape[:2])
  return img


def ref_alphas(h, w, n_levels, alpha, lambda_c):
  """MIT loop over levels coarsest -> finest (n_levels includes the residual)."""
  lam = (h**2 + w**2) ** 0.5 / 3
  delta = lambda_c / 8 / (1 + alpha)
  out = [0.0] * n_levels
  for lev in range(n_levels - 1, -1, -1):
    cur = (lam / delta / 8 - 1) * 2
    if lev in (n_levels - 1, 0):
      out[lev] = 0.0
    else:
      out[lev] = min(alpha, max(cur, 0.0))
    lam /= 2
  return out


def ref_temporal(x, fps, band, kind):  # x [T, ...] float64
  lo, hi = band
  if kind == "ideal":
    f = np.abs(np.fft.fftfreq(x.shape[0], 1.0 / fps))
    mask = ((f >= lo - 1e-9) & (f <= hi + 1e-9)).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.real(np.fft.ifft(np.fft.fft(x, axis=0) * mask, axis=0))
  if kind == "butterworth":
    out = []
    for fc in (hi, lo):
      b, a = signal.butter(1, fc / (fps / 2))
      zi = signal.lfilter_zi(b, a).reshape((-1,) + (1,) * (x.ndim - 1)) * x[:1]
      out.append(signal.lfilter(b, a, x, axis=0, zi=zi)[0])
    return out[0] - out[1]
  # iir
  r1, r2 = (1 - math.exp(-2 * math.pi * f / fps) for f in (hi, lo))
  l1, l2, out = x[0].copy(), x[0].copy(), np.zeros_like(x)
  for t in range(x.shape[0]):
    l1 = (1 - r1) * l1 + r1 * x[t]
    l2 = (1 - r2) * l2 + r2 * x[t]
    out[t] = l1 - l2
  return out


def ref_magnify(video, fps, *, alpha, band, pyramid="laplacian", levels=None, lambda_c=16.0, ca=0.1, kind="ideal"):
  v = np.asarray(video, np.float64)
  t, h, w, c = v.shape
  yiq = v @ RGB2YIQ.T if c == 3 else v
  chan = np.array([1.0, ca, ca]) if c == 3 else np.ones(1)
  if pyramid == "laplacian":
    n = ref_height(h, w) if levels is None else levels
    pyrs = [ref_lpyr(f, n) for f in yiq]
    al = ref_alphas(h, w, n + 1, alpha, lambda_c)
    stacks = [ref_temporal(np.stack([p[lev] for p in pyrs]), fps, band, kind) * al[lev] * chan for lev in range(n + 1)]
    delta = np.stack([ref_collapse([s[i] for s in stacks]) for i in range(t)])
  else:
    n = min(4, ref_height(h, w)) if levels is None else levels
    low = []
    for f in yiq:
      for _ in range(n):
        f = ref_reduce(f)
      low.append(f)
    filt = ref_temporal(np.stack(low), fps, band, kind) * alpha * chan
    shapes = [(h, w)]
    for _ in range(n):
      shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    delta = []
    for f in filt:
      for s in reversed(shapes[:-1]):
        f = ref_expand(f, s)
      delta.append(f)
    delta = np.stack(delta)
  out = yiq + delta
  if c == 3:
    out = out @ np.linalg.inv(RGB2YIQ).T
  return np.clip(out, 0, 1)


def smooth_video(t, h, w, c, seed=0, amp=0.05):
  """Mid-grey clip with smooth spatio-temporal variation (no clipping after magnification)."""
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((t, h, w, c))
  noise = ndimage.gaussian_filter(noise, sigma=(1.0, 2.0, 2.0, 0))
  noise /= np.abs(noise).max()
  return (0.5 + amp * noise).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Pyramids and colour
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (20, 9)])
def test_laplacian_reconstructs_even_and_odd_sizes(hw):
  x = jnp.asarray(np.random.default_rng(1).random((2,) + hw + (3,), dtype=np.float32))
  n = pyramids.max_levels(*hw)
  pyr = jax.jit(pyramids.build_laplacian, static_argnums=1)(x, n)
  assert [p.shape[1:3] for p in pyr] == pyramids.level_shapes(*hw, n)
  np.testing.assert_allclose(np.asarray(jax.jit(pyramids.collapse)(pyr)), np.asarray(x), rtol=0, atol=2e-6)


@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (7, 12)])
def test_pyramid_ops_match_reference(hw):
  x = np.random.default_rng(2).random(hw + (2,))
  d = np.asarray(jax.jit(pyramids.down)(jnp.asarray(x[None], jnp.float32)))[0]
  np.testing.assert_allclose(d, ref_reduce(x), atol=1e-6)
  for target in [(2 * d.shape[0], 2 * d.shape[1]), (2 * d.shape[0] - 1, 2 * d.shape[1] - 1)]:
    u = np.asarray(jax.jit(pyramids.up, static_argnums=1)(jnp.asarray(d[None], jnp.float32), target))[0]
    np.testing.assert_allclose(u, ref_expand(d, target), atol=1e-6)
  lp = jax.jit(pyramids.build_laplacian, static_argnums=1)(jnp.asarray(x[None], jnp.float32), 2)
  for got, want in zip(lp, ref_lpyr(x, 2)):
    np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-6)


def test_auto_height_rule():
  assert pyramids.max_levels(112, 112) == 5  # 56, 28, 14, 7, 4
  assert pyramids.max_levels(480, 640) == 7  # ..., 8x10, 4x5
  assert pyramids.max_levels(4, 100) == 0
  assert pyramids.check_levels(112, 112, "auto", "gaussian") == 4
  # "auto" is the MIT code's maxPyrHt (floor halving), one level less than the ceil rule at e.g. 140 px
  for h, w in [(112, 112), (140, 140), (480, 640), (36, 40), (9, 30), (17, 17), (33, 47), (64, 80), (5, 5)]:
    assert pyramids.check_levels(h, w, "auto", "laplacian") == ref_height(h, w), (h, w)
  assert pyramids.check_levels(140, 140, "auto", "laplacian") == 5  # residual 5x5, as buildLpyr
  assert pyramids.check_levels(140, 140, 6, "laplacian") == 6  # explicit: up to the ceil rule
  with pytest.raises(ValueError, match="out of range"):
    pyramids.check_levels(32, 32, 9, "laplacian")


def test_yiq_round_trip_and_luma():
  x = np.random.default_rng(3).random((5, 3)).astype(np.float32)
  y = color.rgb_to_yiq(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), x @ RGB2YIQ.T, atol=1e-6)
  np.testing.assert_allclose(np.asarray(color.yiq_to_rgb(y)), x, atol=1e-6)
  grey = np.asarray(color.rgb_to_yiq(jnp.full((1, 3), 0.7)))
  np.testing.assert_allclose(grey, [[0.7, 0, 0]], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Temporal filters
# ----------------------------------------------------------------------------------------------------------
def test_butterworth_coefficients_match_scipy():
  for fc, fps in [(0.4, 200.0), (3.0, 30.0), (10.0, 25.0)]:
    b0, b1, a1 = filters.butter1_lowpass(fc, fps)
    b, a = signal.butter(1, fc / (fps / 2))
    np.testing.assert_allclose([b0, b1, a1], [b[0], b[1], a[1]], rtol=1e-12)
    b0, b1, a1 = filters.butter1_lowpass(fc, fps, mit_compatible=True)
    b, a = signal.butter(1, fc / fps)
    np.testing.assert_allclose([b0, b1, a1], [b[0], b[1], a[1]], rtol=1e-12)


@pytest.mark.parametrize("kind", ["ideal", "butterworth", "iir"])
def test_temporal_filters_match_reference(kind):
  x = np.random.default_rng(4).random((40, 3, 2))
  fn = {"ideal": filters.ideal_bandpass, "butterworth": filters.butterworth_bandpass, "iir": filters.iir_bandpass}[kind]
  got = np.asarray(fn(jnp.asarray(x, jnp.float32), 30.0, (1.0, 4.0)))
  np.testing.assert_allclose(got, ref_temporal(x, 30.0, (1.0, 4.0), kind), atol=2e-6)


def test_ideal_filter_symmetric_mask_keeps_full_gain_mit_mode_halves():
  t = np.arange(64)
  x = np.sin(2 * np.pi * 4 * t / 64)[:, None].astype(np.float32)  # 4 Hz at fps 64: on a bin
  got = np.asarray(filters.ideal_bandpass(jnp.asarray(x), 64.0, (3.0, 5.0)))
  np.testing.assert_allclose(got, x, atol=1e-5)
  mit = np.asarray(filters.ideal_bandpass(jnp.asarray(x), 64.0, (3.0, 5.0), mit_compatible=True))
  np.testing.assert_allclose(mit, 0.5 * x, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# magnify vs the float64 reference
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "pyramid,kind,band,method",
  [
    ("laplacian", "ideal", (2.0, 4.0), "auto"),  # few bins -> cos/sin projection
    ("laplacian", "ideal", (1.0, 9.0), "fft"),  # rfft, spatial pass on in-band coefficients, irfft
    ("laplacian", "ideal", (1.0, 14.0), "time"),  # band-pass all frames, then spatial pass
    ("laplacian", "butterworth", (1.0, 4.0), "auto"),
    ("laplacian", "iir", (1.0, 4.0), "auto"),
    ("gaussian", "ideal", (2.0, 4.0), "auto"),
    ("gaussian", "butterworth", (1.0, 4.0), "auto"),
  ],
)
def test_magnify_matches_float64_reference(pyramid, kind, band, method):
  v = smooth_video(24, 33, 40, 3, seed=5, amp=0.02)
  got = np.asarray(
    magnify_jit(
      jnp.asarray(v), 30.0, alpha=10.0, freq_band=band, pyramid=pyramid, temporal_filter=kind, ideal_method=method
    )
  )
  want = ref_magnify(v, 30.0, alpha=10.0, band=band, pyramid=pyramid, kind=kind)
  assert np.abs(want - v).max() > 1e-3  # something was amplified
  assert 0.0 < want.min() and want.max() < 1.0  # no clipping: exact linear regime
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
  if pyramid == "gaussian":  # same temporal paths as below; the batching is checked once per path
    return
  # natively batched clips, same path: in the linear regime magnify(a v + b) = a magnify(v) + b (the band
  # excludes DC), so each clip of [v, 1 - v, v / 2 + 1/4] must give that clip's own result
  batch = np.stack([v, 1.0 - v, 0.5 * v + 0.25])
  out = np.asarray(
    magnify_batch(
      jnp.asarray(batch),
      30.0,
      vectorize="native",
      alpha=10.0,
      freq_band=band,
      pyramid=pyramid,
      temporal_filter=kind,
      ideal_method=method,
    )
  )
  np.testing.assert_allclose(out, np.stack([got, 1.0 - got, 0.5 * got + 0.25]), rtol=0, atol=2e-6)


def test_magnify_grey_clip_matches_reference():
  v = smooth_video(16, 24, 20, 1, seed=6, amp=0.02)
  got = np.asarray(magnify_jit(jnp.asarray(v), 16.0, alpha=8.0, freq_band=(1.0, 3.0)))
  assert got.shape == v.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, ref_magnify(v, 16.0, alpha=8.0, band=(1.0, 3.0)), atol=2e-5)


def test_level_alphas_match_mit_loop():
  for (h, w), alpha, lc in [((112, 112), 15.0, 16.0), ((480, 640), 20.0, 80.0), ((40, 40), 15.0, 16.0)]:
    n = pyramids.max_levels(h, w)
    np.testing.assert_allclose(motion_level_alphas(h, w, n, alpha, lc), ref_alphas(h, w, n + 1, alpha, lc))
  np.testing.assert_allclose(motion_level_alphas(112, 112, 5, 15.0, 16.0), [0, 4.6, 11.2, 15, 15, 0], atol=0.05)
  # where lambda < lambda_c / (1 + alpha) the MIT rule gives a negative factor: clipped at 0 by default,
  # kept (motion inverted, as the MIT code does) with clip_negative=False / mit_compatible=True
  lam = [(24**2 + 24**2) ** 0.5 / 3 / 2**k for k in range(4)]  # residual .. finest, 24x24, 3 levels
  mit = [0.0] + [min(15.0, (lam_k / (80.0 / 8 / 16) / 8 - 1) * 2) for lam_k in lam[1:3]][::-1] + [0.0]
  assert min(mit) < 0
  np.testing.assert_allclose(motion_level_alphas(24, 24, 3, 15.0, 80.0, clip_negative=False), mit, rtol=1e-12)
  np.testing.assert_allclose(motion_level_alphas(24, 24, 3, 15.0, 80.0), np.maximum(mit, 0), rtol=1e-12)


def test_chunked_spatial_pass_is_identical():
  v = jnp.asarray(smooth_video(16, 32, 32, 3, seed=7))
  for kind in ("ideal", "butterworth"):
    a = magnify(v, 16.0, alpha=5.0, freq_band=(1.0, 6.0), temporal_filter=kind, chunk_bytes=None)
    b = magnify(v, 16.0, alpha=5.0, freq_band=(1.0, 6.0), temporal_filter=kind, chunk_bytes=1)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Behaviour: motion, colour, static, linearity
# ----------------------------------------------------------------------------------------------------------
FPS, T, SIZE, PERIOD, AMP = 64.0, 64, 64, 32.0, 0.05


def translating_grating(freq_hz, amp=AMP):
  """p(x + delta(t)), p(x) = 0.5 + 0.2 cos(2 pi x / P), delta(t) = amp sin(2 pi f t / fps): [T, S, S, 1]."""
  t = np.arange(T)[:, None, None]
  x = np.arange(SIZE)[None, None, :]
  d = amp * np.sin(2 * np.pi * freq_hz * t / FPS)
  frames = 0.5 + 0.2 * np.cos(2 * np.pi * (x + d) / PERIOD) + 0 * np.arange(SIZE)[None, :, None]
  return frames[..., None].astype(np.float32), d[:, 0, 0]


def measured_displacement(frames):
  """Least-squares shift of each frame against the static grating, on the interior columns."""
  x = np.arange(SIZE)
  p = 0.5 + 0.2 * np.cos(2 * np.pi * x / PERIOD)
  dp = -0.2 * 2 * np.pi / PERIOD * np.sin(2 * np.pi * x / PERIOD)
  sl = slice(8, SIZE - 8)
  diff = np.asarray(frames, np.float64)[:, 8:-8, sl, 0] - p[sl]
  return (diff * dp[sl]).sum(axis=(1, 2)) / ((dp[sl] ** 2).sum() * (SIZE - 16))


def test_in_band_subpixel_motion_is_magnified_as_level_alphas_predict():
  video, d = translating_grating(4.0)
  out = np.asarray(magnify_jit(jnp.asarray(video), FPS, alpha=15.0, freq_band=(3.0, 5.0)))
  gain_in = (measured_displacement(video) @ d) / (d @ d)
  gain_out = (measured_displacement(out) @ d) / (d @ d)
  # prediction: first-order Taylor, the derivative image decomposed by the reference pyramid and scaled per level
  x = np.arange(SIZE)
  dp = np.tile(-0.2 * 2 * np.pi / PERIOD * np.sin(2 * np.pi * x / PERIOD), (SIZE, 1))[..., None]
  n = ref_height(SIZE, SIZE)
  al = ref_alphas(SIZE, SIZE, n + 1, 15.0, 16.0)
  amp = ref_collapse([a * b for a, b in zip(al, ref_lpyr(dp, n))])
  sl = slice(8, SIZE - 8)
  predicted = 1 + (amp[sl, sl, 0] * dp[sl, sl, 0]).sum() / (dp[sl, sl, 0] ** 2).sum()
  assert gain_in == pytest.approx(1.0, abs=0.02)
  assert predicted > 8
  assert gain_out == pytest.approx(predicted, rel=0.05)


def test_out_of_band_motion_and_static_clip_unchanged():
  video, _ = translating_grating(12.0)
  for kind in ("ideal",):
    out = magnify_jit(jnp.asarray(video), FPS, alpha=15.0, freq_band=(3.0, 5.0), temporal_filter=kind)
    np.testing.assert_allclose(np.asarray(out), video, atol=1e-6)
  static = np.repeat(smooth_video(1, 32, 32, 3, seed=8), 16, axis=0)
  for kind, pyramid in (("ideal", "laplacian"), ("butterworth", "gaussian"), ("iir", "laplacian")):
    out = magnify(jnp.asarray(static), 16.0, alpha=15.0, freq_band=(1.0, 4.0), temporal_filter=kind, pyramid=pyramid)
    np.testing.assert_allclose(np.asarray(out), static, atol=1e-6)


def test_output_grows_linearly_with_alpha():
  video, d = translating_grating(4.0)
  deltas = []
  for alpha in (2.0, 4.0, 8.0):
    out = magnify_jit(jnp.asarray(video), FPS, alpha=alpha, freq_band=(3.0, 5.0), lambda_c=0.5)
    deltas.append(np.asarray(out, np.float64) - video)
  assert np.abs(deltas[0]).max() > 1e-3
  np.testing.assert_allclose(deltas[1], 2 * deltas[0], atol=2e-6)
  np.testing.assert_allclose(deltas[2], 4 * deltas[0], atol=4e-6)
  # with lambda_c tiny every middle band is capped at alpha: displacement gain is linear in alpha too
  gains = [(measured_displacement(video + dl) @ d) / (d @ d) for dl in deltas]
  assert gains[1] - 1 == pytest.approx(2 * (gains[0] - 1), rel=1e-3)


def test_colour_pipeline_amplifies_in_band_brightness_by_one_plus_alpha():
  t = np.arange(T)
  s = 0.01 * np.sin(2 * np.pi * 4 * t / FPS)
  video = np.broadcast_to((0.5 + s)[:, None, None, None], (T, 24, 24, 3)).astype(np.float32)
  out = np.asarray(magnify_jit(jnp.asarray(video), FPS, alpha=10.0, freq_band=(3.0, 5.0), pyramid="gaussian"))
  gain = ((out[:, 12, 12, :] - 0.5) * s[:, None]).sum(0) / (s @ s)
  np.testing.assert_allclose(gain, 11.0, rtol=1e-3)
  mit = np.asarray(
    magnify_jit(jnp.asarray(video), FPS, alpha=10.0, freq_band=(3.0, 5.0), pyramid="gaussian", mit_compatible=True)
  )
  np.testing.assert_allclose(((mit[:, 12, 12, :] - 0.5) * s[:, None]).sum(0) / (s @ s), 6.0, rtol=1e-3)
  # chrominance is attenuated: a pure I-channel oscillation is amplified by 1 + alpha * 0.1
  i_dir = np.linalg.inv(RGB2YIQ)[:, 1]
  video_i = (0.5 + s[:, None] * i_dir * 0.5)[:, None, None, :] * np.ones((1, 24, 24, 1))
  out_i = np.asarray(
    magnify_jit(jnp.asarray(video_i, jnp.float32), FPS, alpha=10.0, freq_band=(3.0, 5.0), pyramid="gaussian")
  )
  i_sig = (out_i[:, 12, 12, :] - 0.5) @ RGB2YIQ[1]
  assert (i_sig @ s) / (s @ (0.5 * s)) == pytest.approx(2.0, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Errors, fallback, jit/vmap, config
# ----------------------------------------------------------------------------------------------------------
def test_empty_passband_error_names_fps_length_band_and_nearest_band():
  v = jnp.full((60, 16, 16, 3), 0.5, jnp.float32)  # 0.3 s at 200 fps: bins every 3.33 Hz
  with pytest.raises(EVMError) as e:
    magnify(v, 200.0, alpha=15.0, freq_band=(0.1, 0.4))
  msg = str(e.value)
  for part in ("fps=200", "60 frames", "0.300 s", "(0.1, 0.4) Hz", "3.333 Hz", "(1.667, 5) Hz", "500 frames"):
    assert part in msg, (part, msg)


def test_empty_band_fallback_warns_and_uses_onset_referenced_butterworth():
  v = jnp.asarray(smooth_video(20, 16, 16, 3, seed=9))
  with pytest.warns(EVMWarning, match="butterworth"):
    out = magnify(v, 200.0, alpha=15.0, freq_band=(0.1, 0.4), on_empty_band="fallback")
  want = magnify(v, 200.0, alpha=15.0, freq_band=(0.1, 0.4), temporal_filter="butterworth")
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=0)
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(v[0]), atol=1e-6)  # onset frame untouched


@pytest.mark.parametrize(
  "kwargs,err,match",
  [
    (dict(t=2), EVMError, "clip too short"),
    (dict(hw=4), EVMError, "too small"),
    (dict(c=2), EVMError, "C = 1 or 3"),
    (dict(pyramid="steerable"), ConfigError, "evm.pyramid"),
    (dict(temporal_filter="fir"), ConfigError, "evm.temporal_filter"),
    (dict(freq_band=(4.0, 1.0)), ConfigError, "evm.freq_band"),
    (dict(freq_band=(1.0, 20.0), temporal_filter="butterworth"), EVMError, "below 15 Hz"),
    (dict(levels=9), EVMError, "out of range"),
  ],
)
def test_bad_input_errors(kwargs, err, match):
  t, hw, c = kwargs.pop("t", 8), kwargs.pop("hw", 16), kwargs.pop("c", 3)
  opts = dict(alpha=5.0, freq_band=(1.0, 5.0))
  opts.update(kwargs)
  with pytest.raises(err, match=match):
    magnify(jnp.full((t, hw, hw, c), 0.5, jnp.float32), 30.0, **opts)


def test_vmap_over_batch_equals_per_clip():
  vids = np.stack([smooth_video(16, 24, 24, 3, seed=s) for s in (10, 11)])
  opts = dict(alpha=10.0, freq_band=(1.0, 3.0))
  batch = np.asarray(magnify_batch(jnp.asarray(vids), 16.0, vectorize=True, **opts))
  batch_map = np.asarray(magnify_batch(jnp.asarray(vids), 16.0, vectorize=False, **opts))
  for i in range(2):
    np.testing.assert_allclose(batch[i], np.asarray(magnify_jit(jnp.asarray(vids[i]), 16.0, **opts)), atol=1e-6)
    np.testing.assert_allclose(batch_map[i], batch[i], atol=1e-6)
  batch_bw = jax.jit(jax.vmap(lambda v: magnify(v, 16.0, temporal_filter="iir", **opts)))(jnp.asarray(vids))
  np.testing.assert_allclose(
    np.asarray(batch_bw[1]), np.asarray(magnify(jnp.asarray(vids[1]), 16.0, temporal_filter="iir", **opts)), atol=1e-6
  )


# Batches: every batching mode must give magnify's result per clip (odd frame sizes, every filter path).
BATCH_FPS = 16.0


def batch_of_clips(b=3, t=12, h=17, w=23, c=3):
  return np.stack([smooth_video(t, h, w, c, seed=30 + s) for s in range(b)])


def test_batch_modes_agree_grey_single_clip_and_chunked():
  vids = batch_of_clips(b=2, t=10, h=15, w=21, c=1)
  opts = dict(alpha=8.0, freq_band=(1.0, 5.0), temporal_filter="butterworth")
  want = np.stack([np.asarray(magnify(jnp.asarray(v), BATCH_FPS, **opts)) for v in vids])
  assert np.abs(want - vids).max() > 1e-3
  got = magnify_batch(jnp.asarray(vids), BATCH_FPS, **opts)  # CPU default: "map"
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  one = magnify_batch(jnp.asarray(vids[:1]), BATCH_FPS, vectorize="native", **opts)  # B = 1
  np.testing.assert_allclose(np.asarray(one)[0], want[0], atol=1e-6)
  # memory chunking over the B * T frames (chunks of one frame, across clip boundaries) changes nothing
  got = magnify_batch(jnp.asarray(vids), BATCH_FPS, vectorize="native", chunk_bytes=1, **opts)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_loop_batch_groups_with_remainder_in_place(monkeypatch):
  magnify_module = importlib.import_module("mer_jax.evm.magnify")
  vids = batch_of_clips(b=5, t=9, h=13, w=11)
  opts = dict(alpha=10.0, freq_band=(1.0, 4.0), temporal_filter="iir")
  want = np.stack([np.asarray(magnify(jnp.asarray(v), BATCH_FPS, **opts)) for v in vids])
  calls = []
  donated = magnify_module._batch_core_donated
  monkeypatch.setattr(magnify_module, "_batch_core_donated", lambda v, **kw: calls.append(kw) or donated(v, **kw))
  monkeypatch.setattr(magnify_module, "LOOP_GROUP_BYTES", 2 * vids[0].nbytes)  # 2 steps of 2 clips + 1
  x = jnp.asarray(vids)
  pointer = x.unsafe_buffer_pointer()
  got = magnify_batch(x, BATCH_FPS, donate=True, **opts)  # CPU default with donation: "loop"
  assert [(c["mode"], c["group"]) for c in calls] == [("loop", 2)]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  assert x.is_deleted() and got.unsafe_buffer_pointer() == pointer  # the output took over the input buffer


def test_batch_errors_and_fallback_warning_on_every_call():
  vids = jnp.asarray(batch_of_clips(b=2, t=8, h=16, w=16))
  with pytest.raises(EVMError, match=r"\[B, T, H, W, C\]"):
    magnify_batch(vids[0], BATCH_FPS)
  with pytest.raises(ConfigError, match="vectorize"):
    magnify_batch(vids, BATCH_FPS, vectorize="pmap")
  with pytest.raises(ConfigError, match="evm.temporal_filter"):
    magnify_batch(vids, BATCH_FPS, temporal_filter="fir")
  for _ in range(2):  # validation runs in Python each time, not only when the program is traced
    with pytest.warns(EVMWarning, match="empty passband"):
      magnify_batch(vids, 200.0, freq_band=(0.1, 0.4), on_empty_band="fallback")


def test_magnify_from_config():
  cfg = config_defaults.get_evm_config()
  v = jnp.asarray(smooth_video(16, 24, 24, 3, seed=12))
  cfg.freq_band = (1.0, 3.0)
  out = magnify_from_config(v, 16.0, cfg)
  np.testing.assert_allclose(np.asarray(out), np.asarray(magnify(v, 16.0, alpha=15.0, freq_band=(1.0, 3.0))), atol=1e-6)
  cfg.freq_band = (0.1, 0.4)
  with pytest.raises(EVMError, match="empty passband"):
    magnify_from_config(v, 200.0, cfg)
  cfg.on_empty_band = "fallback"
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    magnify_from_config(v, 200.0, cfg)
  assert any(issubclass(x.category, EVMWarning) for x in w)
  cfg.enabled = False
  assert magnify_from_config(v, 200.0, cfg) is v
  assert options_from_config(dict(cfg.to_dict(), mit_compatible=True))["mit_compatible"] is True
  assert "mit_compatible" not in options_from_config(cfg)
  bad = dict(cfg.to_dict(), enabled=True, alpha="big")
  with pytest.raises(ConfigError, match="evm.alpha"):
    magnify_from_config(v, 16.0, bad)
  del bad["lambda_c"]
  with pytest.raises(ConfigError, match="lambda_c"):
    magnify_from_config(v, 16.0, bad)


# ----------------------------------------------------------------------------------------------------------
# band_units="mit_rates": the MIT IIR variant, against a literal float64 transcription of its per-frame loop
# ----------------------------------------------------------------------------------------------------------
def ref_mit_iir(
  video, *, alpha, lambda_c, r1, r2, chrom_attenuation, state_from_first=True, exaggeration=2.0, chroma=True
):
  """amplify_spatial_lpyr_temporal_iir(alpha, lambda_c, r1, r2, chromAttenuation), frame by frame, float64.

  The keyword switches after chrom_attenuation exist only to build wrong variants (the test checks that each
  of them is far from magnify's output, i.e. that the comparison can fail).
  """
  v = np.asarray(video, np.float64)
  t, h, w, _ = v.shape
  n_rows = 1 + ref_height(h, w)  # buildLpyr(., 'auto'): bands + residual
  yiq = v @ RGB2YIQ.T
  first = ref_lpyr(yiq[0], n_rows - 1)
  low1 = [p.copy() if state_from_first else np.zeros_like(p) for p in first]
  low2 = [p.copy() if state_from_first else np.zeros_like(p) for p in first]
  out = [v[0]]  # the first frame is written unchanged
  for i in range(1, t):
    pyr = ref_lpyr(yiq[i], n_rows - 1)
    low1 = [(1 - r1) * a + r1 * p for a, p in zip(low1, pyr)]
    low2 = [(1 - r2) * a + r2 * p for a, p in zip(low2, pyr)]
    filt = [a - b for a, b in zip(low1, low2)]
    delta = lambda_c / 8 / (1 + alpha)
    lam = (h**2 + w**2) ** 0.5 / 3
    for lev in range(n_rows, 0, -1):  # MATLAB l = nLevels:-1:1, coarsest first
      cur = (lam / delta / 8 - 1) * exaggeration
      if lev == n_rows or lev == 1:
        filt[lev - 1] = 0 * filt[lev - 1]
      elif cur > alpha:
        filt[lev - 1] = alpha * filt[lev - 1]
      else:
        filt[lev - 1] = cur * filt[lev - 1]
      lam /= 2
    rec = ref_collapse(filt)
    if chroma:
      rec[..., 1:] *= chrom_attenuation
    out.append(np.clip((yiq[i] + rec) @ np.linalg.inv(RGB2YIQ).T, 0, 1))
  return np.stack(out)


def random_colour_clip(t=10, h=36, w=40, seed=40, amp=0.03):
  """Mid-grey clip with independent per-pixel, per-channel, per-frame noise: [T, H, W, 3] float32."""
  return (0.5 + amp * (2 * np.random.default_rng(seed).random((t, h, w, 3)) - 1)).astype(np.float32)


def test_mit_rates_is_the_mit_iir_program():
  # 36x40: maxPyrHt = 3 (36 -> 18 -> 9 -> 4), one level less than halving with ceil; bands 1 and 2 amplified,
  # band 2 at alpha (capped), band 1 at currAlpha = 4.2 < alpha
  v = random_colour_clip()
  opts = dict(alpha=10.0, lambda_c=16.0, chrom_attenuation=0.1)
  got = np.asarray(
    magnify_jit(jnp.asarray(v), 200.0, freq_band=(0.1, 0.4), band_units="mit_rates", temporal_filter="iir", **opts)
  )
  want = ref_mit_iir(v, r1=0.4, r2=0.1, **opts)
  assert np.abs(want - v).max() > 0.02  # amplified (white noise lies mostly in the finest band)
  assert 0.0 < want.min() and want.max() < 1.0  # and not clipped: the exact linear regime
  tol = 2e-5
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)
  # the rates are per frame: the frame rate plays no part
  at_30 = np.asarray(
    magnify_jit(jnp.asarray(v), 30.0, freq_band=(0.1, 0.4), band_units="mit_rates", temporal_filter="iir", **opts)
  )
  np.testing.assert_array_equal(at_30, got)
  # the comparison can fail: each wrong variant of the program lies far outside the tolerance
  wrong = {
    "state from zero": dict(r1=0.4, r2=0.1, state_from_first=False),
    "rates swapped": dict(r1=0.1, r2=0.4),
    "exaggeration 1": dict(r1=0.4, r2=0.1, exaggeration=1.0),
    "no chroma attenuation": dict(r1=0.4, r2=0.1, chroma=False),
  }
  for name, kw in wrong.items():
    assert np.abs(got - ref_mit_iir(v, **opts, **kw)).max() > 50 * tol, name


def test_mit_rates_grey_clip_and_config():
  v = random_colour_clip(t=8, h=24, w=20, seed=41)[..., :1]
  cfg = config_defaults.get_evm_config()
  assert cfg.band_units == "hz"  # the Hz reading stays the default
  cfg.band_units, cfg.temporal_filter, cfg.freq_band, cfg.alpha = "mit_rates", "iir", (0.05, 0.4), 10.0
  got = np.asarray(magnify_from_config(jnp.asarray(v), 100.0, cfg))
  # grey = luminance only: the same program on the Y channel of a grey RGB clip
  rgb = np.repeat(v, 3, axis=-1)
  want = ref_mit_iir(rgb, alpha=10.0, lambda_c=16.0, r1=0.4, r2=0.05, chrom_attenuation=0.1)[..., :1]
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
  assert np.abs(want - v).max() > 0.02
  assert options_from_config(cfg)["band_units"] == "mit_rates"
  batch = magnify_batch(jnp.asarray(v[None]), 100.0, **options_from_config(cfg))  # the batched entry point too
  np.testing.assert_allclose(np.asarray(batch)[0], got, atol=1e-6)
  legacy = {k: v for k, v in config_defaults.get_evm_config().to_dict().items() if k != "band_units"}
  assert options_from_config(legacy)["band_units"] == "hz"  # an older config without the key


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (
      dict(band_units="mit_rates", temporal_filter="butterworth"),
      r"evm.band_units='mit_rates'.*evm.temporal_filter='butterworth'.*set evm.temporal_filter='iir'",
    ),
    (dict(band_units="mit_rates", temporal_filter="ideal"), r"set evm.temporal_filter='iir'"),
    (dict(band_units="mit_rates", freq_band=(0.4, 0.1)), r"0 < r2 < r1 < 1, low first"),
    (dict(band_units="mit_rates", freq_band=(0.2, 0.2)), r"0 < r2 < r1 < 1"),
    (dict(band_units="mit_rates", freq_band=(0.0, 0.4)), r"0 < r2 < r1 < 1"),
    (dict(band_units="mit_rates", freq_band=(0.1, 1.0)), r"0 < r2 < r1 < 1"),
    (dict(band_units="mit_rates", freq_band=(0.1, 1.5)), r"0 < r2 < r1 < 1"),
    (dict(band_units="mit_rates", iir_rates=(0.4, 0.1)), r"iir_rates.*contradicts evm.band_units"),
    (dict(band_units="rates"), r"evm.band_units must be one of \('hz', 'mit_rates'\)"),
  ],
)
def test_mit_rates_bad_settings(kwargs, match):
  opts = dict(alpha=5.0, freq_band=(0.1, 0.4), temporal_filter="iir")
  opts.update(kwargs)
  with pytest.raises(ConfigError, match=match):
    magnify(jnp.full((8, 16, 16, 3), 0.5, jnp.float32), 200.0, **opts)
  cfg = dict(config_defaults.get_evm_config().to_dict(), **{k: v for k, v in opts.items() if k != "iir_rates"})
  if "iir_rates" not in kwargs:  # the same check from the config section
    with pytest.raises(ConfigError, match=match):
      options_from_config(cfg)


def test_mit_compatible_keeps_negative_level_alphas():
  # 24x24, alpha 15, lambda_c 80: the MIT factor of band 1 is negative (-0.87); the default clips it at 0
  v = random_colour_clip(t=6, h=24, w=24, seed=42, amp=0.01)
  opts = dict(
    alpha=15.0,
    lambda_c=80.0,
    chrom_attenuation=0.1,
    freq_band=(0.1, 0.4),
    band_units="mit_rates",
    temporal_filter="iir",
  )
  mit = np.asarray(magnify(jnp.asarray(v), 200.0, mit_compatible=True, **opts))
  np.testing.assert_allclose(
    mit, ref_mit_iir(v, alpha=15.0, lambda_c=80.0, r1=0.4, r2=0.1, chrom_attenuation=0.1), rtol=0, atol=2e-5
  )
  clipped = np.asarray(magnify(jnp.asarray(v), 200.0, **opts))
  assert np.abs(clipped - mit).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Apex gains of the two readings (mer_jax.evm.gains) against an independent float64 computation
# ----------------------------------------------------------------------------------------------------------
def ref_apex_gain(reading, rise_s, fps, band=(0.1, 0.4)):
  n = int(round(rise_s * fps))
  x = 0.5 - 0.5 * np.cos(np.pi * np.arange(n + 1) / n)
  if reading == "hz_butterworth":
    y = ref_temporal(x, fps, band, "butterworth")
  elif reading == "hz_iir":
    y = ref_temporal(x, fps, band, "iir")
  else:  # MIT: lowpass1 at r1 = band[1], lowpass2 at r2 = band[0]
    l1 = l2 = x[0]
    for xt in x[1:]:
      l1, l2 = (1 - band[1]) * l1 + band[1] * xt, (1 - band[0]) * l2 + band[0] * xt
    return l1 - l2
  return y[-1]


@pytest.mark.parametrize(
  "reading,rise_s,fps,pinned",
  [
    ("hz_butterworth", 0.07, 200.0, 0.062),
    ("hz_butterworth", 0.2, 100.0, 0.157),
    ("hz_iir", 0.1, 200.0, 0.090),
    ("mit_rates", 0.07, 200.0, 0.414),
    ("mit_rates", 0.2, 200.0, 0.163),
    ("mit_rates", 0.1, 100.0, 0.467),
  ],
)
def test_apex_gain_table_values(reading, rise_s, fps, pinned):
  got = gains.apex_gain(reading, rise_s, fps)
  assert got == pytest.approx(ref_apex_gain(reading, rise_s, fps), abs=2e-6)
  assert round(got, 3) == pinned  # the value printed in docs/evm.md
  rows = {(r["fps"], r["rise_s"]): r for r in gains.apex_gain_table()}
  assert rows[(fps, rise_s)][reading] == got


def test_mit_reading_depends_on_frames_hz_reading_on_seconds():
  # MIT rates: the same rise in frames gives the same gain at any fps; Hz: the same rise in seconds (nearly)
  assert gains.apex_gain("mit_rates", 0.2, 100.0) == pytest.approx(gains.apex_gain("mit_rates", 0.1, 200.0), abs=1e-6)
  assert gains.apex_gain("hz_butterworth", 0.2, 100.0) == pytest.approx(
    gains.apex_gain("hz_butterworth", 0.2, 200.0), abs=2e-3
  )
  np.testing.assert_allclose(filters.iir_cutoffs_hz((0.1, 0.4), 200.0), [3.354, 16.26], atol=5e-3)
  np.testing.assert_allclose(
    filters.iir_rates(filters.iir_cutoffs_hz((0.1, 0.4), 100.0), 100.0), [0.4, 0.1], rtol=1e-12
  )


def test_readme_butterworth_step_gains():
  # README "The frequency-resolution trap": g = 0.16, 0.36, 0.45 at 20, 60, 100 frames after the onset at
  # 200 fps are the Butterworth 0.1-0.4 Hz response to a unit step right after the onset frame
  # (x[0] = 0, x[n >= 1] = 1), read n frames after the onset
  x = np.ones(101)
  x[0] = 0.0
  ref = ref_temporal(x, 200.0, (0.1, 0.4), "butterworth")
  for n, readme, doc in [(20, 0.16, 0.158), (60, 0.36, 0.356), (100, 0.45, 0.445)]:
    got = gains.step_gain("hz_butterworth", n, 200.0)
    assert got == pytest.approx(ref[n], abs=2e-6)
    assert round(ref[n], 2) == readme and round(ref[n], 3) == doc
