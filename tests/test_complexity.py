"""The Table-13 complexity report: rows, JSON keys, FLOPs from XLA, CLI errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mer_jax import complexity, config_defaults
from mer_jax.models import build_model, init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  c = config_defaults.get_base_config()
  c.image_size = 32
  c.model.stem_features, c.model.growth_rate, c.model.block_layers = 8, 4, (2, 2)
  c.model.reduction, c.model.residual_bottleneck = 2, 6
  return c


def _same_taps(n: int, k: int, s: int) -> int:
  """Kernel taps that land on real (non-padding) input along one axis of length n, SAME padding, stride s."""
  out = -(-n // s)
  lo = max((out - 1) * s + k - n, 0) // 2
  return sum(1 for o in range(out) for t in range(k) if 0 <= o * s + t - lo < n)


def analytic_matmul_flops(model, variables, image_size: int, channels: int) -> int:
  """2 x the multiply-adds of every nn.Conv / nn.Dense call of one forward pass on one image, counted from
  each call's input shape and layer settings (SAME convolutions: taps on padding are not counted)."""
  import flax.linen as nn

  counts = []

  def count(next_fun, args, kwargs, context):
    mod, x = context.module, args[0] if args else None
    if context.method_name == "__call__" and isinstance(mod, nn.Conv):
      assert mod.padding == "SAME" and mod.feature_group_count == 1 and x.ndim == 4, mod
      s = mod.strides or 1
      sh, sw = (s, s) if isinstance(s, int) else s
      kh, kw = mod.kernel_size
      counts.append(
        2 * x.shape[0] * _same_taps(x.shape[1], kh, sh) * _same_taps(x.shape[2], kw, sw) * x.shape[3] * mod.features
      )
    elif context.method_name == "__call__" and isinstance(mod, nn.Dense):
      counts.append(2 * int(np.prod(x.shape[:-1])) * x.shape[-1] * mod.features)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  with nn.intercept_methods(count):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert counts
  return sum(counts)


def test_xla_flops_match_an_analytic_count_for_a_single_conv():
  import flax.linen as nn

  class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Conv(8, (5, 5), padding="SAME", use_bias=False)(x)

  model = OneConv()
  v = model.init(jax.random.key(0), jax.numpy.zeros((1, 16, 16, 3)))
  flops = complexity.xla_flops(model, v, 16, 3)
  # XLA counts the multiply-adds that touch real (non-padding) pixels: along each axis of 16 with a
  # 5-tap SAME kernel, 16*5 taps minus the 2+1 missing at each border.
  valid_taps_per_axis = 16 * 5 - 2 * (2 + 1)
  assert flops == pytest.approx(2 * valid_taps_per_axis**2 * 8 * 3, rel=0.01)


def test_rows_cover_every_variant_with_the_configured_model_first():
  rows = complexity.report_rows(_tiny_config())
  assert len(rows) == 1 + 2 * 4
  assert rows[0]["variant"].startswith("configured (dense, mixed)")
  assert {"variant", "input_size", "params", "flops"} <= set(rows[0])
  by_name = {r["variant"]: r for r in rows[1:]}
  assert rows[0]["params"] == by_name["dense, attention=mixed"]["params"]
  assert rows[0]["flops"] == by_name["dense, attention=mixed"]["flops"]
  assert by_name["dense, attention=none"]["params"] < by_name["dense, attention=channel"]["params"]
  for r in rows[1:]:
    assert r["input_size"] == "32x32x3"
    backbone, attention = r["variant"].split(", attention=")
    cfg = ml_collections.ConfigDict(_tiny_config().model.to_dict())
    cfg.backbone, cfg.attention = backbone, attention
    model = build_model(cfg)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 32, 3))  # noqa: B023 (called here)
    # XLA adds the elementwise work (BatchNorm, ReLU, pooling, attention gates) to the convolutions and
    # dense layers: measured 6-12 % on these small layers, where activations are large next to the kernels.
    assert 1.0 < r["flops"] / analytic_matmul_flops(model, variables, 32, 3) < 1.15, r


def test_cli_json_first_row_is_the_configured_model_and_paper_size():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "mer_jax.complexity",
      "--config=configs/cde.py",
      "--json",
      "--config.model.attention=channel",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  rows = json.loads(out.stdout)
  assert rows[0]["variant"] == "configured (dense, channel)"
  assert rows[0]["input_size"] == "112x112x3"
  assert abs(rows[0]["params"] - 3.115e6) / 3.115e6 < 0.02
  # ~0.87 GFLOPs (see the README note on the paper's 6.26e6): the convolutions and dense layers counted from
  # their shapes, plus XLA's elementwise work (measured 0.3 % of the total at 112x112).
  from configs import cde

  cfg = cde.get_config().model
  cfg.attention = "channel"
  model = build_model(cfg)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 112, 3))
  assert 1.0 < rows[0]["flops"] / analytic_matmul_flops(model, variables, 112, 3) < 1.01


@pytest.mark.parametrize(
  "args,needle",
  [
    (["--config=configs/does_not_exist.py"], "cannot read the config file configs/does_not_exist.py"),
    (["--config=configs/cde.py", "--config.model.atention=none"], "unknown config key '--config.model.atention'"),
    (["--config=configs/cde.py", "--config.model.growth_rate=abc"], "growth_rate"),
    ([], "--config is required"),
    (["--config=configs/cde.py", "--config.model.backbone=vgg"], "config.model.backbone='vgg'"),
  ],
)
def test_cli_user_errors_are_one_readable_message(args, needle):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
    [sys.executable, "-m", "mer_jax.complexity", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 2
  assert needle in out.stderr
  assert "Traceback" not in out.stderr


def test_flops_are_the_networks_whatever_form_the_convolutions_run_in():
  """conv_impl='cpu' runs small maps' convolutions as matrix products that also multiply their border's zero
  taps (1.29x XLA's count on this tiny model); the report counts the network, so every row is the same."""
  rows = {}
  for impl in ("xla", "cpu"):
    cfg = _tiny_config()
    cfg.model.conv_impl = impl
    rows[impl] = complexity.report_rows(cfg)
  assert [r["flops"] for r in rows["cpu"]] == [r["flops"] for r in rows["xla"]]
