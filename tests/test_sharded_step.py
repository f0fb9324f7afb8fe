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


# loop.fit on 2 devices (the shard_map step, loop.STEPS_PER_CALL steps per call, the epoch's last steps one by one)
# and on one device, float64 model: the per-step training losses (log_every_steps=1), the epoch history and the
# best weights.
_FIT_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import train_data
from mer_jax.models import build_model
from mer_jax.train import loop, parallel
from mer_jax.train.state import jit_init, model_apply
config = train_data.tiny_config(epochs=2, batch_size=4)
config.model.dtype = "float64"
model = build_model(config.model)
apply_fn = model_apply(model)
v0 = jax.device_get(jit_init(model, jax.random.key(0), train_data.SIZE, 3))
ds = train_data.fabricate(subject_sizes=(12, 12, 8))
run = loop.RunData(name="r", train_x=ds.images[:23], train_y=ds.labels[:23], val_x=ds.images[24:],
                   val_y=ds.labels[24:], seed=3, run_dir=None, metadata={})

out, calls = {}, {}
for n in (1, 2):
  mesh = parallel.make_mesh(jax.devices()[:n])
  fns = loop._compiled(mesh, False, apply_fn, "auto")  # the dict fit uses (cached): count its train calls
  calls[n] = {k: 0 for k in ("train", "train_steps") if k in fns}
  for k in calls[n]:
    def counted(*a, _f=fns[k], _k=k, _n=n):
      calls[_n][_k] += 1
      return _f(*a)
    fns[k] = counted
  w = train_data.Recorder()
  res = loop.fit(apply_fn, v0, run, config.finetune, num_classes=3, mesh=mesh, writer=w, log_every_steps=1,
                 progress=False)
  steps = [(s, v["r/step_train_loss"]) for s, v in w.calls if "r/step_train_loss" in v]
  out[n] = dict(steps=steps, history=[[h["train_loss"], h["val_loss"]] for h in res.history],
                best=[np.asarray(a, np.float64).ravel().tolist() for a in jax.tree.leaves(res.variables)])
flat = lambda t: np.concatenate([np.asarray(a).ravel() for a in t])
print("RESULT" + json.dumps(dict(
  calls=calls, steps=[out[n]["steps"] for n in (1, 2)],
  history=float(np.max(np.abs(np.subtract(out[1]["history"], out[2]["history"])))),
  best=float(np.max(np.abs(flat(out[1]["best"]) - flat(out[2]["best"])))),
  steps_per_call=loop.STEPS_PER_CALL)))
"""


def test_fit_on_two_devices_runs_several_steps_per_call_and_equals_one_device_in_float64():
  """On 2 CPU devices loop.fit runs loop.STEPS_PER_CALL optimiser steps per call and the epoch's remaining steps
  one by one; in float64 every step's logged training loss, the epoch history and the best weights equal the
  one-device fit's (1e-10), with the same step numbers."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
    [sys.executable, "-c", _FIT_SCRIPT], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  k = out["steps_per_call"]
  one, two = out["steps"]
  n_steps = len(one)
  per_epoch = n_steps // 2
  assert per_epoch > k and per_epoch % k, n_steps  # each of the 2 epochs: a group of k steps and a remainder
  assert out["calls"]["1"] == {"train": n_steps}  # one device: one step per call
  groups = per_epoch // k
  assert out["calls"]["2"] == {"train": 2 * (per_epoch - groups * k), "train_steps": 2 * groups}, out["calls"]
  assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, n_steps + 1))
  np.testing.assert_allclose([v for _, v in two], [v for _, v in one], rtol=1e-10, atol=1e-12)
  assert out["history"] < 1e-10 and out["best"] < 1e-10, out


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
