"""Building blocks shared by the backbones: conv units and adaptive pooling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def param_dtype_for(dtype: Any) -> Any:
  """Parameter / accumulation dtype for a compute ``dtype``: at least float32.

  bfloat16 and float32 compute keep float32 parameters (and float32 logits); float64 compute (the numerical
  reference, needs JAX's x64 mode) has float64 parameters, so the whole program is float64.
  """
  return jnp.promote_types(dtype, jnp.float32)


class ConvReluBN(nn.Module):
  """``BN(ReLU(Conv(x)))``: the layer of eq. (4), in the paper's order.

  x: ``[N, H, W, C_in]`` -> ``[N, H', W', features]``. The conv keeps its bias
  (BN follows the ReLU, so the bias is not redundant), as Keras' Conv2D does.
  """

  features: int
  kernel_size: int = 5
  strides: int = 1
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

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
      name="conv",
    )(x)
    x = nn.relu(x)
    # Two-pass batch variance, mean((x - mean)^2), as Keras' BatchNormalization computes it. flax's default
    # E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std: it put up to 3% errors into some kernel
    # gradients of a vmapped LOSO step (benchmarks/RESULTS.md, optimisation log entry 16).
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      param_dtype=pdt,
      use_fast_variance=False,
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
