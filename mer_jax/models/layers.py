"""Building blocks shared by the backbones: conv units and adaptive pooling."""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models.conv import conv_function


def param_dtype_for(dtype: Any) -> Any:
  """Parameter / accumulation dtype for a compute ``dtype``: at least float32.

  bfloat16 and float32 compute keep float32 parameters (and float32 logits); float64 compute (the numerical
  reference, needs JAX's x64 mode) has float64 parameters, so the whole program is float64.
  """
  return jnp.promote_types(dtype, jnp.float32)


def batch_statistics(x: jnp.ndarray, dtype: Any, axis_name: Optional[str] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-channel batch mean and (biased) variance of ``x`` ``[N, ..., C]`` over every axis but the last.

  The mean is ``shift + mean(x - shift)`` with ``shift`` the first sample's mean over its other axes (treated as
  a constant, ``stop_gradient``), and the variance is two-pass, ``mean((x - mean)^2)``: mathematically (and in
  the gradient) the plain mean and variance, but every summed term is O(spread) rather than O(|mean|), so the
  result does not depend on how the compiler orders the float reductions (a sequential float32 sum of N*H*W
  terms ~100 +- 1 is off by ~6e-4, enough to move gradients by percents: docs/perf.md).

  A per-sample shift (each sample's own mean) would spare a data-parallel program the broadcast of the first
  sample's mean (one all-reduce per layer). It was tried once and dropped when the vmapped float64 gradient
  test (tests/test_models.py) went to 1.2e-3 for one fold; that 1.2e-3 was later traced to a float32 flip of
  a near tie in the attention's maximum, which other rounding changes trip too (docs/perf.md), not to the
  shift. The per-sample shift has not been measured again since.

  With ``axis_name`` (inside ``shard_map`` / ``pmap`` over that axis, each device holding an equal share of the
  batch) the statistics are the whole batch's: the mean is the ``pmean`` of each device's shifted mean (each
  device shifts by its own first sample; a shift cancels), the variance the ``pmean`` of each device's mean
  squared deviation from that global mean.

  Args:
    x: ``[N, ..., C]`` activations (this device's share of the batch under ``axis_name``).
    dtype: the dtype the statistics are computed in (at least float32, see :func:`param_dtype_for`).
    axis_name: a mapped axis the batch is split over, or None.

  Returns:
    (mean ``[C]``, var ``[C]``), both ``dtype``.
  """
  x = x.astype(dtype)
  axes = tuple(range(x.ndim - 1))
  shift = jax.lax.stop_gradient(jnp.mean(x[:1], axis=axes, keepdims=True))
  mean = shift + jnp.mean(x - shift, axis=axes, keepdims=True)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean.reshape(-1), var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def batch_norm_train(x, scale, bias, epsilon: float, stats_dtype: Any, out_dtype: Any, axis_name: Optional[str] = None):
  """Training-mode batch normalisation ``y = (x - mean) * rsqrt(var + epsilon) * scale + bias`` with the batch's
  statistics (:func:`batch_statistics`), and its gradient in closed form.

  Args:
    x: ``[N, ..., C]``; scale, bias: ``[C]``; the statistics are computed in ``stats_dtype``, ``y`` is ``out_dtype``.

  Returns:
    (y ``[N, ..., C]``, mean ``[C]``, var ``[C]``).

  The backward pass is the textbook one, ``dx = scale * rstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))``
  (M elements per channel, ``xhat = (x - mean) * rstd``): two batch sums, reduced across the devices of a
  data-parallel program in one all-reduce (differentiating the statistics' arithmetic takes two rounds), and
  fewer passes over ``x`` than the derivative of the shifted statistics.

  ``axis_name`` (inside ``shard_map`` over that axis, the batch split evenly): the statistics are the whole
  batch's (:func:`batch_statistics`) and the backward pass's two sums one ``psum``, so ``dx`` is this device's
  part of the gradient of the sum of every device's loss (M the whole batch's count). ``scale`` and ``bias``
  get this device's own sums: its share of their gradient, which the caller adds up (or averages, with the
  rest of the parameters' gradients) over the axis. Summing them here as well would count them once per device.
  """
  return _bn_forward(x, scale, bias, epsilon, stats_dtype, out_dtype, axis_name)[0]


def _bn_forward(x, scale, bias, epsilon, stats_dtype, out_dtype, axis_name=None):
  mean, var = batch_statistics(x, stats_dtype, axis_name)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x.astype(stats_dtype) - mean) * (rstd * scale) + bias
  return (y.astype(out_dtype), mean, var), (x, mean, rstd, scale, bias)


def _bn_backward(epsilon, stats_dtype, out_dtype, axis_name, residuals, cotangents):
  x, mean, rstd, scale, bias = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  m = x.size // x.shape[-1]
  centred = x.astype(stats_dtype) - mean
  xhat = centred * rstd
  dy = dy.astype(stats_dtype)
  own_sum_dy = jnp.sum(dy, axis=axes)
  own_sum_dy_xhat = jnp.sum(dy * xhat, axis=axes)
  sum_dy, sum_dy_xhat = own_sum_dy, own_sum_dy_xhat
  if axis_name is not None:  # the whole batch's sums and count, and every device's statistics cotangents
    sums = jnp.stack([own_sum_dy, own_sum_dy_xhat, dmean.astype(stats_dtype), dvar.astype(stats_dtype)])
    sum_dy, sum_dy_xhat, dmean, dvar = jax.lax.psum(sums, axis_name)
    m = m * jax.lax.psum(1, axis_name)
  dx = (scale * rstd / m) * (m * dy - sum_dy - xhat * sum_dy_xhat)
  dx = dx + (dmean + 2.0 * dvar * centred) / m  # the statistics' own cotangents (zero in the model's loss)
  # scale / bias: this device's share (batch_norm_train's docstring)
  return dx.astype(x.dtype), own_sum_dy_xhat.astype(scale.dtype), own_sum_dy.astype(bias.dtype)


batch_norm_train.defvjp(_bn_forward, _bn_backward)


class BatchNorm(nn.Module):
  """Batch normalisation over every axis but the last, with order-independent batch statistics.

  ``x [N, ..., C] -> [N, ..., C]``. A drop-in for ``flax.linen.BatchNorm(use_fast_variance=False)``: the same
  parameters (``scale``, ``bias``: ``[C]``, ``param_dtype``), the same ``batch_stats`` variables (``mean``,
  ``var``: ``[C]``, created float32 like flax's), the same running-average update
  ``momentum * old + (1 - momentum) * batch`` (skipped while initialising), the same normalisation
  ``(x - mean) * rsqrt(var + epsilon) * scale + bias`` and output ``dtype``; only the batch statistics are
  computed by :func:`batch_statistics` (shifted mean, two-pass variance), and training mode's gradient is
  :func:`batch_norm_train`'s closed form. ``axis_name``: as flax's, a mapped axis (``shard_map``) the batch is
  split over, whose whole batch the statistics are taken from in training mode (gradients:
  :func:`batch_norm_train`).
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    out_dtype = self.dtype if self.dtype is not None else jnp.result_type(x, scale, bias)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
      y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
      return y.astype(out_dtype)
    stats_dtype = jnp.promote_types(self.dtype if self.dtype is not None else x.dtype, jnp.float32)
    y, mean, var = batch_norm_train(x, scale, bias, float(self.epsilon), stats_dtype, out_dtype, self.axis_name)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class ConvReluBN(nn.Module):
  """``BN(ReLU(Conv(x)))``: the layer of eq. (4), in the paper's order.

  x: ``[N, H, W, C_in]`` -> ``[N, H', W', features]``. The conv keeps its bias
  (BN follows the ReLU, so the bias is not redundant), as Keras' Conv2D does. ``input_groups``: the channel
  counts of the parts ``x`` was concatenated from (a dense layer's input), which the ``'cpu'`` convolution's
  kernel gradient uses (:func:`mer_jax.models.conv.split_input_groups`); the function is the same either way.
  ``bn_axis_name``: see :class:`BatchNorm`'s ``axis_name`` (None outside a ``shard_map`` data-parallel step).
  """

  features: int
  kernel_size: int = 5
  strides: int = 1
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  conv_impl: str = "xla"  # resolved config.model.conv_impl: 'xla' | 'cpu' (mer_jax.models.conv)
  input_groups: tuple[int, ...] = ()
  bn_axis_name: Optional[str] = None  # BatchNorm's axis_name: the shard_map axis a data-parallel step splits over

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    k = self.kernel_size
    pdt = param_dtype_for(self.dtype)
    x = nn.Conv(
      self.features,
      (k, k),
      strides=(self.strides, self.strides),
      padding="SAME",
      dtype=self.dtype,
      param_dtype=pdt,
      conv_general_dilated=conv_function(self.conv_impl, self.input_groups),
      name="conv",
    )(x)
    x = nn.relu(x)
    # Shifted mean and two-pass variance (see BatchNorm): flax's default E[x^2] - E[x]^2 cancels catastrophically
    # when |mean| >> std (up to 3% errors in some kernel gradients of a vmapped LOSO step, benchmarks/RESULTS.md
    # log entry 16), and an unshifted mean is as accurate as the compiler's float32 reduction order allows.
    return BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      param_dtype=pdt,
      axis_name=self.bn_axis_name,
      name="bn",
    )(x)


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` (float64) averaging matrix of adaptive average pooling.

  Bin ``i`` covers ``[floor(i*in/out), ceil((i+1)*in/out))`` (the PyTorch /
  Keras-adaptive convention), so bins overlap when ``in`` is not a multiple of
  ``out`` and repeat inputs when ``in < out``.
  """
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jnp.ndarray, out_size: int) -> jnp.ndarray:
  """Adaptive average pooling ``[N, H, W, C] -> [N, out, out, C]``."""
  _, h, w, _ = x.shape
  if h == out_size and w == out_size:
    return x
  ph = jnp.asarray(adaptive_pool_matrix(h, out_size), x.dtype)
  pw = jnp.asarray(adaptive_pool_matrix(w, out_size), x.dtype)
  return jnp.einsum("oh,nhwc,pw->nopc", ph, x, pw)


def avg_pool_same(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
  """``flax.linen.avg_pool(x, (window, window), (stride, stride), padding='SAME')`` (zero padding counted, as
  flax's default ``count_include_pad=True``) as sums of strided slices, rows first, then columns.

  ``[N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), C]``. The same function as flax's ``reduce_window``
  form, whose gradient XLA:CPU computes as a ``reduce_window`` over a dilated input (11 ms of the paper
  network's step for the stem's 3x3 / 2 pool, 2026-11-28); the gradient of strided slices is a padding with
  holes, fused with the adds.
  """

  def along(x, axis):
    out = -(-x.shape[axis] // stride)
    pads = [(0, 0)] * x.ndim
    pads[axis] = jax.lax.padtype_to_pads((x.shape[axis],), (window,), (stride,), "SAME")[0]
    xp = jnp.pad(x, pads)
    parts = [jax.lax.slice_in_dim(xp, a, a + (out - 1) * stride + 1, stride, axis) for a in range(window)]
    return functools.reduce(jnp.add, parts)

  return along(along(x, 1), 2) / (window * window)
