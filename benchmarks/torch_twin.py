"""The mer_jax network (mer_jax.models, dense backbone) written again in PyTorch, for benchmarks only.

Same layers, same order, same padding and the same parameters as :func:`mer_jax.models.build_model`
for ``backbone='dense'`` and every attention kind / placement:

* ``ConvReluBN``: Conv (bias) -> ReLU -> BatchNorm (PyTorch ``momentum = 1 - flax momentum``, same epsilon);
* convolutions pad like XLA's ``'SAME'`` (asymmetric for the 5x5/2 stem: 1 before, 2 after at 112);
* the 3x3/2 stem average pool pads like flax ``avg_pool(padding='SAME')`` (zeros counted in the mean);
* channel attention (eqs. 5-6) with a shared MLP C -> C/r -> C and LeakyReLU, spatial attention (eqs. 7-8);
* head: adaptive average pool to ``head_pool`` (the bins of mer_jax.models.layers), flatten, Linear.

Tensors are NCHW (PyTorch's native layout). :func:`load_flax_variables` copies a flax variable dict into
the twin (kernels transposed, the head's rows reordered from HWC to CHW flattening) so that tests can
check that both compute the same logits, not only that they have the same parameter count.

torch is an optional dependency: ``.venv/bin/pip install torch==2.13.0`` (CPU wheel).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of XLA's 'SAME' along one axis of length ``size``."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
  h, w = x.shape[-2:]
  ph, pw = same_padding(h, kernel, stride), same_padding(w, kernel, stride)
  if ph == (0, 0) and pw == (0, 0):
    return x
  return F.pad(x, (pw[0], pw[1], ph[0], ph[1]))


class ConvReluBN(nn.Module):
  """``BN(ReLU(Conv(x)))`` with 'SAME' padding. [N, C_in, H, W] -> [N, features, H', W']."""

  def __init__(
    self, c_in: int, features: int, kernel: int, stride: int = 1, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3
  ):
    super().__init__()
    self.kernel, self.stride = kernel, stride
    symmetric = stride == 1 and kernel % 2 == 1
    self.pad_in_conv = symmetric  # stride-1 odd kernels: 'SAME' == symmetric padding (kernel // 2)
    self.conv = nn.Conv2d(c_in, features, kernel, stride=stride, padding=kernel // 2 if symmetric else 0)
    self.bn = nn.BatchNorm2d(features, eps=bn_epsilon, momentum=1.0 - bn_momentum)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if not self.pad_in_conv:
      x = _pad_same(x, self.kernel, self.stride)
    return self.bn(F.relu(self.conv(x)))


class ChannelAttention(nn.Module):
  """Eqs. (5)-(6). [N, C, H, W] -> same."""

  def __init__(self, channels: int, reduction: int, leaky_slope: float):
    super().__init__()
    hidden = max(channels // reduction, 1)
    self.fc0 = nn.Linear(channels, hidden)
    self.fc1 = nn.Linear(hidden, channels)
    self.slope = leaky_slope

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    mlp = lambda v: self.fc1(F.leaky_relu(self.fc0(v), self.slope))
    w = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    return x * w[:, :, None, None]


class SpatialAttention(nn.Module):
  """Eqs. (7)-(8). [N, C, H, W] -> same."""

  def __init__(self, kernel: int):
    super().__init__()
    self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return x * torch.sigmoid(self.conv(desc))


class MixedAttention(nn.Module):
  def __init__(self, kind: str, channels: int, reduction: int, leaky_slope: float, kernel: int):
    super().__init__()
    self.channel = ChannelAttention(channels, reduction, leaky_slope) if kind in ("channel", "mixed") else None
    self.spatial = SpatialAttention(kernel) if kind in ("spatial", "mixed") else None

  def forward(self, x):
    if self.channel is not None:
      x = self.channel(x)
    if self.spatial is not None:
      x = self.spatial(x)
    return x


def _adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The bins of mer_jax.models.layers.adaptive_pool_matrix (PyTorch's adaptive convention)."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


class DenseTwin(nn.Module):
  """The dense mixed-attention MER network. forward(x [N, C, H, W] float32) -> logits [N, num_classes]."""

  def __init__(
    self,
    image_size: int = 112,
    channels: int = 3,
    num_classes: int = 3,
    stem_features: int = 32,
    growth_rate: int = 24,
    block_layers: Sequence[int] = (5, 10, 10),
    compression: float = 0.5,
    kernel_size: int = 5,
    attention: str = "mixed",
    attention_placement: str = "block",
    reduction: int = 8,
    attention_kernel: int = 5,
    leaky_slope: float = 0.01,
    head_pool: int = 7,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
  ):
    super().__init__()
    conv = lambda cin, cout, k, s=1: ConvReluBN(cin, cout, k, s, bn_momentum, bn_epsilon)
    attend = lambda c: MixedAttention(attention, c, reduction, leaky_slope, attention_kernel)
    self.placement = attention_placement
    self.stem = conv(channels, stem_features, kernel_size, 2)
    size = -(-image_size // 2)
    self.pool_pad = same_padding(size, 3, 2)
    size = -(-size // 2)
    c = stem_features
    self.blocks = nn.ModuleList()
    self.layer_attn = nn.ModuleList()
    self.block_attn = nn.ModuleList()
    self.transitions = nn.ModuleList()
    for b, n in enumerate(block_layers):
      layers, attns = nn.ModuleList(), nn.ModuleList()
      for i in range(n):
        layers.append(conv(c + i * growth_rate, growth_rate, kernel_size))
        attns.append(attend(growth_rate) if attention_placement == "layer" else nn.Identity())
      self.blocks.append(layers)
      self.layer_attn.append(attns)
      c = c + n * growth_rate
      self.block_attn.append(attend(c) if attention_placement == "block" else nn.Identity())
      if b < len(block_layers) - 1:
        out = max(int(c * compression), 1)
        self.transitions.append(conv(c, out, 1))
        c = out
        size = -(-size // 2)
    self.out_channels, self.feature_size = c, size
    self.register_buffer("pool_h", torch.from_numpy(_adaptive_matrix(size, head_pool)), persistent=False)
    self.head = nn.Linear(head_pool * head_pool * c, num_classes)
    self.head_pool = head_pool

  def features(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stem(x)
    p = self.pool_pad
    x = F.avg_pool2d(F.pad(x, (p[0], p[1], p[0], p[1])), 3, 2)
    for b, (layers, attns) in enumerate(zip(self.blocks, self.layer_attn)):
      feats = [x]
      for layer, attn in zip(layers, attns):
        feats.append(attn(layer(torch.cat(feats, 1))))
      x = self.block_attn[b](torch.cat(feats, 1))
      if b < len(self.transitions):
        x = self.transitions[b](x)
        x = F.avg_pool2d(_pad_same(x, 2, 2), 2, 2)
    return x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    f = self.features(x)
    if f.shape[-1] != self.head_pool or f.shape[-2] != self.head_pool:
      f = torch.einsum("oh,nchw,pw->ncop", self.pool_h, f, self.pool_h)
    return self.head(f.flatten(1))


def from_model_config(cfg, image_size: int = 112, channels: int = 3) -> DenseTwin:
  """The twin of ``mer_jax.models.build_model(cfg)`` (``cfg`` = config.model; dense backbone only)."""
  if cfg.backbone != "dense":
    raise ValueError(f"the PyTorch twin covers backbone='dense' only, got {cfg.backbone!r}")
  return DenseTwin(
    image_size=image_size,
    channels=channels,
    num_classes=cfg.num_classes,
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
    head_pool=cfg.head_pool,
    bn_momentum=cfg.bn_momentum,
    bn_epsilon=cfg.bn_epsilon,
  )


def count_params(model: nn.Module) -> int:
  return int(sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------------------------
# Weight transfer flax -> torch (tests)
# ------------------------------------------------------------------------------------------------


def _t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32))


def _conv(dst: nn.Conv2d, src: dict) -> None:
  dst.weight.data.copy_(_t(src["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
  dst.bias.data.copy_(_t(src["bias"]))


def _dense(dst: nn.Linear, src: dict) -> None:
  dst.weight.data.copy_(_t(src["kernel"]).T)
  dst.bias.data.copy_(_t(src["bias"]))


def _unit(dst: ConvReluBN, params: dict, stats: dict) -> None:
  _conv(dst.conv, params["conv"])
  dst.bn.weight.data.copy_(_t(params["bn"]["scale"]))
  dst.bn.bias.data.copy_(_t(params["bn"]["bias"]))
  dst.bn.running_mean.copy_(_t(stats["bn"]["mean"]))
  dst.bn.running_var.copy_(_t(stats["bn"]["var"]))


def _attention(dst: MixedAttention, params: dict) -> None:
  if dst.channel is not None:
    _dense(dst.channel.fc0, params["channel"]["fc0"])
    _dense(dst.channel.fc1, params["channel"]["fc1"])
  if dst.spatial is not None:
    _conv(dst.spatial.conv, params["spatial"]["conv"])


@torch.no_grad()
def load_flax_variables(twin: DenseTwin, variables: dict) -> DenseTwin:
  """Copies ``{'params','batch_stats'}`` of the flax MERNet into ``twin`` (in place; returns it)."""
  p, s = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
  _unit(twin.stem, p["stem"], s["stem"])
  for b, (layers, attns) in enumerate(zip(twin.blocks, twin.layer_attn)):
    for i, (layer, attn) in enumerate(zip(layers, attns)):
      _unit(layer, p[f"block{b}_layer{i}"], s[f"block{b}_layer{i}"])
      if isinstance(attn, MixedAttention):
        _attention(attn, p.get(f"block{b}_layer{i}_attention", {}))
    if isinstance(twin.block_attn[b], MixedAttention):
      _attention(twin.block_attn[b], p.get(f"block{b}_attention", {}))
    if b < len(twin.transitions):
      _unit(twin.transitions[b], p[f"transition{b}"], s[f"transition{b}"])
  head = variables["params"]["head"]
  k = np.array(head["kernel"], np.float32)  # [(h, w, c), K] in flax's NHWC flattening
  hp, c = twin.head_pool, twin.out_channels
  k = k.reshape(hp, hp, c, -1).transpose(2, 0, 1, 3).reshape(c * hp * hp, -1)  # -> (c, h, w) rows
  twin.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
  twin.head.bias.copy_(_t(head["bias"]))
  return twin


if __name__ == "__main__":
  from mer_jax import config_defaults

  twin = from_model_config(config_defaults.get_model_config())
  print(
    f"PyTorch twin of the paper config: {count_params(twin):,} parameters, "
    f"features {twin.out_channels}x{twin.feature_size}x{twin.feature_size}"
  )
