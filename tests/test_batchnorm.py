"""The model's BatchNorm (order-independent batch statistics) and how the training loop compiles on a CPU.

* :class:`mer_jax.models.layers.BatchNorm` is flax's ``BatchNorm(use_fast_variance=False)`` in float64 (outputs,
  running-statistics update, eval mode, gradients, variable names);
* its float32 statistics stay accurate when the compiler sums the batch sequentially (XLA:CPU without YNNPACK
  fusions, what ``config.cpu_fast_conv`` selects where the devices are fewer than the cores);
* the loop's compiled programs on a CPU really are compiled without YNNPACK fusions when the setting says so
  (and with them otherwise), and other platforms keep XLA's defaults.
"""

import json
import os
import re
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.errors import ConfigError
from mer_jax.models import build_model, init_variables
from mer_jax.models.layers import BatchNorm, batch_norm_train, batch_statistics
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


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 4), (3, 9, 2)])
def test_closed_form_gradient_equals_autodiff_of_the_plain_formula_in_float64(shape):
  """batch_norm_train's custom gradient, with the cotangents of all three outputs (y, mean, var), against JAX's
  derivative of the textbook formula (plain mean and variance, no shift)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    c = shape[-1]
    x = jnp.asarray(rng.normal(size=shape) * rng.uniform(0.1, 3.0, c) + rng.normal(size=c) * 20)
    scale, bias = jnp.asarray(rng.uniform(0.5, 2.0, c)), jnp.asarray(rng.normal(size=c))
    a, b = jnp.asarray(rng.normal(size=c)), jnp.asarray(rng.normal(size=c))
    axes = tuple(range(len(shape) - 1))

    def plain(x, scale, bias):
      mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
      return (x - mean) * jax.lax.rsqrt(var + EPSILON) * scale + bias, mean, var

    def ours(x, scale, bias):
      return batch_norm_train(x, scale, bias, EPSILON, jnp.float64, jnp.float64)

    def loss(f):
      def value(x, scale, bias):
        y, mean, var = f(x, scale, bias)
        return jnp.sum(jnp.sin(y)) + jnp.sum(a * mean) + jnp.sum(b * var)

      return value

    for got, want in zip(ours(x, scale, bias), plain(x, scale, bias)):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    g_ours = jax.grad(loss(ours), argnums=(0, 1, 2))(x, scale, bias)
    g_plain = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
    for got, want in zip(g_ours, g_plain):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


_MESH_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P
from mer_jax.models.layers import BatchNorm
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
x = np.random.default_rng(0).normal(size=(8, 14, 14, 6)).astype(np.float32)
x = jax.device_put(x, NamedSharding(mesh, P("data")))
out = {}
for name, mod in (("ours", BatchNorm()), ("flax", nn.BatchNorm(use_running_average=False, use_fast_variance=False))):
  v = jax.device_put(mod.init(jax.random.key(0), np.ones((2, 14, 14, 6), np.float32)), NamedSharding(mesh, P()))
  loss = lambda v, x: jnp.sum(jnp.sin(mod.apply(v, x, mutable=["batch_stats"])[0]))
  shardings = (NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))
  text = jax.jit(jax.grad(loss, argnums=(0, 1)), out_shardings=shardings).lower(v, x).compile().as_text()
  out[name] = {op: text.count(" " + op + "(") + text.count(" " + op + "-start(")
               for op in ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")}
print("RESULT" + json.dumps(out))
"""


