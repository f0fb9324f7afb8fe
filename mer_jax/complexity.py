"""Table-13-style complexity report: input size, parameters, FLOPs per image.

``python -m mer_jax.complexity --config=configs/cde.py [--json]`` reports the
configured model first, then every ablation variant (attention none / channel /
spatial / mixed x backbone dense / residual). FLOPs come from XLA's HLO cost
analysis of the lowered, jitted inference forward pass at batch 1 (a
multiply-add counts as 2 FLOPs; taps on SAME padding are not counted), with the convolutions as XLA's own
(``conv_impl='xla'``), so the count is the network's, not that of the form a CPU runs. ``params`` counts
trainable parameters;
``batch_stats`` counts the BatchNorm moving statistics that Keras would add as "non-trainable params".
"""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from mer_jax import configuration
from mer_jax.errors import run_cli
from mer_jax.models import ATTENTION_KINDS, BACKBONES, build_model, count_params, init_variables


def xla_flops(model, variables, image_size: int, channels: int) -> float:
  """FLOPs of one inference forward pass on one image, from XLA's HLO cost analysis.

  The jitted forward pass is lowered (not compiled: shapes are enough) and XLA's
  cost analysis counts 2 FLOPs per multiply-add of every convolution/matmul tap
  that touches a real (non-padding) input, plus the elementwise work.
  ``variables`` may be arrays or ``jax.ShapeDtypeStruct`` leaves.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  cost = lowered.cost_analysis()
  if not cost:  # some backends only analyse compiled executables
    cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def complexity_row(model_cfg: ml_collections.ConfigDict, image_size: int, channels: int, variant: str) -> dict:
  # The network's own operation count, whatever form the convolutions run in on this machine: the 'cpu' form
  # (mer_jax.models.conv) computes the same function with matrix products that also multiply the zero taps of
  # small maps' borders, which XLA's count of a convolution leaves out.
  model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  model_cfg.conv_impl = "xla"
  model = build_model(model_cfg)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size, channels))
  return {
    "variant": variant,
    "input_size": f"{image_size}x{image_size}x{channels}",
    "params": count_params(variables["params"]),
    "batch_stats": count_params(variables["batch_stats"]),
    "flops": xla_flops(model, variables, image_size, channels),
  }


def report_rows(config: ml_collections.ConfigDict) -> list[dict]:
  """The configured model, then each (backbone, attention) ablation variant."""
  base = config.model
  rows = [complexity_row(base, config.image_size, config.channels, f"configured ({base.backbone}, {base.attention})")]
  for backbone, attention in itertools.product(BACKBONES, ATTENTION_KINDS):
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.backbone, cfg.attention = backbone, attention
    rows.append(complexity_row(cfg, config.image_size, config.channels, f"{backbone}, attention={attention}"))
  return rows


def format_table(rows: list[dict]) -> str:
  lines = [f"{'Variant':<34} {'Input size':>12} {'FLOPs (x10^6)':>14} {'Param (M)':>10} {'BN stats':>9}", "-" * 83]
  for r in rows:
    lines.append(
      f"{r['variant']:<34} {r['input_size']:>12} {r['flops'] / 1e6:>14.1f} "
      f"{r['params'] / 1e6:>10.3f} {r['batch_stats']:>9d}"
    )
  lines.append(
    "Paper (Table 13): 112x112, 6.26 x10^6 FLOPs, 3.115 M params (6.26e6 ~ 2 x params: see README 'Complexity')."
  )
  return "\n".join(lines)


def main(argv) -> None:
  """CLI entry. Flags are defined only when run as a program, so importing this module for
  :func:`report_rows` never clashes with another CLI's ``--config`` flag."""
  del argv

  def run():
    config = configuration.validate(configuration.require_config(flags.FLAGS.config, "--config"))
    rows = report_rows(config)
    if flags.FLAGS.json:
      print(json.dumps(rows, indent=2))
    else:
      print(format_table(rows))

  run_cli(run)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.", lock_config=True)
  flags.DEFINE_bool("json", False, "Print the rows as a JSON list instead of a table.")
  configuration.run_app(main)
