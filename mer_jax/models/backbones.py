"""Backbones: the densely connected extractor (Section 3.3.1) and the residual
variant of the Table 12 ablation.

Sizes (the paper gives none; chosen here, all are config fields)
----------------------------------------------------------------
The paper fixes 5x5 convolutions, Conv -> ReLU -> BN layers on the concatenation
of all earlier outputs of a block (eq. 4), average-pooling transitions, a 7x7
pooled head, a 112x112 input and 3.115M parameters (Table 13). We follow the
DenseNet layout for a 224 input scaled to 112:

* stem: 5x5 conv, stride 2, ``stem_features=32`` (112 -> 56), 3x3/2 average pool (56 -> 28);
* dense blocks of ``block_layers=(5, 10, 10)`` layers, growth rate ``k=24``,
  at 28x28, 14x14 and 7x7, so the last block's maps are already the 7x7 the
  head pools to (Section 3.4);
* transitions: 1x1 Conv -> ReLU -> BN to ``compression=0.5`` of the channels, then 2x2 average pooling;
* mixed attention (reduction ``r=8``, 5x5 spatial conv) on each block's output,
  i.e. on the concatenated skip pathway that carries every layer's maps onward.

Channels: 32 -> block1 152 -> 76 -> block2 316 -> 158 -> block3 398. With the
7x7x398 head to 3 classes this is 3,135,541 trainable parameters, +0.66% of the
paper's 3.115M (the +-2% window admits only a few (stem, k, layers) triples at
5x5; among them this is the one with the DenseNet-like doubling of depth after
the first block and a width that keeps the 28x28 stage affordable). Because
blocks run at 28/14/7, a forward pass costs ~0.87 GFLOP per image (see
``python -m mer_jax.complexity``).

Residual variant (Table 12: "the same stage widths with residual blocks")
------------------------------------------------------------------------
Same stem, same stage resolutions and the same stage input/output widths as
the dense blocks; each stage is a 1x1 projection to the dense block's output
width followed by ``ceil(layers/2)`` bottleneck units (1x1 -> 5x5 -> 1x1,
Conv -> ReLU -> BN, identity skip), with ``residual_bottleneck=81`` chosen so
that the residual model lands near the dense model's parameter count (a fair
comparison: 3,091,036 parameters), and the same attention on each stage output.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mer_jax.models.attention import MixedAttention
from mer_jax.models.layers import ConvReluBN, avg_pool_same


class _Common(nn.Module):
  """Fields shared by both backbones (see the module docstring for defaults)."""

  stem_features: int = 32
  growth_rate: int = 24
  block_layers: Sequence[int] = (5, 10, 10)
  compression: float = 0.5
  kernel_size: int = 5
  attention: str = "mixed"
  attention_placement: str = "block"
  reduction: int = 8
  attention_kernel: int = 5
  leaky_slope: float = 0.01
  residual_bottleneck: int = 81
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  conv_impl: str = "xla"  # resolved config.model.conv_impl (mer_jax.models.conv)
  # The shard_map axis a data-parallel train step splits the batch over (None: the whole batch is here, also
  # under GSPMD); BatchNorm then reduces its statistics over it. Set by ModelApply.over_batch_axis, not by users.
  bn_axis_name: Optional[str] = None

  def conv(self, features, kernel_size=None, strides=1, name=None, input_groups=()):
    return ConvReluBN(
      features,
      kernel_size or self.kernel_size,
      strides,
      self.bn_momentum,
      self.bn_epsilon,
      self.dtype,
      self.conv_impl,
      tuple(input_groups),
      self.bn_axis_name,
      name=name,
    )

  def attend(self, name):
    return MixedAttention(
      self.attention, self.reduction, self.leaky_slope, self.attention_kernel, self.dtype, name=name
    )

  def stem(self, x, train):
    """``[N, S, S, C] -> [N, S/4, S/4, stem_features]``."""
    x = self.conv(self.stem_features, strides=2, name="stem")(x, train)
    return avg_pool_same(x, 3, 2)

  def transition(self, x, train, index):
    """Compress channels (1x1) and halve the resolution (2x2 average pool)."""
    out = max(int(x.shape[-1] * self.compression), 1)
    x = self.conv(out, kernel_size=1, name=f"transition{index}")(x, train)
    return avg_pool_same(x, 2, 2)


class DenseBackbone(_Common):
  """``[N, S, S, C] -> [N, S/16, S/16, C_out]`` (7x7x398 at the defaults)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    assert self.attention_placement in ("block", "layer"), self.attention_placement  # mer_jax.configuration
    x = self.stem(x, train)
    for b, num_layers in enumerate(self.block_layers):
      feats = [x]
      for i in range(num_layers):
        groups = [f.shape[-1] for f in feats]
        h = self.conv(self.growth_rate, name=f"block{b}_layer{i}", input_groups=groups)(
          jnp.concatenate(feats, -1), train
        )
        if self.attention_placement == "layer":
          h = self.attend(f"block{b}_layer{i}_attention")(h)
        feats.append(h)
      x = jnp.concatenate(feats, -1)
      if self.attention_placement == "block":
        x = self.attend(f"block{b}_attention")(x)
      if b < len(self.block_layers) - 1:
        x = self.transition(x, train, b)
    return x


class ResidualBackbone(_Common):
  """Table 12's residual extractor with the dense model's stage widths."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = self.stem(x, train)
    for b, num_layers in enumerate(self.block_layers):
      width = x.shape[-1] + self.growth_rate * num_layers  # the dense block's output width
      x = self.conv(width, kernel_size=1, name=f"stage{b}_project")(x, train)
      for u in range(math.ceil(num_layers / 2)):
        h = self.conv(self.residual_bottleneck, kernel_size=1, name=f"stage{b}_unit{u}_reduce")(x, train)
        h = self.conv(self.residual_bottleneck, name=f"stage{b}_unit{u}_conv")(h, train)
        h = self.conv(width, kernel_size=1, name=f"stage{b}_unit{u}_expand")(h, train)
        if self.attention_placement == "layer":
          h = self.attend(f"stage{b}_unit{u}_attention")(h)
        x = x + h
      if self.attention_placement == "block":
        x = self.attend(f"stage{b}_attention")(x)
      if b < len(self.block_layers) - 1:
        x = self.transition(x, train, b)
    return x
