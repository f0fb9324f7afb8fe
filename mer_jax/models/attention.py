"""Mixed (channel + spatial) attention, eqs. (5)-(8) of the paper.

Applied in the skip pathways of the dense blocks (see :mod:`mer_jax.models.backbones`). Every
variant maps ``[N, H, W, C] -> [N, H, W, C]``; the weights are sown into the
``intermediates`` collection so tests and Grad-CAM can read them:
``channel_attention`` ``[N, C]`` (M_c of eq. 5) and ``spatial_attention``
``[N, H, W, 1]`` (M_s of eq. 7).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mer_jax.models.layers import param_dtype_for

ATTENTION_KINDS = ("none", "channel", "spatial", "mixed")


class ChannelAttention(nn.Module):
  """Eqs. (5)-(6): ``H' = H * sigmoid(MLP(avg(H)) + MLP(max(H)))``.

  The MLP (``omega_0: C -> C/r``, LeakyReLU, ``omega_1: C/r -> C``) is shared
  between the average- and max-pooled descriptors.
  """

  reduction: int = 8
  leaky_slope: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    hidden = max(c // self.reduction, 1)
    pdt = param_dtype_for(self.dtype)
    fc0 = nn.Dense(hidden, dtype=self.dtype, param_dtype=pdt, name="fc0")
    fc1 = nn.Dense(c, dtype=self.dtype, param_dtype=pdt, name="fc1")

    def mlp(v):
      return fc1(nn.leaky_relu(fc0(v), negative_slope=self.leaky_slope))

    avg = jnp.mean(x, axis=(1, 2))
    mx = jnp.max(x, axis=(1, 2))
    weights = nn.sigmoid((mlp(avg) + mlp(mx)).astype(pdt))  # [N, C]
    self.sow("intermediates", "channel_attention", weights)
    return x * weights[:, None, None, :].astype(x.dtype)


class SpatialAttention(nn.Module):
  """Eqs. (7)-(8): ``H_hat = H' * sigmoid(Conv5x5([mean_c(H'), max_c(H')]))``."""

  kernel_size: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    desc = jnp.concatenate([jnp.mean(x, axis=-1, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    k = self.kernel_size
    pdt = param_dtype_for(self.dtype)
    logits = nn.Conv(1, (k, k), padding="SAME", dtype=self.dtype, param_dtype=pdt, name="conv")(desc)
    weights = nn.sigmoid(logits.astype(pdt))  # [N, H, W, 1]
    self.sow("intermediates", "spatial_attention", weights)
    return x * weights.astype(x.dtype)


class MixedAttention(nn.Module):
  """Attention on a skip pathway; ``kind`` selects the Table 11 variant.

  ``none`` is the identity (no parameters), ``channel``/``spatial`` apply one
  step, ``mixed`` applies channel then spatial attention (Figure 4).
  """

  kind: str = "mixed"
  reduction: int = 8
  leaky_slope: float = 0.01
  kernel_size: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    assert self.kind in ATTENTION_KINDS, self.kind  # user-facing check: mer_jax.configuration
    if self.kind in ("channel", "mixed"):
      x = ChannelAttention(self.reduction, self.leaky_slope, self.dtype, name="channel")(x)
    if self.kind in ("spatial", "mixed"):
      x = SpatialAttention(self.kernel_size, self.dtype, name="spatial")(x)
    return x