def _run_on_cpu_devices(script: str, devices: int) -> dict:
  """Runs ``script`` in a fresh process with ``devices`` XLA CPU devices; the JSON it prints after 'RESULT'."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=root)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.split("RESULT", 1)[1])


def test_batchnorm_backward_on_a_data_parallel_mesh_synchronises_once():
  """Batch sharded over 2 devices, forward and backward of one layer: three all-reduces forward (the first
  sample's mean as the shift, the mean, the variance) and one backward (sum(dy) and sum(dy * xhat) together:
  the closed-form gradient; differentiating the statistics' arithmetic takes two), as many as flax's two-pass
  BatchNorm, and no other communication."""
  out = _run_on_cpu_devices(_MESH_SCRIPT, 2)
  none = {"all-gather": 0, "collective-permute": 0, "all-to-all": 0, "reduce-scatter": 0}
  assert out["ours"] == {"all-reduce": 4, **none}, out
  assert out["flax"]["all-reduce"] == out["ours"]["all-reduce"], out


_SHARD_MAP_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import PartitionSpec as P
from mer_jax.models.layers import BatchNorm, batch_norm_train
n = jax.device_count()
mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(3)
c = 5
x = rng.normal(size=(4 * n, 3, 3, c)) * rng.uniform(0.1, 3.0, c) + rng.normal(size=c) * 20
scale, bias = rng.uniform(0.5, 2.0, c), rng.normal(size=c)
a, b = rng.normal(size=c), rng.normal(size=c)

def loss(y, mean, var, copies):  # every device's loss sees the (same) statistics: n copies of their terms
  return jnp.sum(jnp.sin(y)) + copies * (jnp.sum(a * mean) + jnp.sum(b * var))

def whole(x, scale, bias):
  out = batch_norm_train(x, scale, bias, 1e-3, jnp.float64, jnp.float64)
  return loss(*out, n), out

def share(x, scale, bias):
  def f(x, scale, bias):
    out = batch_norm_train(x, scale, bias, 1e-3, jnp.float64, jnp.float64, "data")
    return loss(*out, 1), out
  (_, out), (dx, ds, db) = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
  return out, dx, jax.lax.psum(ds, "data"), jax.lax.psum(db, "data")

(_, want_out), want_g = jax.value_and_grad(whole, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
specs = ((P("data"), P(), P()), P("data"), P(), P())
got_out, *got_g = jax.jit(jax.shard_map(share, mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=specs,
                                         check_vma=False))(x, scale, bias)
err = lambda g, w: float(np.abs(np.asarray(g) - np.asarray(w)).max() / np.abs(np.asarray(w)).max())
res = {k: err(g, w) for k, g, w in zip(("y", "mean", "var"), got_out, want_out)}
res.update({k: err(g, w) for k, g, w in zip(("dx", "dscale", "dbias"), got_g, want_g)})

module = BatchNorm(momentum=0.9, epsilon=1e-3, dtype=jnp.float64, param_dtype=jnp.float64)
v = module.init(jax.random.key(0), x[:2])
_, want_stats = module.apply(v, x, mutable=["batch_stats"])
sharded = BatchNorm(momentum=0.9, epsilon=1e-3, dtype=jnp.float64, param_dtype=jnp.float64, axis_name="data")
run = lambda v, x: sharded.apply(v, x, mutable=["batch_stats"])[1]
got_stats = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False))(v, x)
for k in ("mean", "var"):
  res["running_" + k] = err(got_stats["batch_stats"][k], want_stats["batch_stats"][k])
print("RESULT" + json.dumps(res))
"""


def test_batchnorm_with_an_axis_name_under_shard_map_equals_the_whole_batch_in_float64():
  """The batch split over 4 devices with ``shard_map``, BatchNorm told the axis (``axis_name``): outputs, batch
  statistics and running averages equal the one-device layer's on the whole batch, and so do the gradients, with
  cotangents on all three outputs (y, mean, var): ``dx`` per device, ``scale`` / ``bias`` as the sum of the
  devices' shares. The share is what lets a data-parallel step average every parameter's gradient alike; a
  layer that returned the whole batch's sums there would be counted 4 times."""
  out = _run_on_cpu_devices(_SHARD_MAP_SCRIPT, 4)
  assert set(out) == {"y", "mean", "var", "dx", "dscale", "dbias", "running_mean", "running_var"}, out
  assert max(out.values()) < 1e-10, out


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
  mesh = parallel.make_mesh(jax.devices()[:1])
  x, y = jnp.ones((8, 32, 32, 3)), jnp.zeros(8, jnp.int32)
  counts = {}
  for impl in ("cpu", "xla"):
    cfg = config_defaults.get_model_config(num_classes=3)
    cfg.stem_features, cfg.growth_rate, cfg.block_layers, cfg.reduction = 8, 4, (2, 2), 2
    cfg.conv_impl = impl
    model = build_model(cfg)
    apply_fn = model_apply(model)
    v = init_variables(model, jax.random.key(0), 32)
    state = create_state(apply_fn, v, config_defaults.get_train_config(batch_size=8, epochs=1))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), v)
    for mode in ("on", "off", "auto"):
      fns = loop._compiled(mesh, False, apply_fn, mode)
      folds = loop._compiled(mesh, True, apply_fn, mode)  # vmapped over 2 folds
      counts[impl, mode] = (
        _ynn_fusions(fns["train"].lower(state, x, y).compile().as_text()),
        _ynn_fusions(fns["logits"].lower(v, x).compile().as_text()),
        _ynn_fusions(folds["logits"].lower(stacked, jnp.stack([x, x])).compile().as_text()),
      )
  for impl in ("cpu", "xla"):
    assert counts[impl, "on"] == (0, 0, 0), counts  # no YNNPACK fusion in the train or the eval steps
    assert min(counts[impl, "off"]) > 0, counts  # XLA's defaults do fuse (the check can see them)
  # the default on one device: without YNNPACK fusions when the host has more than one core, for fold-vmapped
  # programs and conv_impl='xla' models; a plain conv_impl='cpu' step keeps XLA's defaults (faster there)
  idle = parallel.host_cores() > 1
  assert counts["xla", "auto"] == (counts["xla", "on"] if idle else counts["xla", "off"]), counts
  plain_cpu, folds_cpu = counts["cpu", "auto"][:2], counts["cpu", "auto"][2]
  assert plain_cpu == counts["cpu", "off"][:2], counts
  assert folds_cpu == (0 if idle else counts["cpu", "off"][2]), counts


