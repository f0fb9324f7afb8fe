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
  A band holds ``max(1, BAND_POSITIONS // W)`` rows (98 positions per image: 3 of 28 rows, 7 of 14; a 7x7
  map is one band, i.e. XLA's own gradient). The size is measured (docs/perf.md): 28-196 positions per image
  were tried on the paper network's train step.

The forward values of k x k convolutions and their input gradients are XLA's own, bit for bit; the kernel
gradients and the 1x1 convolutions differ from ``'xla'`` by float rounding only (a different summation order;
tests/test_conv.py compares both with float64). On accelerators the extra, smaller kernels would only cost
launches, so ``'auto'`` (the default) is ``'cpu'`` on a CPU backend and ``'xla'`` elsewhere
(:func:`resolve_conv_impl`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "cpu")  # config.model.conv_impl
BAND_POSITIONS = 98  # output positions per image in one band of a kernel gradient ('cpu')

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


def _conv_same(x: jnp.ndarray, w: jnp.ndarray, row_pad: int) -> jnp.ndarray:
  """Stride-1 convolution, NHWC / HWIO: 'SAME' along the columns, ``row_pad`` zero rows on both sides."""
  pw = w.shape[1] // 2
  return lax.conv_general_dilated(x, w, (1, 1), ((row_pad, row_pad), (pw, pw)), dimension_numbers=_NHWC)


def banded_kernel_grad(x: jnp.ndarray, g: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """Kernel gradient of the stride-1 'SAME' convolution ``x * w``, summed over bands of :func:`band_rows` rows.

  Args:
    x: the input ``[N, H, W, C]``.
    g: the gradient of the output ``[N, H, W, F]``.
    w: the kernel ``[kh, kw, C, F]`` (odd kh, kw; only its shape and dtype are used).

  Returns:
    ``[kh, kw, C, F]``: ``sum_{n,i,j} x[n, i + a - kh//2, j + b - kw//2, :] (x) g[n, i, j, :]`` at ``[a, b]``.
  """
  h, width = x.shape[1], x.shape[2]
  ph = w.shape[0] // 2
  rows = band_rows(h, width)
  xp = jnp.pad(x, ((0, 0), (ph, ph), (0, 0), (0, 0)))  # band [r0, r1) of the output reads rows r0..r1+2ph of xp
  total = None
  for r0 in range(0, h, rows):
    r1 = min(h, r0 + rows)
    band = xp[:, r0 : r1 + 2 * ph]
    (part,) = jax.linear_transpose(lambda k, band=band: _conv_same(band, k, 0), w)(g[:, r0:r1])
    total = part if total is None else total + part
  return total


@jax.custom_vjp
def conv_banded_grad(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """``lax.conv_general_dilated(x, w, (1, 1), 'SAME')`` (NHWC / HWIO, odd kernel), kernel gradient by
  :func:`banded_kernel_grad`; ``[N, H, W, C] * [kh, kw, C, F] -> [N, H, W, F]``."""
  return _conv_same(x, w, w.shape[0] // 2)


def _banded_fwd(x, w):
  return _conv_same(x, w, w.shape[0] // 2), (x, w)


def _banded_bwd(res, g):
  x, w = res
  (dx,) = jax.linear_transpose(lambda xx: _conv_same(xx, w, w.shape[0] // 2), x)(g)
  return dx, banded_kernel_grad(x, g, w)


conv_banded_grad.defvjp(_banded_fwd, _banded_bwd)


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
) -> jnp.ndarray:
  """``lax.conv_general_dilated`` in the ``'cpu'`` form (module docstring), for ``nn.Conv(conv_general_dilated=)``.

  Stride-1, undilated, ungrouped NHWC / HWIO 2-D convolutions with 'SAME' padding: 1x1 -> a matrix product,
  k x k -> :func:`conv_banded_grad` when the output has more than one band. Everything else (the stride-2 stem,
  other layouts, explicit precision) is ``lax.conv_general_dilated`` unchanged.
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
  if plain and rhs.shape[:2] == (1, 1):
    out = jnp.dot(lhs.reshape(-1, lhs.shape[-1]), rhs.reshape(rhs.shape[2:]))
    return out.reshape(lhs.shape[:-1] + rhs.shape[-1:])
  if plain and band_rows(lhs.shape[1], lhs.shape[2]) < lhs.shape[1]:
    return conv_banded_grad(lhs, rhs)
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


def conv_function(impl: str) -> Optional[Callable[..., jnp.ndarray]]:
  """What ``nn.Conv(conv_general_dilated=...)`` gets for a resolved ``impl``: None (flax's own) for ``'xla'``."""
  if impl not in ("xla", "cpu"):
    raise ValueError(f"conv_impl {impl!r} is not resolved: call resolve_conv_impl first")
  return cpu_conv_general_dilated if impl == "cpu" else None
