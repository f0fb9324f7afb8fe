"""The model's BatchNorm (order-independent batch statistics) and how the training loop compiles on a CPU.

* :class:`mer_jax.models.layers.BatchNorm` is flax's ``BatchNorm(use_fast_variance=False)`` in float64 (outputs,
  running-statistics update, eval mode, gradients, variable names);
* its float32 statistics stay accurate when the compiler sums the batch sequentially (XLA:CPU without YNNPACK
  fusions, what ``config.cpu_fast_conv`` selects where the devices are fewer than the cores);
* the loop's compiled programs on a CPU really are compiled without YNNPACK fusions when the setting says so
  (and with them otherwise), and other platforms keep XLA's defaults.
"""

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.errors import ConfigError
from mer_jax.models import build_model, init_variables
from mer_jax.models.layers import BatchNorm, batch_statistics
from mer_jax.train import loop, parallel
from mer_jax.train.state import create_state, model_apply

MOMENTUM, EPSILON = 0.9, 1e-3


def _pair(train: bool):
  kw = dict(use_running_average=not train, momentum=MOMENTUM, epsilon=EPSILON, dtype=jnp.float64)
  return BatchNorm(param_dtype=jnp.float64, **kw), nn.BatchNorm(use_fast_variance=False, param_dtype=jnp.float64, **kw)


def _random_variables(rng, c):
  """Non-trivial parameters and running statistics (float64) for both modules."""
  return {
    "params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, c)), "bias": jnp.asarray(rng.normal(size=c))},
    "batch_stats": {"mean": jnp.asarray(rng.normal(size=c) * 3), "var": jnp.asarray(rng.uniform(0.2, 4.0, c))},
  }


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 4)])
def test_batchnorm_equals_flax_two_pass_batchnorm_in_float64(shape):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    # a large, different mean per channel, so that the shift is not a no-op
    x = jnp.asarray(rng.normal(size=shape) * rng.uniform(0.1, 3.0, shape[-1]) + rng.normal(size=shape[-1]) * 50)
    ours, theirs = _pair(train=True)
    v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    # same variable names, shapes and initial values (flax creates the statistics float32 in both)
    assert jax.tree.map(lambda a: (a.shape, str(a.dtype)), v_ours) == jax.tree.map(
      lambda a: (a.shape, str(a.dtype)), v_theirs
    )
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs)):
      np.testing.assert_array_equal(a, b)
    variables = _random_variables(rng, shape[-1])
    # training mode: output and the running-average update
    y_ours, up_ours = ours.apply(variables, x, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-12, atol=1e-12)
    for k in ("mean", "var"):
      np.testing.assert_allclose(up_ours["batch_stats"][k], up_theirs["batch_stats"][k], rtol=1e-12, atol=1e-12)
    axes = tuple(range(len(shape) - 1))
    xn = np.asarray(x)
    want_mean = MOMENTUM * np.asarray(variables["batch_stats"]["mean"]) + (1 - MOMENTUM) * xn.mean(axes)
    np.testing.assert_allclose(up_ours["batch_stats"]["mean"], want_mean, rtol=1e-12)
    # gradients with respect to the input and the parameters
    loss = lambda mod: lambda v, x: jnp.sum(jnp.sin(mod.apply(v, x, mutable=["batch_stats"])[0]))
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(variables, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # eval mode: the running statistics, no update, independent of the rest of the batch
    ours, theirs = _pair(train=False)
    y_ours, up = ours.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, theirs.apply(variables, x), rtol=1e-12, atol=1e-12)
    for k in ("mean", "var"):
      np.testing.assert_array_equal(up["batch_stats"][k], variables["batch_stats"][k])
    np.testing.assert_allclose(ours.apply(variables, x[:1]), y_ours[:1], rtol=1e-12, atol=1e-12)


def test_initialising_does_not_update_the_running_statistics():
  x = jnp.full((4, 3, 3, 2), 5.0)
  v = BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(2))
  np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(2))


