"""The backbone's 2-D convolutions in the form XLA:CPU runs fastest (``config.model.conv_impl``).

``conv_impl='xla'`` is flax's ``nn.Conv`` as it is: ``lax.conv_general_dilated`` and the gradients XLA derives
from it. ``conv_impl='cpu'`` computes the same function and the same gradients, arranged for XLA:CPU:

* **1x1 convolutions are matrix products** ``[N*H*W, C] @ [C, F]`` (the transitions, the residual variant's
  bottlenecks). XLA:CPU leaves a 1x1 convolution a convolution, and its kernel gradient ran at ~8 GFLOP/s on
  one core (2026-11-28, 2-core x86_64) where a matrix product runs at ~140.
* **k x k kernel gradients are summed over bands of rows.** XLA:CPU's kernel gradient of a stride-1 'SAME'
  convolution slows down more than linearly with the output area it sums over (one core, 128 -> 24 channels
  at 28x28: 5.4 ms for 4 images, 35 ms for 16, 97 ms for 32; the forward pass stays linear). The gradient is
  a sum over output positions, so it is computed per band of rows, each band reading its rows of the input
  plus the kernel's halo, and the bands' gradients are added. Bands split rows, never the batch: the batch
  axis is the one the data-parallel mesh shards, and a slice of it would move data between devices.
  A band holds ``max(1, BAND_POSITIONS // W)`` rows (98 positions per image: 3 of 28 rows, 7 of 14). The size
  is measured (docs/perf.md): 28-196 positions per image were tried on the paper network's train step, and
  56 / 140 again once small maps took the taps form (0.93x / 0.97x of 98's speed, 2026-11-28).
* **A dense layer's kernel gradient is computed part by part.** Its input is the concatenation of its block's
  earlier outputs; told their channel counts (``input_groups``, from ``DenseBackbone``), the banded kernel
  gradient reads each part by itself (:func:`split_input_groups`), so each part's bands are arranged once for
  every later layer that reads it (one core's share of the train step: 0.93x the time, 2026-11-29).
* **Small maps take matrix products ("taps").** XLA:CPU's forward k x k convolution producing few (24)
  channels runs at ~60 GFLOP/s on 7x7 maps and ~90 on 14x14 where a matrix product runs at ~140. Over at most
  ``TAPS_POSITIONS`` (196) positions per image the forward pass is ``z = x [N*H*W, C] @ w [C, kh*kw*F]``
  (every input position's contribution to each of its kh*kw output neighbours) followed by a shifted sum
  of the kh*kw column blocks of ``z``. Its backward pass, where the map is one band (7x7), is matrix products
  too: with ``G = tap_shifts(g) [N*H*W, kh*kw*F]``, ``dx = G @ w^T`` and ``dw = x^T @ G``; on larger maps
  (14x14) XLA's input gradient and the banded kernel gradient stay (faster there). Per layer (one core,
  batch 16, forward and backward) 7x7: 5.3 -> 4.0 ms at 158 channels, 11.7 -> 8.0 ms at 374; 14x14: 30.8
  against 32.7 ms at 292 channels, about even below ~150; on 28x28 maps the shifted sum of a 600-channel
  ``z`` costs more than it saves. The paper network's train step: 1.05x (2026-11-28, 2-core x86_64).

The forward values of convolutions over more than 196 positions and their input gradients are XLA's own, bit
for bit; everything else differs from ``'xla'`` by float rounding only (a different summation order;
tests/test_conv.py compares both with float64). On accelerators the extra, smaller kernels would only cost
launches, so ``'auto'`` (the default) is ``'cpu'`` on a CPU backend and ``'xla'`` elsewhere
(:func:`resolve_conv_impl`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "cpu")  # config.model.conv_impl
BAND_POSITIONS = 98  # output positions per image in one band of a kernel gradient ('cpu')
TAPS_POSITIONS = 196  # k x k convolutions over at most this many positions per image are matrix products ('cpu')

_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str, backend: Optional[str] = None) -> str:
  """``'xla'`` or ``'cpu'`` for ``config.model.conv_impl``; ``'auto'``: ``'cpu'`` when ``backend`` (default:
  JAX's default backend) is ``'cpu'``, else ``'xla'``."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl {impl!r}: expected one of {CONV_IMPLS}")  # configuration checks user input
  if impl != "auto":
    return impl
  return "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"


def band_rows(height: int, width: int) -> int:
  """Rows per band of a kernel gradient over an ``[height, width]`` output (all rows: one band)."""
  return min(height, max(1, BAND_POSITIONS // width))


def _conv_same(x: jnp.ndarray, w: jnp.ndarray, row_pad: Optional[tuple[int, int]] = None) -> jnp.ndarray:
  """Stride-1 convolution, NHWC / HWIO: 'SAME' along the columns, ``row_pad`` = (top, bottom) zero rows
  (default: 'SAME' along the rows too)."""
  ph, pw = w.shape[0] // 2, w.shape[1] // 2
  rows = row_pad if row_pad is not None else (ph, ph)
  return lax.conv_general_dilated(x, w, (1, 1), (rows, (pw, pw)), dimension_numbers=_NHWC)


def banded_kernel_grad(x: jnp.ndarray, g: jnp.ndarray, w: jnp.ndarray, input_groups: Sequence[int] = ()) -> jnp.ndarray:
  """Kernel gradient of the stride-1 'SAME' convolution ``x * w``, summed over bands of :func:`band_rows` rows.

  Args:
    x: the input ``[N, H, W, C]``.
    g: the gradient of the output ``[N, H, W, F]``.
    w: the kernel ``[kh, kw, C, F]`` (odd kh, kw; only its shape and dtype are used).
    input_groups: channel counts of the parts ``x`` was concatenated from (summing to C; empty: one part).
      Each part's rows of the kernel gradient are computed from that part alone (:func:`split_input_groups`).

  Returns:
    ``[kh, kw, C, F]``: ``sum_{n,i,j} x[n, i + a - kh//2, j + b - kw//2, :] (x) g[n, i, j, :]`` at ``[a, b]``.
  """
  parts = split_input_groups(x, input_groups)
  if len(parts) > 1:
    c0 = 0
    grads = []
    for part in parts:
      c = part.shape[-1]
      grads.append(banded_kernel_grad(part, g, w[:, :, c0 : c0 + c]))
      c0 += c
    return jnp.concatenate(grads, 2)
  h, width = x.shape[1], x.shape[2]
  ph = w.shape[0] // 2
  rows = band_rows(h, width)
  total = None
  for r0 in range(0, h, rows):
    r1 = min(h, r0 + rows)
    # output rows [r0, r1) read input rows [r0 - ph, r1 + ph): the ones inside the map, zero rows for the rest
    lo, hi = max(0, r0 - ph), min(h, r1 + ph)
    pads = (lo - (r0 - ph), r1 + ph - hi)
    band = x[:, lo:hi]
    (part,) = jax.linear_transpose(lambda k, band=band, pads=pads: _conv_same(band, k, pads), w)(g[:, r0:r1])
    total = part if total is None else total + part
  return total


def split_input_groups(x: jnp.ndarray, input_groups: Sequence[int]) -> list[jnp.ndarray]:
  """``x [..., C]`` as the parts it was concatenated from, ``input_groups`` channels each (``[x]`` if empty).

  A dense layer's input is the concatenation of every earlier output of its block (``[N, H, W, C]``, C growing
  by the growth rate per layer). Its kernel gradient computed per part reads each earlier output by itself (XLA
  simplifies the slice of a concatenation to the part), and the per-part arrangement for the kernel-gradient
  convolution is then the same program for every later layer that reads that part: the paper network's dense
  blocks' backward passes took 0.90x (28x28) and 0.92x (14x14) of the time, one core, batch 16 (2026-11-29, 2-core
  x86_64). Even chunks that ignore the parts gain less at 28x28 (0.92x-0.96x), and a lone convolution's kernel
  gradient in chunks gains nothing, so this is the concatenation, not the channel count.
  """
  if not input_groups or len(input_groups) == 1:
    return [x]
  if sum(input_groups) != x.shape[-1] or min(input_groups) < 1:
    raise ValueError(f"input_groups {tuple(input_groups)} do not split {x.shape[-1]} channels")
  bounds = [0]
  for c in input_groups:
    bounds.append(bounds[-1] + c)
  return [x[..., lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def taps_kernel(w: jnp.ndarray) -> jnp.ndarray:
  """``[kh, kw, C, F] -> [C, kh * kw * F]``: the kernel as one matrix, columns ordered (row tap, column tap, F)."""
  kh, kw, c, f = w.shape
  return w.transpose(2, 0, 1, 3).reshape(c, kh * kw * f)


def shifted_tap_sum(z: jnp.ndarray, kh: int, kw: int) -> jnp.ndarray:
  """``out[n, i, j] = sum_{a, b} z[n, i + a - kh//2, j + b - kw//2, (a, b)]`` (zero outside the map).

  Args:
    z: ``[N, H, W, kh * kw * F]``: every input position's contribution to each of its ``kh * kw`` output
      neighbours, tap-major (:func:`taps_kernel`'s column order).

  Returns:
    ``[N, H, W, F]``.
  """
  _, h, w, t = z.shape
  f = t // (kh * kw)
  rh, rw = kh // 2, kw // 2
  # input position p feeds output p - a + rh, i.e. row p - a + 2rh of a frame with rh (rw) spare rows (columns)
  # on each side. Tap by tap into that frame (in place; 1.2x the whole train step's speed of a sum of 25 slices
  # of a padded z, 2026-11-28). The frame is made from z (zeros_like) so that it is sharded like z.
  frame = jnp.pad(jnp.zeros_like(z[..., :f]), ((0, 0), (rh, rh), (rw, rw), (0, 0)))
  for a in range(kh):
    for b in range(kw):
      k = (a * kw + b) * f
      frame = frame.at[:, 2 * rh - a : 2 * rh - a + h, 2 * rw - b : 2 * rw - b + w].add(z[..., k : k + f])
  return frame[:, rh : rh + h, rw : rw + w]


def tap_shifts(g: jnp.ndarray, kh: int, kw: int) -> jnp.ndarray:
  """The transpose of :func:`shifted_tap_sum`: ``G[n, p, q, (a, b)] = g[n, p - a + kh//2, q - b + kw//2]``.

  ``[N, H, W, F] -> [N, H, W, kh * kw * F]`` (zero where the shifted position is outside the map).
  """
  _, h, w, f = g.shape
  rh, rw = kh // 2, kw // 2
  gp = jnp.pad(g, ((0, 0), (rh, rh), (rw, rw), (0, 0)))
  parts = [gp[:, 2 * rh - a : 2 * rh - a + h, 2 * rw - b : 2 * rw - b + w] for a in range(kh) for b in range(kw)]
  return jnp.concatenate(parts, -1)


def _sum_over_rows(a: jnp.ndarray, b: jnp.ndarray, acc: Any) -> jnp.ndarray:
  """``a^T @ b`` (accumulated in ``acc``) for ``a [R, M]``, ``b [R, P]``: a sum over rows, which a data-parallel
  program shards. Under an explicitly sharded mesh the replicated result has to be asked for (lax's own kernel
  gradient does that); elsewhere (auto-sharded meshes, one device) XLA places the all-reduce itself."""
  sharding = jax.typeof(a).sharding
  spec = getattr(sharding, "spec", None)
  if spec is not None and len(spec) and spec[0] is not None:
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jnp.dot(a.T, b, preferred_element_type=acc, out_sharding=replicated)
  return jnp.dot(a.T, b, preferred_element_type=acc)


def _taps_forward(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  kh, kw, c, f = w.shape
  # products and the tap sum accumulate in at least float32, as a convolution does, rounded once at the end
  out_dtype = jnp.result_type(x, w)
  z = jnp.dot(x.reshape(-1, c), taps_kernel(w), preferred_element_type=jnp.promote_types(out_dtype, jnp.float32))
  return shifted_tap_sum(z.reshape(x.shape[:3] + (kh * kw * f,)), kh, kw).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_taps(x: jnp.ndarray, w: jnp.ndarray, input_groups: tuple[int, ...] = ()) -> jnp.ndarray:
  """``lax.conv_general_dilated(x, w, (1, 1), 'SAME')`` (NHWC / HWIO, odd kernel) as matrix products:
  ``[N, H, W, C] * [kh, kw, C, F] -> [N, H, W, F]``.

  Forward: ``z = x [N*H*W, C] @ taps_kernel(w) [C, kh*kw*F]`` and :func:`shifted_tap_sum`. Backward, with
  ``G = tap_shifts(g) [N*H*W, kh*kw*F]``: ``dx = G @ taps_kernel(w)^T``, ``dw = x^T @ G``; for maps of more
  than one band (:func:`band_rows`) the backward pass is :func:`conv_banded_grad`'s instead (faster there).
  ``input_groups``: as :func:`conv_banded_grad`'s.
  """
  return _taps_forward(x, w)


def _taps_fwd(x, w, input_groups):
  return _taps_forward(x, w), (x, w)


def _taps_bwd(input_groups, res, g):
  x, w = res
  kh, kw, c, f = w.shape
  if band_rows(x.shape[1], x.shape[2]) < x.shape[1]:
    return _banded_bwd(input_groups, res, g)
  big_g = tap_shifts(g, kh, kw).reshape(-1, kh * kw * f)
  acc = jnp.promote_types(jnp.result_type(x, w, g), jnp.float32)
  dx = jnp.dot(big_g, taps_kernel(w).T, preferred_element_type=acc).reshape(x.shape)
  dw = _sum_over_rows(x.reshape(-1, c), big_g, acc).reshape(c, kh, kw, f).transpose(1, 2, 0, 3)
  return dx.astype(x.dtype), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_banded_grad(x: jnp.ndarray, w: jnp.ndarray, input_groups: tuple[int, ...] = ()) -> jnp.ndarray:
  """``lax.conv_general_dilated(x, w, (1, 1), 'SAME')`` (NHWC / HWIO, odd kernel), kernel gradient by
  :func:`banded_kernel_grad`; ``[N, H, W, C] * [kh, kw, C, F] -> [N, H, W, F]``. ``input_groups``: the channel
  counts of the parts ``x`` was concatenated from (a dense layer's input), static; the kernel gradient is computed
  part by part (:func:`split_input_groups`)."""
  return _conv_same(x, w)


def _banded_fwd(x, w, input_groups):
  return _conv_same(x, w), (x, w)


def _banded_bwd(input_groups, res, g):
  x, w = res
  (dx,) = jax.linear_transpose(lambda xx: _conv_same(xx, w), x)(g)
  return dx, banded_kernel_grad(x, g, w, input_groups)


conv_banded_grad.defvjp(_banded_fwd, _banded_bwd)
conv_taps.defvjp(_taps_fwd, _taps_bwd)


def _is_same(padding: Any, kernel_hw: Sequence[int]) -> bool:
  """Whether ``padding`` is 'SAME' (or its explicit pairs) for an odd kernel, i.e. symmetric."""
  if any(k % 2 == 0 for k in kernel_hw):
    return False
  if isinstance(padding, str):
    return padding.upper() == "SAME"
  return [tuple(int(v) for v in pair) for pair in padding] == [(k // 2, k // 2) for k in kernel_hw]


def cpu_conv_general_dilated(
  lhs: jnp.ndarray,
  rhs: jnp.ndarray,
  window_strides: Sequence[int],
  padding: Any,
  lhs_dilation: Optional[Sequence[int]] = None,
  rhs_dilation: Optional[Sequence[int]] = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
  *,
  input_groups: Sequence[int] = (),
) -> jnp.ndarray:
  """``lax.conv_general_dilated`` in the ``'cpu'`` form (module docstring), for ``nn.Conv(conv_general_dilated=)``.

  ``input_groups``: the channel counts of the parts ``lhs`` was concatenated from (a dense layer's input; empty:
  one part), for the k x k kernel gradients (:func:`split_input_groups`).

  Stride-1, undilated, ungrouped NHWC / HWIO 2-D convolutions with 'SAME' padding: 1x1 -> a matrix product;
  k x k over at most ``TAPS_POSITIONS`` positions per image -> :func:`conv_taps`; larger k x k ->
  :func:`conv_banded_grad` when the output has more than one band. Everything else (the stride-2 stem, other
  layouts, explicit precision) is ``lax.conv_general_dilated`` unchanged.
  """
  plain = (
    lhs.ndim == 4
    and tuple(window_strides) == (1, 1)
    and tuple(lhs_dilation or (1, 1)) == (1, 1)
    and tuple(rhs_dilation or (1, 1)) == (1, 1)
    and feature_group_count == 1
    and batch_group_count == 1
    and precision is None
    and preferred_element_type is None
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    and _is_same(padding, rhs.shape[:2])
  )
  groups = tuple(int(c) for c in input_groups)
  if plain and rhs.shape[:2] == (1, 1):
    out = jnp.dot(lhs.reshape(-1, lhs.shape[-1]), rhs.reshape(rhs.shape[2:]))
    return out.reshape(lhs.shape[:-1] + rhs.shape[-1:])
  if plain and lhs.shape[1] * lhs.shape[2] <= TAPS_POSITIONS:
    return conv_taps(lhs, rhs, groups)
  if plain and band_rows(lhs.shape[1], lhs.shape[2]) < lhs.shape[1]:
    return conv_banded_grad(lhs, rhs, groups)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def conv_function(impl: str, input_groups: Sequence[int] = ()) -> Optional[Callable[..., jnp.ndarray]]:
  """What ``nn.Conv(conv_general_dilated=...)`` gets for a resolved ``impl``: None (flax's own) for ``'xla'``;
  for ``'cpu'``, :func:`cpu_conv_general_dilated` told the input's ``input_groups`` (if any)."""
  if impl not in ("xla", "cpu"):
    raise ValueError(f"conv_impl {impl!r} is not resolved: call resolve_conv_impl first")
  if impl == "xla":
    return None
  if len(input_groups) > 1:
    return functools.partial(cpu_conv_general_dilated, input_groups=input_groups)
  return cpu_conv_general_dilated
