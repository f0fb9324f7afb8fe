"""The paper's network (Sections 3.3-3.4) and its ablation variants (Tables 11-12)."""

from mer_jax.models.attention import ATTENTION_KINDS, ChannelAttention, MixedAttention, SpatialAttention
from mer_jax.models.backbones import DenseBackbone, ResidualBackbone
from mer_jax.models.network import BACKBONES, MERNet, build_model, count_params, init_variables

__all__ = [
  "ATTENTION_KINDS",
  "BACKBONES",
  "ChannelAttention",
  "DenseBackbone",
  "MERNet",
  "MixedAttention",
  "ResidualBackbone",
  "SpatialAttention",
  "build_model",
  "count_params",
  "init_variables",
]
