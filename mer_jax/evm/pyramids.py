"""Gaussian and Laplacian image pyramids in jax.numpy (separable [1 4 6 4 1]/16 kernel, reflect edges).

Frames are batched: every function takes ``x`` of shape [N, H, W, C] and works on axes 1 (H) and 2 (W).
All shapes are static, so everything jits and vmaps.

* ``down``: blur with the 5-tap binomial kernel and keep every other sample (sample 0 first);
  a side of n pixels becomes ceil(n / 2). Edges are mirrored without repeating the edge pixel
  (numpy/jnp ``mode="reflect"``, OpenCV ``BORDER_REFLECT_101``).
* ``up``: insert zeros to the target size m (m = 2n or 2n - 1), mirror the zero-stuffed signal the same
  way and blur with 2 x kernel per axis. It is written in polyphase form (even outputs use taps 1-6-1 / 8,
  odd outputs 1-1 / 2), so no zeros are multiplied.
* Laplacian band l = g_l - up(g_{l+1}); the last entry is the low-pass residual g_L. ``collapse`` inverts
  ``build_laplacian`` exactly (up to float rounding) for any frame size, even or odd.

Height ``"auto"``: the MIT EVM code's rule (``buildLpyr(im, 'auto')``: 1 + maxPyrHt rows, i.e. count the halvings
n -> floor(n / 2) while both sides are >= 5 px), see :func:`auto_levels`. Explicit heights may go up to
:func:`max_levels` (halve n -> ceil(n / 2) while both sides are >= 5 px), one more for some sizes (e.g. 140 px).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from jax import lax

KERNEL = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
MIN_SIDE = 5


def max_levels(height: int, width: int) -> int:
  """Most halvings (side n -> ceil(n / 2), the pyramid's own sizes) while both sides are >= 5 px.

  e.g. 112x112 -> 5 (56, 28, 14, 7, 4); 140x140 -> 6 (70, 35, 18, 9, 5, 3).
  """
  n = 0
  h, w = height, width
  while min(h, w) >= MIN_SIDE:
    h, w = (h + 1) // 2, (w + 1) // 2
    n += 1
  return n


def auto_levels(height: int, width: int) -> int:
  """The MIT code's pyramid height for ``"auto"``: maxPyrHt = halvings n -> floor(n / 2) while both sides >= 5.

  buildLpyr(im, 'auto') builds 1 + maxPyrHt(size(im), 5) rows: this many band-pass levels plus the low-pass
  residual. Equal to :func:`max_levels` except where a floored side drops to 4 while the ceiled one is 5
  (sides 9, 17-19, 33-39, 65-79, 129-159, ...): 112x112 -> 5, 140x140 -> 5 (residual 5x5), 480x640 -> 7.
  """
  n = 0
  h, w = height, width
  while min(h, w) >= MIN_SIDE:
    h, w = h // 2, w // 2
    n += 1
  return n


def level_shapes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
  """[(H, W), (ceil(H/2), ceil(W/2)), ...]: the ``levels + 1`` frame sizes of a pyramid, finest first."""
  shapes = [(height, width)]
  for _ in range(levels):
    h, w = shapes[-1]
    shapes.append(((h + 1) // 2, (w + 1) // 2))
  return shapes


def _reflect(j: int, n: int) -> int:
  """Index j mirrored into [0, n) without repeating the edge sample (|j| < n)."""
  return -j if j < 0 else 2 * (n - 1) - j if j > n - 1 else j


def _down_axis(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  # out[i] = sum_k KERNEL[k] x[2i + k - 2] (mirrored). Written as plain strided slices of x for the interior
  # plus a few edge samples, not as slices of a padded copy: XLA:CPU runs this ~3x faster than jnp.pad+slices.
  n = x.shape[axis]
  n_out = (n + 1) // 2
  sl = lambda lo, hi, stride=1: lax.slice_in_dim(x, lo, hi, stride=stride, axis=axis)
  last = (n - 3) // 2  # interior outputs 1..last need no mirrored sample
  parts = []
  for i in [0] + list(range(max(last + 1, 1), n_out)):
    if i == max(last + 1, 1) and last >= 1:
      parts.append(None)  # the interior goes here
    parts.append(sum(w * sl(j, j + 1) for w, j in zip(KERNEL, (_reflect(2 * i + k - 2, n) for k in range(5)))))
  if last >= 1:
    interior = sum(w * sl(k, k + 2 * (last - 1) + 1, 2) for k, w in enumerate(KERNEL))
    parts = [interior if p is None else p for p in parts]
  return jnp.concatenate(parts, axis=axis)


def _up_axis(x: jnp.ndarray, m: int, axis: int) -> jnp.ndarray:
  # Polyphase form of zero-stuffing to m samples + mirrored blur with 2 x KERNEL:
  # even[i] = (x[i-1] + 6 x[i] + x[i+1]) / 8, odd[i] = (x[i] + x[i+1]) / 2, mirrored at the edges.
  n = x.shape[axis]
  if m not in (2 * n, 2 * n - 1):
    raise ValueError(f"cannot up-sample {n} samples to {m}")
  sl = lambda lo, hi: lax.slice_in_dim(x, lo, hi, axis=axis)
  right = sl(n - 1, n) if m % 2 == 0 else sl(n - 2, n - 1)  # the mirrored sample beyond the end
  even = jnp.concatenate(
    [
      (2.0 * sl(1, 2) + 6.0 * sl(0, 1)) * 0.125,
      (sl(0, n - 2) + 6.0 * sl(1, n - 1) + sl(2, n)) * 0.125,
      (sl(n - 2, n - 1) + 6.0 * sl(n - 1, n) + right) * 0.125,
    ],
    axis=axis,
  )
  odd = jnp.concatenate([(sl(0, n - 1) + sl(1, n)) * 0.5, (sl(n - 1, n) + right) * 0.5], axis=axis)
  y = jnp.stack([even, odd], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * n
  y = y.reshape(shape)
  return y if m == 2 * n else lax.slice_in_dim(y, 0, m, axis=axis)


def down(x: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]: binomial blur + decimation."""
  return _down_axis(_down_axis(x, 1), 2)


def up(x: jnp.ndarray, shape: Sequence[int]) -> jnp.ndarray:
  """[N, h, w, C] -> [N, H, W, C] with H in {2h-1, 2h}, W in {2w-1, 2w}: zero-stuff + 2x binomial blur."""
  return _up_axis(_up_axis(x, shape[0], 1), shape[1], 2)


def build_gaussian(x: jnp.ndarray, levels: int) -> list[jnp.ndarray]:
  """[N, H, W, C] -> [g_0 = x, g_1, ..., g_levels] (finest first)."""
  pyr = [x]
  for _ in range(levels):
    pyr.append(down(pyr[-1]))
  return pyr


def build_laplacian(x: jnp.ndarray, levels: int) -> list[jnp.ndarray]:
  """[N, H, W, C] -> [L_0, ..., L_{levels-1}, residual]: band-pass levels finest first, low-pass last."""
  g = build_gaussian(x, levels)
  bands = [g[lev] - up(g[lev + 1], g[lev].shape[1:3]) for lev in range(levels)]
  return bands + [g[-1]]


def collapse(pyr: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Inverse of :func:`build_laplacian`: [bands..., residual] -> [N, H, W, C]."""
  out = pyr[-1]
  for band in reversed(pyr[:-1]):
    out = band + up(out, band.shape[1:3])
  return out


def gaussian_down_up(x: jnp.ndarray, levels: int) -> jnp.ndarray:
  """Down-sample ``levels`` times and up-sample back to the input size ([N, H, W, C] -> same shape)."""
  shapes = level_shapes(x.shape[1], x.shape[2], levels)
  y = x
  for _ in range(levels):
    y = down(y)
  for shape in reversed(shapes[:-1]):
    y = up(y, shape)
  return y


def check_levels(height: int, width: int, levels, pyramid: str) -> int:
  """Resolves ``levels`` ("auto" or int) for a frame size; raises ValueError when it is out of range."""
  top = max_levels(height, width)
  if levels == "auto":
    auto = auto_levels(height, width)
    n = auto if pyramid == "laplacian" else min(4, auto)
  else:
    n = int(levels)
    if isinstance(levels, bool) or n != levels:
      raise ValueError(f"levels must be 'auto' or an integer, got {levels!r}")
  if top < 1:
    raise ValueError(f"frames of {height}x{width} px are too small for a pyramid (need both sides >= {MIN_SIDE})")
  if not 1 <= n <= top:
    raise ValueError(f"levels={levels!r} is out of range for {height}x{width} px frames: use 1..{top} or 'auto'")
  return n
