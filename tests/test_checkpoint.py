"""Checkpoints: exact train-state round trip, load_for_inference, inspect_checkpoint (API and CLI)."""

import json
import os
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_data
from mer_jax import inspect_checkpoint
from mer_jax.errors import UserError
from mer_jax.models import build_model, count_params
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import state as st
from mer_jax.train.state import jit_init, model_apply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory written the way mer_jax.train.loop writes one (best + latest)."""
  config = train_data.tiny_config()
  model = build_model(config.model)
  variables = jax.device_get((lambda r: jit_init(model, r, train_data.SIZE, 3))(jax.random.PRNGKey(3)))
  state = st.create_state(model_apply(model), variables, config.finetune)
  grads = jax.tree.map(jnp.ones_like, state.params)
  state = jax.jit(lambda s, g: s.apply_scaled_gradients(grads=g, batch_stats=s.batch_stats))(state, grads)
  state = jax.jit(st.plateau_step)(state, jnp.asarray(0.7))
  d = str(tmp_path_factory.mktemp("run"))
  meta = {
    "kind": "finetune",
    "config": json.loads(config.to_json()),
    "class_names": ["negative", "positive", "surprise"],
    "image_size": train_data.SIZE,
    "channels": 3,
    "subject": "casme2/s01",
  }
  best = st.variables_of(state)
  ckpt.save(d, "best", 0, best, dict(meta, epoch=0, metrics={"val_accuracy": 0.75, "val_loss": 0.5}))
  ckpt.save(
    d,
    "latest",
    1,
    {"state": flax.serialization.to_state_dict(state), "best": best},
    dict(
      meta,
      epoch=0,
      metrics={"val_accuracy": 0.75, "val_loss": 0.5},
      loop={"best_epoch": 0, "stopped": False, "epochs_done": 1},
    ),
  )
  return d, config, model, state


def test_train_state_round_trip_is_exact(run_dir):
  d, config, model, state = run_dir
  template = st.create_state(model_apply(model), st.variables_of(state), config.finetune)
  tree, meta = ckpt.restore(
    d, "latest", {"state": flax.serialization.to_state_dict(template), "best": st.variables_of(template)}
  )
  restored = flax.serialization.from_state_dict(template, tree["state"])
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(restored.step) == 1 and int(restored.epoch) == 1
  assert meta["loop"]["epochs_done"] == 1
  # re-saving the same epoch replaces it (a resumed run re-saves its last epoch)
  ckpt.save(d, "latest", 1, tree, meta)
  assert ckpt.latest_epoch(d, "latest") == 1


def test_load_for_inference(run_dir):
  d, config, model, state = run_dir
  cfg, variables, names = ckpt.load_for_inference(d)
  assert names == ["negative", "positive", "surprise"]
  assert cfg.model.growth_rate == config.model.growth_rate and cfg.name == "tiny"
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(st.variables_of(state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the variables run in a model rebuilt from the stored config
  logits = build_model(cfg.model).apply(variables, jnp.zeros((2, 16, 16, 3)), train=False)
  assert logits.shape == (2, 3)


def test_not_a_run_dir_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="not a mer_jax run directory"):
    ckpt.load_for_inference(str(tmp_path))


def test_inspect_checkpoint_describes_without_data(run_dir):
  d, config, model, state = run_dir
  text = inspect_checkpoint.describe(d)
  assert "kind: finetune" in text and "subject: casme2/s01" in text
  assert "val_accuracy=0.7500" in text
  assert "1 epochs done, optimiser step 1" in text and "lr scale 1" in text
  assert "growth_rate: 4" in text  # the config
  total = count_params(state.params)
  assert "total" in text and f"{total:,}" in text
  assert "head/kernel" in text and str(tuple(state.params["head"]["kernel"].shape)) in text
  proc = subprocess.run(
    [sys.executable, "-m", "mer_jax.inspect_checkpoint", d], capture_output=True, text=True, cwd=REPO, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"{total:,}" in proc.stdout


def test_load_for_inference_and_inspect_work_from_latest_alone(run_dir, tmp_path):
  """A run whose best/ was deleted (the corrupt-checkpoint message suggests it) still loads from latest/:
  the best-validation variables stored inside the latest checkpoint, not the whole train state."""
  import shutil

  d, _, _, _ = run_dir
  _, variables, classes = ckpt.load_for_inference(d)
  only_latest = str(tmp_path / "run")
  shutil.copytree(d, only_latest)
  shutil.rmtree(os.path.join(only_latest, "best"))
  _, variables2, classes2 = ckpt.load_for_inference(only_latest)
  assert classes2 == classes
  assert jax.tree.structure(variables) == jax.tree.structure(variables2)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(variables2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  params_part = inspect_checkpoint.describe(only_latest).split("parameters:")[1]
  assert "opt_state" not in params_part and "mu" not in params_part
  assert params_part == inspect_checkpoint.describe(d).split("parameters:")[1]


def test_background_saves_keep_what_was_passed_and_close_waits(tmp_path):
  """RunCheckpoints(asynchronous=True): the saved arrays are private copies (the caller may overwrite or donate
  its buffers right after save returns), ``latest`` keeps the newest two, and close() leaves every save on disk."""
  d = str(tmp_path)
  arrays = {"w": np.arange(6, dtype=np.float32), "b": np.ones(3, np.float32)}
  with ckpt.RunCheckpoints(d, asynchronous=True) as ck:
    assert ck.asynchronous
    for epoch in (1, 2, 3):
      ck.save("latest", epoch, {"state": arrays, "best": arrays}, {"epoch": epoch})
      arrays["w"] *= 10  # in place, while the background writer may still be busy
    ck.save("best", 0, {"w": jax.device_put(arrays["w"])}, {"epoch": 0})
  assert sorted(os.listdir(os.path.join(d, "latest"))) == ["2", "3"]
  tree, meta = ckpt.restore(d, "latest")
  np.testing.assert_array_equal(np.asarray(tree["state"]["w"]), np.arange(6, dtype=np.float32) * 100)
  assert meta == {"epoch": 3}
  np.testing.assert_array_equal(np.asarray(ckpt.restore(d, "best")[0]["w"]), np.arange(6) * 1000)
  # a second writer on the same run (a resumed run) replaces the epochs it saves again
  with ckpt.RunCheckpoints(d) as ck:
    ck.save("latest", 3, {"state": {"w": np.zeros(2, np.float32)}, "best": {}}, {"epoch": 2})
  assert sorted(os.listdir(os.path.join(d, "latest"))) == ["2", "3"]
  np.testing.assert_array_equal(np.asarray(ckpt.restore(d, "latest")[0]["state"]["w"]), [0, 0])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_checkpoint_that_cannot_be_written_is_a_clear_error(tmp_path, asynchronous):
  (tmp_path / "latest").write_text("a file where the checkpoint directory should be")
  with pytest.raises(ckpt.CheckpointWriteError, match=r"could not write the checkpoint .*latest.*1 .*re-run"):
    with ckpt.RunCheckpoints(str(tmp_path), asynchronous=asynchronous) as ck:
      ck.save("latest", 1, {"w": np.zeros(2, np.float32)}, {"epoch": 0})
