"""Training: loss, sampling, plateau schedule, best weights / early stopping, determinism, transfer, main."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_data
from mer_jax import main as main_mod
from mer_jax.errors import UserError
from mer_jax.models import build_model, init_variables
from mer_jax.train import checkpoint as ckpt
from mer_jax.train import loop, loso, parallel, pretrain, transfer
from mer_jax.train import state as st
from mer_jax.train.sampling import epoch_plan, stratified_split
from mer_jax.train.state import jit_init, model_apply
from mer_jax.train.steps import cross_entropy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cross_entropy_is_eq10():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 6)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  ref = -np.mean(np.log(p[np.arange(6), labels]))
  np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), ref, rtol=1e-6)
  w = np.array([1, 1, 1, 0, 0, 1], np.float32)
  ref_w = -np.mean(np.log(p[np.arange(6), labels])[w > 0])
  np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w)), ref_w, rtol=1e-6)


def test_stratified_split_holds_out_a_fifth_per_class():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
  tr, va = stratified_split(labels, 0.2, np.random.default_rng(0))
  assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).tolist() == list(range(16))
  assert np.bincount(labels[va], minlength=3).tolist() == [2, 1, 0]  # the single class-2 sample trains
  tr2, va2 = stratified_split(labels, 0.2, np.random.default_rng(0))
  np.testing.assert_array_equal(va, va2)


def test_epoch_plan_is_class_balanced_and_full():
  labels = np.array([0] * 12 + [1] * 3 + [2] * 5)
  plan = epoch_plan(labels, 8, np.random.default_rng(1), balanced=True)
  assert plan.shape == (5, 8)  # 3 classes x 12 = 36 draws -> 5 full batches of 8
  counts = np.bincount(labels[plan.ravel()], minlength=3)
  assert counts.min() >= 12 and counts.max() - counts.min() <= 40 - 36
  assert set(np.flatnonzero(labels == 1)) <= set(plan.ravel())  # minority class oversampled, all seen
  plain = epoch_plan(labels, 8, np.random.default_rng(1), balanced=False)
  assert plain.shape == (3, 8) and set(plain.ravel()) == set(range(20))


@pytest.fixture(scope="module")
def tiny():
  config = train_data.tiny_config(epochs=6)
  model = build_model(config.model)
  init = lambda r: jit_init(model, r, train_data.SIZE, 3)
  return config, model, init


def test_plateau_scales_the_adam_step(tiny):
  config, model, init = tiny
  cfg = config.finetune.copy_and_resolve_references()
  cfg.plateau_patience = 2
  s = st.create_state(model_apply(model), jax.device_get(init(jax.random.PRNGKey(0))), cfg)
  scales = []
  plateau_step = jax.jit(st.plateau_step)
  for v in (1.0, 1.0, 1.0, 0.5, 0.5, 0.5):
    s = plateau_step(s, jnp.asarray(v))
    scales.append(float(s.plateau.scale))
  np.testing.assert_allclose(scales, [1, 1, 0.1, 0.1, 0.1, 0.01], rtol=1e-6)
  assert int(s.epoch) == 6
  # Adam's first step moves every parameter by ~lr * scale.
  fresh = st.create_state(model_apply(model), jax.device_get(init(jax.random.PRNGKey(0))), cfg)
  grads = jax.tree.map(jnp.ones_like, fresh.params)
  for state, lr in ((fresh, 0.01), (s, 0.01 * 0.01)):
    new = jax.jit(lambda t, g: t.apply_scaled_gradients(grads=g, batch_stats=t.batch_stats))(state, grads)
    delta = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), new.params, state.params))
    np.testing.assert_allclose(max(delta), lr, rtol=1e-3)


@pytest.fixture(scope="module")
def fitted(tiny, tmp_path_factory):
  config, model, init = tiny
  ds = train_data.fabricate(subject_sizes=(8, 8, 8), seed=3)
  tr, va = stratified_split(ds.labels, 0.25, np.random.default_rng(0))
  run_dir = str(tmp_path_factory.mktemp("fit"))
  run = loop.RunData(
    "unit",
    ds.images[tr],
    ds.labels[tr],
    ds.images[va],
    ds.labels[va],
    seed=5,
    run_dir=run_dir,
    metadata={
      "config": json.loads(config.to_json()),
      "class_names": list(ds.class_names),
      "image_size": train_data.SIZE,
      "kind": "pretrain",
    },
  )
  v0 = jax.device_get(init(jax.random.PRNGKey(1)))
  res = loop.fit(model_apply(model), v0, run, config.finetune, num_classes=3, progress=False)
  return config, model, init, ds, run, v0, res


def test_fit_keeps_best_validation_weights_and_stops_early(fitted):
  config, model, _, _, run, _, res = fitted
  accs = [h["val_accuracy"] for h in res.history]
  assert res.best_epoch == int(np.argmax(accs))  # first epoch with the highest accuracy
  assert res.best_val_accuracy == max(accs)
  patience = config.finetune.early_stopping_patience
  assert res.epochs_trained == min(config.finetune.epochs, res.best_epoch + 1 + patience)
  probs = loop.predict_probs(model_apply(model), res.variables, run.val_x, 8)
  assert np.mean(probs.argmax(1) == run.val_y) == pytest.approx(res.best_val_accuracy)
  # the best checkpoint holds exactly these weights; latest holds the last epoch
  _, variables, names = ckpt.load_for_inference(run.run_dir)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(res.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert names == ["negative", "positive", "surprise"]
  assert ckpt.latest_epoch(run.run_dir, "latest") == res.epochs_trained
  assert ckpt.latest_epoch(run.run_dir, "best") == res.best_epoch
  assert res.history[0]["train_loss"] > res.history[-1]["train_loss"]  # it learns


def test_fit_is_deterministic(fitted):
  config, model, _, _, run, v0, res = fitted
  again = loop.fit(
    model_apply(model),
    v0,
    loop.RunData(**{**run.__dict__, "run_dir": None}),
    config.finetune,
    num_classes=3,
    progress=False,
  )
  for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(res.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  p1 = loop.predict_probs(model_apply(model), again.variables, run.val_x, 8)
  p2 = loop.predict_probs(model_apply(model), res.variables, run.val_x, 8)
  np.testing.assert_array_equal(p1, p2)


def test_sync_checkpoints_and_device_inputs_give_the_same_run(fitted, tmp_path):
  """checkpoint_async=False writes the same checkpoints as the default background writer, and the caller's
  initial variables (device arrays) survive fit although the train state is donated to every step."""
  config, model, init, _, run, v0, res = fitted
  v_dev = jax.device_put(v0)
  sync = loop.fit(
    model_apply(model),
    v_dev,
    loop.RunData(**{**run.__dict__, "run_dir": str(tmp_path)}),
    config.finetune,
    num_classes=3,
    progress=False,
    checkpoint_async=False,
  )
  assert not any(x.is_deleted() for x in jax.tree.leaves(v_dev))
  for a, b in zip(jax.tree.leaves(sync.variables), jax.tree.leaves(res.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for kind in ("best", "latest"):
    assert ckpt.latest_epoch(str(tmp_path), kind) == ckpt.latest_epoch(run.run_dir, kind)
    (t_async, m_async), (t_sync, m_sync) = ckpt.restore(run.run_dir, kind), ckpt.restore(str(tmp_path), kind)
    assert m_async == m_sync
    for a, b in zip(jax.tree.leaves(t_async), jax.tree.leaves(t_sync)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_size_must_divide_devices():
  two = type("Mesh", (), {"devices": np.empty(2)})()  # only .devices.size is consulted
  parallel.check_batch_size(8, two)
  with pytest.raises(Exception, match="not a multiple of the 2 devices"):
    parallel.check_batch_size(7, two)


def test_transfer_loads_backbone_and_attention(fitted):
  """Pretrained weights are really used: backbone == checkpoint, first fine-tuning loss != fresh init."""
  config, model, init, ds, run, _, _ = fitted
  _, pre, _ = ckpt.load_for_inference(run.run_dir)
  fresh = jax.device_get(init(jax.random.PRNGKey(42)))
  merged, report = transfer.merge_pretrained(fresh, pre)
  assert report == {"loaded": ["backbone", "head"], "reinitialised": []}
  flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
  pre_flat, merged_flat = flat(pre["params"]), flat(merged["params"])
  assert any("attention" in jax.tree_util.keystr(k).lower() for k in pre_flat)  # attention is in the backbone
  for k, v in pre_flat.items():
    np.testing.assert_array_equal(np.asarray(merged_flat[k]), np.asarray(v))
  # a 2-class target: the head is re-initialised, the rest still loaded
  cfg2 = config.model.copy_and_resolve_references()
  cfg2.num_classes = 2
  fresh2 = _fresh_like(build_model(cfg2))
  merged2, report2 = transfer.merge_pretrained(fresh2, pre)
  assert report2 == {"loaded": ["backbone"], "reinitialised": ["head"]}
  np.testing.assert_array_equal(merged2["params"]["head"]["kernel"], fresh2["params"]["head"]["kernel"])
  assert merged2["params"]["head"]["kernel"].shape[-1] == 2
  # the first fine-tuning step's loss differs between pretrained and fresh initialisation
  fns = loop._compiled(parallel.make_mesh(), False, model_apply(model))
  x, y = jnp.asarray(ds.images[:8]), jnp.asarray(ds.labels[:8])
  losses = [
    float(fns["train"](st.create_state(model_apply(model), v, config.finetune), x, y)[1]) for v in (merged, fresh)
  ]
  assert abs(losses[0] - losses[1]) > 1e-3
  # an incompatible backbone is refused with a clear message
  cfg3 = config.model.copy_and_resolve_references()
  cfg3.growth_rate = 6
  with pytest.raises(Exception, match="do not match"):
    transfer.merge_pretrained(_fresh_like(build_model(cfg3)), pre)


def _fresh_like(model):
  """Random variables with ``model``'s structure (shapes from eval_shape: no compilation)."""
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), train_data.SIZE))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def test_main_pipeline_pretrains_transfers_and_reports(tiny, tmp_path, monkeypatch):
  config, model, _ = tiny
  config = config.copy_and_resolve_references()
  config.pretrain.epochs = config.finetune.epochs = 2
  micro = train_data.fabricate(subject_sizes=(5, 6, 4))
  macro = train_data.fabricate(subject_sizes=(12, 12), seed=9, source="ck", prefix="m")
  loads = []

  def load_arrays(cfg, workdir, kind):
    loads.append(kind)
    return micro if kind == "micro" else macro

  inits = []
  real = loso.run_loso

  def spy(*args, **kwargs):
    inits.append(kwargs["init_fn"](0))
    return real(*args, **kwargs)

  monkeypatch.setattr(loso, "run_loso", spy)
  out = main_mod.run(config, str(tmp_path), load_arrays=load_arrays, progress=False)
  assert loads == ["macro", "micro"]
  # fold initialisation == pretrained best checkpoint (backbone and attention and, 3 classes -> 3, the head)
  _, pre, _ = ckpt.load_for_inference(os.path.join(tmp_path, "pretrain"))
  for a, b in zip(jax.tree.leaves(inits[0]), jax.tree.leaves(pre)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(out["reports"]["results_json"]) as f:
    res = json.load(f)
  assert np.asarray(res["aggregate"]["Mixed"]["confusion"]).sum() == len(micro)
  assert len(out["records"]) == 3
  assert os.listdir(os.path.join(tmp_path, "tb"))  # TensorBoard event files
  summary = main_mod._summary(out)
  assert "results.json" in summary and "pretrain" in summary
  # a second run reuses pretraining and every fold
  monkeypatch.setattr(pretrain.loop, "fit", lambda *a, **k: pytest.fail("retrained"))
  again = main_mod.run(config, str(tmp_path), load_arrays=load_arrays, progress=False)
  assert [r["y_pred"] for r in again["records"]] == [r["y_pred"] for r in out["records"]]
  # --config.pretrained_checkpoint reuses that run's weights without pretraining again
  monkeypatch.undo()
  monkeypatch.setattr(loso, "run_loso", spy)
  config.pretrained_checkpoint = os.path.join(tmp_path, "pretrain")
  config.finetune.epochs = 1
  loads.clear()
  inits.clear()
  main_mod.run(config, str(tmp_path / "reuse"), load_arrays=load_arrays, progress=False)
  assert loads == ["micro"]
  for a, b in zip(jax.tree.leaves(inits[0]), jax.tree.leaves(pre)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_main_cli_without_workdir_is_a_usage_error_without_traceback():
  # (an unknown config key: tests/test_bad_inputs.py::test_unknown_config_key)
  proc = subprocess.run(
    [sys.executable, "-m", "mer_jax.main", "--config=configs/cde.py"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert proc.returncode == 2 and "--workdir" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_refuses_a_checkpoint_of_another_config(fitted, tmp_path):
  config, model, _, _, run, v0, _ = fitted
  cfg = config.finetune.copy_and_resolve_references()
  cfg.epochs = 1
  first = loop.RunData(**{**run.__dict__, "run_dir": str(tmp_path), "metadata": {**run.metadata, "fingerprint": "a"}})
  loop.fit(model_apply(model), v0, first, cfg, num_classes=3, progress=False)
  other = loop.RunData(**{**first.__dict__, "metadata": {**run.metadata, "fingerprint": "b"}})
  with pytest.raises(UserError, match="different configuration"):
    loop.fit(model_apply(model), v0, other, cfg, num_classes=3, progress=False)


def test_sde_five_class_pretrains_on_three_classes_and_reinitialises_the_head(tiny, tmp_path):
  """SDE CASME II/SAMM are 5-class, the macro sets only have the 3-class mapping (Table 2): the macro data
  is loaded with pretrain.task, and fine-tuning re-initialises the head for 5 classes."""
  config, _, _ = tiny
  config = config.copy_and_resolve_references()
  config.pretrain.epochs = config.finetune.epochs = 1
  config.data.task = "5class"
  config.model.num_classes = 5
  micro = train_data.fabricate(subject_sizes=(10, 10, 10), num_classes=5)
  micro.class_names = ("disgust", "happiness", "repression", "surprise", "others")
  macro = train_data.fabricate(subject_sizes=(12, 12), seed=9, source="ck", prefix="m")
  tasks = {}

  def load_arrays(cfg, workdir, kind):
    tasks[kind] = cfg.data.task
    return micro if kind == "micro" else macro

  out = main_mod.run(config, str(tmp_path), load_arrays=load_arrays, progress=False)
  assert tasks == {"macro": "3class", "micro": "5class"}
  _, pre, pre_classes = ckpt.load_for_inference(os.path.join(tmp_path, "pretrain"))
  assert len(pre_classes) == 3 and pre["params"]["head"]["kernel"].shape[-1] == 3
  assert all(len(r["probs"][0]) == 5 for r in out["records"])
