"""The full classifier: backbone -> 7x7 adaptive average pool -> flatten -> FC (Section 3.4)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mer_jax.errors import ConfigError
from mer_jax.models.backbones import DenseBackbone, ResidualBackbone
from mer_jax.models.conv import resolve_conv_impl
from mer_jax.models.layers import adaptive_avg_pool, param_dtype_for

BACKBONES = {"dense": DenseBackbone, "residual": ResidualBackbone}
# float64 is the numerical reference (float64 parameters, activations and logits); it needs JAX's x64 mode.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


class MERNet(nn.Module):
  """Dense mixed-attention MER network.

  ``__call__(x [N, H, W, C] float32, train) -> logits [N, num_classes]`` (float32, float64 for a
  float64 ``dtype``; softmax belongs to the loss / predict). ``return_features=True`` also returns
  the last feature map ``[N, h, w, C_out]`` (before pooling), for Grad-CAM.
  Batch statistics live in the ``batch_stats`` collection: apply with
  ``mutable=['batch_stats']`` when ``train=True``.
  """

  num_classes: int
  backbone: nn.Module
  head_pool: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
    feats = self.backbone(x.astype(self.dtype), train)
    pooled = adaptive_avg_pool(feats, self.head_pool)
    flat = pooled.reshape((pooled.shape[0], -1))
    pdt = param_dtype_for(self.dtype)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=pdt, name="head")(flat).astype(pdt)
    if return_features:
      return logits, feats
    return logits


def build_model(cfg: ml_collections.ConfigDict) -> MERNet:
  """Builds :class:`MERNet` from the ``config.model`` section (see config_defaults)."""
  from mer_jax import configuration

  configuration.check_section(cfg, "model", ranges=False)  # backbone, attention, placement, dtype names
  if cfg.dtype == "float64" and not jax.config.x64_enabled:
    raise ConfigError(
      "config.model.dtype='float64' needs JAX's 64-bit mode (without it every float64 array is "
      "silently float32): set JAX_ENABLE_X64=1 or build and run the model inside "
      "`with jax.enable_x64(True):`"
    )
  dtype = DTYPES[cfg.dtype]
  backbone = BACKBONES[cfg.backbone](
    stem_features=cfg.stem_features,
    growth_rate=cfg.growth_rate,
    block_layers=tuple(cfg.block_layers),
    compression=cfg.compression,
    kernel_size=cfg.kernel_size,
    attention=cfg.attention,
    attention_placement=cfg.attention_placement,
    reduction=cfg.reduction,
    attention_kernel=cfg.attention_kernel,
    leaky_slope=cfg.leaky_slope,
    residual_bottleneck=cfg.residual_bottleneck,
    bn_momentum=cfg.bn_momentum,
    bn_epsilon=cfg.bn_epsilon,
    dtype=dtype,
    conv_impl=resolve_conv_impl(cfg.get("conv_impl", "auto")),
    name="backbone",
  )
  return MERNet(num_classes=cfg.num_classes, backbone=backbone, head_pool=cfg.head_pool, dtype=dtype)


def init_variables(model: MERNet, rng: jax.Array, image_size: int, channels: int = 3) -> dict:
  """``{'params', 'batch_stats'}`` for inputs ``[N, image_size, image_size, channels]``.

  Parameters and BatchNorm statistics are float32 (float64 for a float64 model: flax creates the statistics
  in float32 whatever the dtype, so they are cast here).
  """
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(rng, x)
  pdt = param_dtype_for(model.dtype)
  stats = jax.tree.map(lambda a: a.astype(pdt), variables.get("batch_stats", {}))
  return {"params": variables["params"], "batch_stats": stats}


def count_params(tree) -> int:
  """Total number of scalars in a pytree of arrays."""
  return int(sum(x.size for x in jax.tree.leaves(tree)))