def test_float32_statistics_of_a_large_mean_are_accurate_under_the_fast_cpu_compilation():
  """Values 100 + U(0, 1) over N x H x W = 32 x 28 x 28: a plain float32 mean compiled without YNNPACK fusions
  is ~6e-4 off (docs/perf.md); the shifted mean is within a few float32 spacings of 100 (7.6e-6)."""
  rng = np.random.default_rng(0)
  x = (100.0 + rng.uniform(size=(32, 28, 28, 24))).astype(np.float32)
  stats = parallel.jit(lambda x: batch_statistics(x, jnp.float32), mode="on")
  mean, var = (np.asarray(a, np.float64) for a in stats(x))
  xd = x.astype(np.float64)
  want_mean, want_var = xd.mean(axis=(0, 1, 2)), xd.var(axis=(0, 1, 2))
  assert np.max(np.abs(mean - want_mean)) < 3e-5, np.max(np.abs(mean - want_mean))
  np.testing.assert_allclose(var, want_var, rtol=1e-4)
  # the gradient of the mean is that of a plain mean (the shift is a constant): 1/n for every element
  grad = jax.grad(lambda x: jnp.sum(batch_statistics(x, jnp.float32)[0]))(jnp.asarray(x[:2, :3, :3]))
  np.testing.assert_allclose(grad, np.full(grad.shape, 1 / 18), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The loop's compiler options
# ---------------------------------------------------------------------------------------------


def _ynn_fusions(compiled_text: str) -> int:
  return len(re.findall(r"__ynn_fusion", compiled_text))


def test_loop_compiles_cpu_steps_without_ynnpack_fusions():
  if jax.default_backend() != "cpu":
    pytest.skip("the option applies to XLA:CPU only")
  cfg = config_defaults.get_model_config(num_classes=3)
  cfg.stem_features, cfg.growth_rate, cfg.block_layers, cfg.reduction = 8, 4, (2, 2), 2
  model = build_model(cfg)
  apply_fn = model_apply(model)
  v = init_variables(model, jax.random.key(0), 32)
  state = create_state(apply_fn, v, config_defaults.get_train_config(batch_size=8, epochs=1))
  x, y = jnp.ones((8, 32, 32, 3)), jnp.zeros(8, jnp.int32)
  mesh = parallel.make_mesh(jax.devices()[:1])
  counts = {}
  for mode in ("on", "off", "auto"):
    fns = loop._compiled(mesh, False, apply_fn, mode)
    counts[mode] = (
      _ynn_fusions(fns["train"].lower(state, x, y).compile().as_text()),
      _ynn_fusions(fns["logits"].lower(v, x).compile().as_text()),
    )
  assert counts["on"] == (0, 0), counts  # no YNNPACK fusion in the train or the eval step
  assert counts["off"][0] > 0 and counts["off"][1] > 0, counts  # XLA's defaults do fuse (the check can see them)
  # the default on one device: without YNNPACK fusions when the host has more than one core
  assert counts["auto"] == (counts["on"] if parallel.host_cores() > 1 else counts["off"]), counts


def test_compiler_options_only_on_a_cpu_and_only_when_asked(monkeypatch):
  def fake_mesh(platform, n):
    devices = [types.SimpleNamespace(platform=platform, process_index=jax.process_index()) for _ in range(n)]
    return types.SimpleNamespace(devices=np.array(devices))

  ynn_off = {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setattr(parallel, "host_cores", lambda: 4)
  for n in (1, 3, 4, 8):
    assert parallel.compiler_options(fake_mesh("cpu", n), "on") == ynn_off
    assert parallel.compiler_options(fake_mesh("cpu", n), "off") is None
    # auto: only while the devices leave cores idle
    assert parallel.compiler_options(fake_mesh("cpu", n), "auto") == (ynn_off if n < 4 else None), n
    for platform in ("gpu", "tpu"):
      assert parallel.compiler_options(fake_mesh(platform, n), "on") is None
  assert config_defaults.get_base_config().cpu_fast_conv == "auto"
  assert loop._compiled.__wrapped__.__defaults__ == ("auto",)  # what fit / fit_many / predict_probs default to
  with pytest.raises(ConfigError, match=r"config.cpu_fast_conv='yes': use one of 'auto', 'on', 'off'"):
    parallel.compiler_options(fake_mesh("cpu", 1), "yes")
