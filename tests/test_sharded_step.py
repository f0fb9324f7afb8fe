"""The data-parallel train step as ``shard_map`` (mer_jax.train.steps.sharded_train_step), which the training loop
compiles on a CPU mesh of several devices: the same step as on one device, checked in float64."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from mer_jax import config_defaults
from mer_jax.models import build_model
from mer_jax.train import parallel
from mer_jax.train.state import model_apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The loop's compiled train program (loop._compiled) on a 4-device mesh and on one device, float64 model, one
# step from the same state: new parameters, Adam's moments, BatchNorm running averages and the loss.
_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from mer_jax import config_defaults
from mer_jax.models import build_model, init_variables
from mer_jax.train import loop, parallel
from mer_jax.train.state import create_state, model_apply
cfg = config_defaults.get_model_config(num_classes=3)
cfg.stem_features, cfg.growth_rate, cfg.block_layers, cfg.reduction, cfg.dtype = 8, 4, (3, 2, 2), 2, "float64"
model = build_model(cfg)
assert model.backbone.conv_impl == "cpu"
apply_fn = model_apply(model)
rng = np.random.default_rng(0)
x = rng.uniform(size=(8, 64, 64, 3))  # block 0 at 16x16: banded kernel gradients part by part; 8x8, 4x4: taps
y = rng.integers(0, 3, 8).astype(np.int32)
v = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), 64))
train_cfg = config_defaults.get_train_config(batch_size=8, epochs=1)
out, forms = {}, {}
for n in (1, 4):
  mesh = parallel.make_mesh(jax.devices()[:n])
  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state = jax.device_put(create_state(apply_fn, jax.tree.map(jnp.asarray, v), train_cfg), rep)
  args = (state, jax.device_put(x, data), jax.device_put(y, data))
  train = loop._compiled(mesh, False, apply_fn, "auto")["train"]
  forms[n] = "shard_map" in str(train.trace(*args).jaxpr)
  new, loss = train(*args)
  out[n] = jax.tree.map(lambda a: np.asarray(a, np.float64),
                        dict(params=new.params, mu=new.opt_state[0].mu, nu=new.opt_state[0].nu,
                             batch_stats=new.batch_stats, loss=loss))
def rel(a, b):
  fa = np.concatenate([t.ravel() for t in jax.tree.leaves(a)])
  fb = np.concatenate([t.ravel() for t in jax.tree.leaves(b)])
  return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))
d0 = jax.tree.map(lambda a, b: a - b, out[1]["params"], jax.tree.map(np.asarray, v["params"]))
d4 = jax.tree.map(lambda a, b: a - b, out[4]["params"], jax.tree.map(np.asarray, v["params"]))
res = {k: rel(out[4][k], out[1][k]) for k in ("mu", "nu", "batch_stats", "loss")}
res["update"] = rel(d4, d0)
res["forms"] = [forms[1], forms[4]]
print("RESULT" + json.dumps(res))
"""


def test_shard_map_step_equals_the_one_device_step_in_float64():
  """On 4 CPU devices the loop's train program is the shard_map step (each device a quarter of the batch, the
  BatchNorm statistics and backward sums and the gradients' mean over the mesh axis); in float64 its gradient
  (Adam's first and second moments), parameter update, BatchNorm running averages and loss equal one device's
  to 1e-10. A device's own BatchNorm statistics, a missing gradient mean or BatchNorm scale/bias gradients
  counted once per device each move them by far more (1e-2-1)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out.pop("forms") == [False, True], out  # one device: the plain step; 4: shard_map
  assert max(out.values()) < 1e-10, out


def test_the_loop_uses_shard_map_only_on_a_cpu_mesh_of_several_devices():
  model = build_model(config_defaults.get_model_config(num_classes=3))
  one = parallel.make_mesh(jax.devices()[:1])
  assert not parallel.shard_map_step_applies(one, model_apply(model))  # one device: nothing to split
  assert not parallel.shard_map_step_applies(None, model_apply(model))
  fake = type("M", (), {"devices": np.array(jax.devices() * 2), "axis_names": ("data",)})()
  if jax.default_backend() == "cpu":
    assert parallel.shard_map_step_applies(fake, model_apply(model))
  assert not parallel.shard_map_step_applies(fake, model.apply)  # a plain apply cannot split its BatchNorms


def test_over_batch_axis_changes_only_the_batchnorm_axis():
  """The model inside the shard_map step has the same parameter tree and the same configuration but for the
  BatchNorms' axis name (so a checkpoint and the state's treedef are the same)."""
  model = build_model(config_defaults.get_model_config(num_classes=3))
  apply_fn = model_apply(model)
  assert apply_fn.splits_batch()
  inner = apply_fn.over_batch_axis("data")
  assert inner.model.backbone.bn_axis_name == "data" and model.backbone.bn_axis_name is None
  assert inner.model.backbone.clone(bn_axis_name=None) == model.backbone
  assert inner.model.clone(backbone=model.backbone) == model
  assert apply_fn == model_apply(build_model(config_defaults.get_model_config(num_classes=3)))