def test_compiler_options_only_on_a_cpu_and_only_when_asked(monkeypatch):
  def fake_mesh(platform, n):
    devices = [types.SimpleNamespace(platform=platform, process_index=jax.process_index()) for _ in range(n)]
    return types.SimpleNamespace(devices=np.array(devices))

  ynn_off = {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setattr(parallel, "host_cores", lambda: 4)
  for n in (1, 3, 4, 8):
    assert parallel.compiler_options(fake_mesh("cpu", n), "on") == ynn_off
    assert parallel.compiler_options(fake_mesh("cpu", n), "off") is None
    # auto: only while the devices leave cores idle, and only for fold-vmapped programs and XLA's convolutions
    idle = ynn_off if n < 4 else None
    assert parallel.compiler_options(fake_mesh("cpu", n), "auto") == idle, n  # conv_impl='xla' by default
    assert parallel.compiler_options(fake_mesh("cpu", n), "auto", conv_impl="xla") == idle, n
    assert parallel.compiler_options(fake_mesh("cpu", n), "auto", conv_impl="cpu") is None, n
    assert parallel.compiler_options(fake_mesh("cpu", n), "auto", folds=True, conv_impl="cpu") == idle, n
    assert parallel.compiler_options(fake_mesh("cpu", n), "on", conv_impl="cpu") == ynn_off
    assert parallel.compiler_options(fake_mesh("cpu", n), "off", folds=True) is None
    for platform in ("gpu", "tpu"):
      assert parallel.compiler_options(fake_mesh(platform, n), "on") is None
      assert parallel.compiler_options(fake_mesh(platform, n), "auto", folds=True) is None
  assert config_defaults.get_base_config().cpu_fast_conv == "auto"
  assert loop._compiled.__wrapped__.__defaults__ == ("auto",)  # what fit / fit_many / predict_probs default to
  with pytest.raises(ConfigError, match=r"config.cpu_fast_conv='yes': use one of 'auto', 'on', 'off'"):
    parallel.compiler_options(fake_mesh("cpu", 1), "yes")
