"""The network of Sections 3.3-3.4: sizes, shapes, gradients, attention semantics."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.errors import ConfigError
from mer_jax.models import (ATTENTION_KINDS, ChannelAttention, MixedAttention, SpatialAttention, build_model,
                            count_params, init_variables)
from mer_jax.models.layers import adaptive_avg_pool

PAPER_PARAMS = 3.115e6


def paper_cfg(**kw):
  cfg = config_defaults.get_model_config(num_classes=3)
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def shapes_only_params(cfg, size=112, channels=3):
  model = build_model(cfg)
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), size, channels))
  return count_params(shapes["params"])


def tiny_cfg(**kw):
  cfg = paper_cfg(stem_features=8, growth_rate=4, block_layers=(2, 2), reduction=2, residual_bottleneck=6)
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def test_paper_configuration_has_the_paper_parameter_count():
  n = shapes_only_params(paper_cfg())
  assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.02, n
  assert n == 3_135_541     # documented in mer_jax/models/backbones.py and the README


@pytest.mark.parametrize("backbone", ["dense", "residual"])
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_variant_parameter_counts(backbone, attention):
  n = shapes_only_params(paper_cfg(backbone=backbone, attention=attention))
  # Every ablation variant stays within 4% of the paper's size (attention adds ~70k, spatial 51 params).
  assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.04, n
  none = shapes_only_params(paper_cfg(backbone=backbone, attention="none"))
  c = 32 + 24 * 5, (32 + 24 * 5) // 2 + 24 * 10, ((32 + 24 * 5) // 2 + 24 * 10) // 2 + 24 * 10   # block widths
  channel_extra = sum(w * (w // 8) + w // 8 + (w // 8) * w + w for w in c)
  spatial_extra = 3 * (5 * 5 * 2 + 1)
  expected = none + {"none": 0, "channel": channel_extra, "spatial": spatial_extra,
                     "mixed": channel_extra + spatial_extra}[attention]
  assert n == expected


def test_forward_shapes_and_jit():
  cfg = paper_cfg()
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 112)
  x = jax.random.uniform(jax.random.key(1), (2, 112, 112, 3))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))
  logits, feats = fwd(variables, x)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert feats.shape == (2, 7, 7, 398)
  assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("size", [48, 64, 120])
def test_other_input_sizes_pool_to_7x7(size):
  cfg = tiny_cfg()
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), size)
  logits = model.apply(variables, jnp.ones((1, size, size, 3)), train=False)
  assert logits.shape == (1, 3)
  feats_c = 8 + 2 * 4                    # block 0 output
  feats_c = feats_c // 2 + 2 * 4         # block 1 output
  assert variables["params"]["head"]["kernel"].shape == (49 * feats_c, 3)


@pytest.mark.parametrize("backbone,attention", [
    ("dense", "none"), ("dense", "mixed"), ("residual", "channel"), ("residual", "spatial")])
def test_gradients_reach_every_parameter(backbone, attention):
  cfg = tiny_cfg(backbone=backbone, attention=attention)
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  y = jnp.array([0, 1, 2, 1])

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  grads = jax.grad(loss)(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert flat
  for path, g in flat:
    assert float(jnp.max(jnp.abs(g))) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_batchnorm_train_updates_stats_and_eval_uses_them():
  cfg = tiny_cfg()
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3)) * 3 + 1
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode is deterministic and does not depend on the other samples of the batch.
  one = model.apply(variables, x[:1], train=False)
  many = model.apply(variables, x, train=False)
  np.testing.assert_allclose(one, many[:1], rtol=1e-5, atol=1e-5)


def test_channel_attention_weights_match_eq5():
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 16))
  mod = ChannelAttention(reduction=4, leaky_slope=0.2)
  variables = mod.init(jax.random.key(1), x)
  out, state = mod.apply(variables, x, mutable=["intermediates"])
  mc = state["intermediates"]["channel_attention"][0]
  assert mc.shape == (2, 16)
  assert np.all((np.asarray(mc) > 0) & (np.asarray(mc) < 1))
  # Independent evaluation of eq. (5) in numpy.
  p = variables["params"]
  xn = np.asarray(x, np.float64)

  def mlp(v):
    h = v @ np.asarray(p["fc0"]["kernel"]) + np.asarray(p["fc0"]["bias"])
    h = np.where(h > 0, h, 0.2 * h)
    return h @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"])

  z = mlp(xn.mean(axis=(1, 2))) + mlp(xn.max(axis=(1, 2)))
  ref = 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(mc, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, xn * ref[:, None, None, :], rtol=1e-5, atol=1e-6)   # eq. (6)
  assert p["fc0"]["kernel"].shape == (16, 4) and p["fc1"]["kernel"].shape == (4, 16)


def test_spatial_attention_weights_match_eq7():
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 5))
  mod = SpatialAttention(kernel_size=5)
  variables = mod.init(jax.random.key(1), x)
  out, state = mod.apply(variables, x, mutable=["intermediates"])
  ms = np.asarray(state["intermediates"]["spatial_attention"][0])
  assert ms.shape == (2, 9, 7, 1)
  assert np.all((ms > 0) & (ms < 1))
  # Independent 'SAME' 5x5 cross-correlation of [mean_c, max_c] in numpy.
  xn = np.asarray(x, np.float64)
  desc = np.stack([xn.mean(-1), xn.max(-1)], -1)
  k = np.asarray(variables["params"]["conv"]["kernel"], np.float64)   # [5, 5, 2, 1]
  pad = np.pad(desc, ((0, 0), (2, 2), (2, 2), (0, 0)))
  z = np.zeros((2, 9, 7))
  for i in range(9):
    for j in range(7):
      z[:, i, j] = np.einsum("nhwc,hwc->n", pad[:, i:i + 5, j:j + 5, :], k[..., 0])
  z += float(variables["params"]["conv"]["bias"][0])
  ref = 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(ms[..., 0], ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, xn * ref[..., None], rtol=1e-4, atol=1e-5)   # eq. (8)


def test_mixed_is_channel_then_spatial():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  mixed = MixedAttention(kind="mixed", reduction=2)
  v = mixed.init(jax.random.key(1), x)
  out = mixed.apply(v, x)
  h1 = ChannelAttention(reduction=2).apply({"params": v["params"]["channel"]}, x)
  h2 = SpatialAttention().apply({"params": v["params"]["spatial"]}, h1)
  np.testing.assert_allclose(out, h2, rtol=1e-6)


def test_attention_none_is_identity_on_the_skip_path():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  mod = MixedAttention(kind="none")
  v = mod.init(jax.random.key(1), x)
  assert not jax.tree_util.tree_leaves(v)        # no parameters
  np.testing.assert_array_equal(mod.apply(v, x), x)
  # In the whole network: with attention=none, no attention parameters exist and nothing is sown.
  cfg = tiny_cfg(attention="none")
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  _, state = model.apply(variables, jnp.ones((1, 32, 32, 3)), train=False, mutable=["intermediates"])
  assert "intermediates" not in state or not jax.tree_util.tree_leaves(state["intermediates"])
  assert not any("attention" in jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(variables["params"])[0])


def test_attention_sown_once_per_block_with_block_shapes():
  cfg = tiny_cfg(attention="mixed")
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  _, state = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=False, mutable=["intermediates"])
  inter = state["intermediates"]["backbone"]
  # 32 -> stem /4 -> 8x8 block0 (8+2*4=16 ch) -> transition /2 -> 4x4 block1 (8+8=16 ch)
  assert inter["block0_attention"]["channel"]["channel_attention"][0].shape == (2, 16)
  assert inter["block0_attention"]["spatial"]["spatial_attention"][0].shape == (2, 8, 8, 1)
  assert inter["block1_attention"]["spatial"]["spatial_attention"][0].shape == (2, 4, 4, 1)


def test_layer_placement_attends_each_new_feature_map():
  cfg = tiny_cfg(attention="channel", attention_placement="layer")
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  names = [k for k in variables["params"]["backbone"] if "attention" in k]
  assert sorted(names) == ["block0_layer0_attention", "block0_layer1_attention",
                           "block1_layer0_attention", "block1_layer1_attention"]


def test_dense_layer_order_is_conv_relu_bn():
  """Eq. (4): BN(ReLU(Conv(.))) - after BN in train mode each channel has mean ~0, and the
  pre-BN activations (recovered through the BN affine) are non-negative."""
  cfg = tiny_cfg(attention="none")
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
  mean = np.asarray(state["batch_stats"]["backbone"]["stem"]["bn"]["mean"])
  # The running mean moved from 0 towards the batch mean of ReLU outputs, which is >= 0.
  assert np.all(mean >= 0) and np.any(mean > 0)


def test_batchnorm_variance_survives_a_large_mean():
  """Train-mode BN of activations ~1000 +- 0.05 (|mean| >> std) equals the float64 two-pass reference;
  E[x^2] - E[x]^2 in float32 would lose the variance (1e6 has a float32 spacing of 0.0625)."""
  from mer_jax.models.layers import ConvReluBN
  layer = ConvReluBN(features=2, kernel_size=1)
  x = 1000.0 + 0.05 * np.random.default_rng(0).standard_normal((8, 4, 4, 2)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x, train=True)
  params = dict(variables["params"])
  params["conv"] = {"kernel": jnp.eye(2, dtype=jnp.float32).reshape(1, 1, 2, 2), "bias": jnp.zeros(2)}
  out, _ = layer.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                       mutable=["batch_stats"])
  y = x.astype(np.float64)
  ref = (y - y.mean(axis=(0, 1, 2))) / np.sqrt(y.var(axis=(0, 1, 2)) + layer.bn_epsilon)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-2, atol=2e-2)


def test_adaptive_pool_matches_definition():
  x = jax.random.normal(jax.random.key(0), (1, 10, 9, 2))
  y = np.asarray(adaptive_avg_pool(x, 4))
  xn = np.asarray(x)
  for i in range(4):
    for j in range(4):
      h0, h1 = (i * 10) // 4, -((-(i + 1) * 10) // 4)
      w0, w1 = (j * 9) // 4, -((-(j + 1) * 9) // 4)
      np.testing.assert_allclose(y[0, i, j], xn[0, h0:h1, w0:w1].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value,needle", [
    ("backbone", "vgg", "config.model.backbone"),
    ("attention", "self", "config.model.attention"),
    ("dtype", "float16", "config.model.dtype"),
    ("attention_placement", "head", "config.model.attention_placement"),
])
def test_bad_model_config_is_a_clear_error(field, value, needle):
  cfg = tiny_cfg()
  setattr(cfg, field, value)
  with pytest.raises(ConfigError, match=needle):
    build_model(cfg)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = tiny_cfg(dtype="bfloat16")
  model = build_model(cfg)
  variables = init_variables(model, jax.random.key(0), 32)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
  logits = model.apply(variables, jnp.ones((1, 32, 32, 3)), train=False)
  assert logits.dtype == jnp.float32


def test_paper_network_gradients_match_a_float64_reference():
  """One training-mode gradient of the paper network (112x112, batch 8) in float32 vs the same in float64
  (x64 enabled in a subprocess): every parameter's gradient within 1e-4 of its largest entry. Guards against
  numerically fragile paths (flax's one-pass BN variance; XLA:CPU without YNNPACK: up to 8% off,
  benchmarks/RESULTS.md log entry 16)."""
  import subprocess
  import sys
  import textwrap
  code = textwrap.dedent("""
      import jax
      jax.config.update("jax_enable_x64", True)
      import jax.numpy as jnp, numpy as np
      from mer_jax import config_defaults
      from mer_jax.models import build_model, init_variables
      model = build_model(config_defaults.get_model_config(num_classes=3))
      v = init_variables(model, jax.random.key(0), 112, 3)
      rng = np.random.default_rng(0)
      x = rng.uniform(size=(8, 112, 112, 3)).astype(np.float32)
      y = jnp.asarray(rng.integers(0, 3, 8))
      def grad(params, stats, x):
        def loss(p):
          logits, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
          z = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
          return -jnp.mean(jnp.take_along_axis(z, y[:, None], axis=-1))
        return jax.grad(loss)(params)
      g32 = jax.jit(grad)(v["params"], v["batch_stats"], x)
      f64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
      g64 = jax.jit(grad)(f64(v["params"]), f64(v["batch_stats"]), jnp.asarray(x, jnp.float64))
      worst = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                  for a, b in zip(jax.tree_util.tree_leaves(g32), jax.tree_util.tree_leaves(g64)))
      print("WORST", worst)
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  worst = float(out.stdout.split("WORST")[-1])
  assert worst < 1e-4, worst
