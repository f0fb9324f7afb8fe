"""LOSO: outputs and counts, resume, vmapped == sequential folds, 1 == 4 devices, the leakage guard."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import train_data
from mer_jax import reporting
from mer_jax.models import build_model
from mer_jax.train import loop, loso
from mer_jax.train.state import jit_init, model_apply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup():
  config = train_data.tiny_config(epochs=3)
  ds = train_data.fabricate(subject_sizes=(5, 7, 6, 4))
  model = build_model(config.model)
  init = lambda r: jit_init(model, r, train_data.SIZE, 3)
  inits = {}

  def init_fn(i):
    if i not in inits:
      inits[i] = jax.device_get(init(jax.random.PRNGKey(100 + i)))
    return inits[i]

  return config, ds, model, init_fn


def _run(setup, workdir, **overrides):
  config, ds, model, init_fn = setup
  config = config.copy_and_resolve_references()
  hook = overrides.pop("on_epoch_end", None)
  for k, v in overrides.items():
    *section, key = k.split(".")
    (config[section[0]] if section else config)[key] = v
  return loso.run_loso(
    config, ds, str(workdir), apply_fn=model_apply(model), init_fn=init_fn, progress=False, on_epoch_end=hook
  )


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
  """An uninterrupted sequential LOSO run (shared by several tests)."""
  wd = tmp_path_factory.mktemp("loso_ref")
  return wd, _run(setup, wd)


def test_loso_outputs_match_data(setup, reference, tmp_path):
  config, ds, _, _ = setup
  wd, records = reference
  subjects = sorted(set(ds.subjects))
  assert [r["subject"] for r in records] == subjects
  for r in records:
    mask = ds.subjects == r["subject"]
    assert r["n_test"] == mask.sum() == len(r["y_true"]) == len(r["y_pred"]) == len(r["probs"])
    assert sorted(r["clip_ids"]) == sorted(ds.clip_ids[mask])
    assert r["y_true"] == ds.labels[mask].tolist()
    assert r["n_train"] + r["n_val"] + r["n_test"] == len(ds)
    assert r["model_selection"] == loso.VALIDATION
    assert 0 <= r["best_epoch"] < r["epochs_trained"] <= config.finetune.epochs
    assert [h["epoch"] for h in r["history"]] == list(range(r["epochs_trained"]))
    assert r["history"][r["best_epoch"]]["val_accuracy"] == r["val_metric"]
    probs = np.asarray(r["probs"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert r["y_pred"] == probs.argmax(1).tolist()
    assert os.path.exists(os.path.join(wd, "finetune", "folds", r["fold_id"] + ".json"))
    assert os.path.isdir(os.path.join(wd, "finetune", "folds", r["fold_id"], "best"))
  with open(os.path.join(wd, "finetune", "predictions.json")) as f:
    allp = json.load(f)
  assert len(allp["y_true"]) == len(ds) and sorted(allp["clip_ids"]) == sorted(ds.clip_ids)
  # results.json (mer_jax.reporting) sees the same counts.
  paths = reporting.write_reports(str(tmp_path), config, records, list(ds.class_names))
  with open(paths["results_json"]) as f:
    res = json.load(f)
  text = json.dumps(res)
  assert str(len(ds)) in text
  conf = np.asarray(res["aggregate"]["Mixed"]["confusion"])
  assert conf.sum() == len(ds)
  np.testing.assert_array_equal(conf.sum(1), np.bincount(ds.labels, minlength=3))


def test_resume_skips_finished_folds_and_reproduces(setup, reference, tmp_path, monkeypatch):
  _, ref = reference

  class Crash(Exception):
    pass

  def crash(fold, epoch):
    if fold.startswith("001_") and epoch == 1:
      raise Crash()

  with pytest.raises(Crash):
    _run(setup, tmp_path, on_epoch_end=crash)
  folds = os.path.join(tmp_path, "finetune", "folds")
  assert sorted(f for f in os.listdir(folds) if f.endswith(".json")) == [ref[0]["fold_id"] + ".json"]
  mtime = os.path.getmtime(os.path.join(folds, ref[0]["fold_id"] + ".json"))
  trained = []
  real_fit = loop.fit

  def spy(*args, **kwargs):
    trained.append(args[2].name)
    return real_fit(*args, **kwargs)

  monkeypatch.setattr(loop, "fit", spy)
  records = _run(setup, tmp_path)
  assert trained == [f"fold{r['fold_id']}" for r in ref[1:]]  # fold 0 not retrained
  assert os.path.getmtime(os.path.join(folds, ref[0]["fold_id"] + ".json")) == mtime
  assert records[1]["resumed_from_epoch"] == 2  # continued after its epoch index 1
  for a, b in zip(records, ref):
    assert a["y_pred"] == b["y_pred"]
    assert a["probs"] == b["probs"]  # bit-identical
    assert a["history"] == b["history"]  # the resumed fold's history includes its epochs before the crash
    assert (a["best_epoch"], a["epochs_trained"]) == (b["best_epoch"], b["epochs_trained"])


def test_vmapped_folds_equal_sequential(setup, reference, tmp_path):
  _, ref = reference
  records = _run(setup, tmp_path, **{"finetune.parallel_folds": 2})
  assert os.path.isdir(os.path.join(tmp_path, "finetune", "groups"))
  for a, b in zip(records, ref):
    assert a["n_train"] == b["n_train"] and a["n_val"] == b["n_val"]
    assert a["y_pred"] == b["y_pred"]
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    assert (a["best_epoch"], a["epochs_trained"]) == (b["best_epoch"], b["epochs_trained"])
    np.testing.assert_allclose(
      [h["train_loss"] for h in a["history"]], [h["train_loss"] for h in b["history"]], rtol=1e-5
    )
  # unequal fold sizes inside each vmapped group really were exercised
  assert ref[0]["n_train"] != ref[1]["n_train"] and ref[2]["n_train"] != ref[3]["n_train"]


def test_vmapped_group_resumes_after_a_crash(setup, reference, tmp_path):
  _, ref = reference

  class Crash(Exception):
    pass

  def crash(group, epoch):
    if epoch == 1:
      raise Crash()

  with pytest.raises(Crash):
    _run(setup, tmp_path, on_epoch_end=crash, **{"finetune.parallel_folds": 2})
  records = _run(setup, tmp_path, **{"finetune.parallel_folds": 2})
  assert [r["resumed_from_epoch"] for r in records] == [2, 2, 0, 0]  # first group continued, second fresh
  for a, b in zip(records, ref):
    assert a["y_pred"] == b["y_pred"]
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)


def test_leakage_guard_model_selection_never_sees_held_out_subject(setup, tmp_path, monkeypatch):
  _, ds, _, _ = setup
  seen = []
  real_fit = loop.fit

  def spy(apply_fn, init_vars, run, *args, **kwargs):
    seen.append(run)
    return real_fit(apply_fn, init_vars, run, *args, **kwargs)

  monkeypatch.setattr(loop, "fit", spy)
  records = _run(setup, tmp_path, **{"finetune.epochs": 1})
  assert len(seen) == len(records) == 4
  for run, rec in zip(seen, records):
    held_out = ds.images[ds.subjects == rec["subject"]].reshape(rec["n_test"], -1)
    for what, x in (("validation", run.val_x), ("training", run.train_x)):
      flat = x.reshape(len(x), -1)
      overlap = (flat[:, None, :] == held_out[None, :, :]).all(-1).any()
      assert not overlap, f"held-out images of {rec['subject']} reached the {what} set"
    assert len(run.val_y) == rec["n_val"] > 0


def test_leakage_guard_rejects_a_leaky_split(setup):
  _, ds, _, _ = setup
  split = loso.split_fold(ds, "casme2/s01", 0.2, seed=0)
  loso.check_no_leakage(ds, split)
  leaky = loso.FoldSplit(
    split.subject, split.train_idx, np.concatenate([split.val_idx, split.test_idx[:1]]), split.test_idx, loso.VALIDATION
  )
  with pytest.raises(loso.LeakageError, match="'casme2/s01': held-out clips in the model-selection"):
    loso.check_no_leakage(ds, leaky)
  leaky = loso.FoldSplit(
    split.subject, np.concatenate([split.train_idx, split.test_idx[:1]]), split.val_idx, split.test_idx, loso.VALIDATION
  )
  with pytest.raises(loso.LeakageError, match="'casme2/s01': held-out clips in the training"):
    loso.check_no_leakage(ds, leaky)


def _with_duplicate_row(ds, i: int):
  """ds with row i appended again at index len(ds) (same subject, clip id and image)."""
  cat = lambda a: np.concatenate([a, a[i : i + 1]])  # noqa: E731
  return dataclasses.replace(
    ds,
    images=cat(ds.images),
    labels=cat(ds.labels),
    subjects=cat(ds.subjects),
    sources=cat(ds.sources),
    clip_ids=cat(ds.clip_ids),
  )


@pytest.mark.parametrize("where", ["training", "model-selection"])
@pytest.mark.parametrize("how", ["another clip of the subject", "a duplicated row"])
def test_leakage_guard_catches_the_held_out_subject_by_name(setup, how, where):
  """Leaks that share no index with test_idx: only the subject-name check can see them."""
  _, ds, _, _ = setup
  split = loso.split_fold(ds, "casme2/s01", 0.2, seed=0)
  held = split.test_idx
  assert held.size == 7
  if how == "another clip of the subject":  # test_idx misses one clip of the subject; that clip leaks
    leaked, test_idx = held[:1], held[1:]
  else:  # the same clip twice in the data: the copy leaks
    ds, leaked, test_idx = _with_duplicate_row(ds, int(held[0])), np.array([len(ds)]), held
    assert ds.clip_ids[leaked[0]] == ds.clip_ids[held[0]]
  assert not np.intersect1d(leaked, test_idx).size and ds.subjects[leaked[0]] == "casme2/s01"
  train_idx, val_idx = split.train_idx, split.val_idx
  if where == "training":
    train_idx = np.concatenate([train_idx, leaked])
  else:
    val_idx = np.concatenate([val_idx, leaked])
  leaky = loso.FoldSplit(split.subject, train_idx, val_idx, test_idx, loso.VALIDATION)
  with pytest.raises(loso.LeakageError, match=f"fold 'casme2/s01': held-out clips in the {where}"):
    loso.check_no_leakage(ds, leaky)
  if where == "model-selection":  # selecting on the held-out subject is allowed only when labelled as such
    loso.check_no_leakage(ds, loso.FoldSplit(split.subject, train_idx, val_idx, test_idx, loso.TEST_FOLD))


def test_test_fold_early_stopping_is_labelled(setup):
  _, ds, _, _ = setup
  split = loso.split_fold(ds, "casme2/s02", 0.2, seed=0, test_fold_early_stopping=True)
  assert split.model_selection == loso.TEST_FOLD
  np.testing.assert_array_equal(split.val_idx, split.test_idx)
  assert set(ds.subjects[split.train_idx]) == set(ds.subjects) - {"casme2/s02"}


def test_test_fold_early_stopping_runs_are_labelled_in_reports(setup, tmp_path):
  config, ds, _, _ = setup
  records = _run(setup, tmp_path / "run", **{"finetune.epochs": 1, "finetune.test_fold_early_stopping": True})
  assert {r["model_selection"] for r in records} == {loso.TEST_FOLD}
  assert all(r["n_val"] == r["n_test"] and r["n_train"] + r["n_test"] == len(ds) for r in records)
  config = config.copy_and_resolve_references()
  config.finetune.test_fold_early_stopping = True
  paths = reporting.write_reports(str(tmp_path), config, records, list(ds.class_names))
  with open(paths["results_json"]) as f:
    assert json.load(f)["test_fold_early_stopping"] is True


@pytest.mark.parametrize(
  "override", [{"finetune.learning_rate": 0.5}, {"pretrained_checkpoint": "/elsewhere/pretrain"}]
)
def test_changed_config_refuses_to_mix_folds(setup, reference, override):
  """Folds trained with other settings, or started from other pretrained weights, are never pooled."""
  wd, _ = reference
  with pytest.raises(Exception, match="different configuration"):
    _run(setup, wd, **override)


_FOUR_DEVICES = textwrap.dedent("""
    import json, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    import jax
    import train_data
    from mer_jax.models import build_model
    from mer_jax.train import loso, parallel
    from mer_jax.train.state import jit_init, model_apply
    assert jax.device_count() == 4, jax.devices()
    config = train_data.tiny_config(epochs=2)
    ds = train_data.fabricate(subject_sizes=(7, 9))
    model = build_model(config.model)
    init = (lambda r: jit_init(model, r, train_data.SIZE, 3))
    out = {}
    # One training step from the same state: BatchNorm statistics must be global (not per device).
    import numpy as np
    from mer_jax.train import loop, state as st
    v = jax.device_get(init(jax.random.PRNGKey(0)))
    steps = {}
    for n in (1, 4):
      mesh = parallel.make_mesh(jax.devices()[:n])
      fns = loop._compiled(mesh, False, model_apply(model))
      s0 = jax.device_put(st.create_state(model_apply(model), v, config.finetune), parallel.replicated(mesh))
      x = jax.device_put(ds.images[:8], parallel.batch_sharding(mesh))
      y = jax.device_put(ds.labels[:8], parallel.batch_sharding(mesh))
      s1, loss = fns["train"](s0, x, y)
      steps[n] = (jax.device_get(s1.batch_stats), float(loss), len(x.sharding.device_set))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(steps[1][0]),
                                                          jax.tree.leaves(steps[4][0])))
    out["bn_diff"], out["loss"], out["devices"] = diff, [steps[1][1], steps[4][1]], [steps[1][2], steps[4][2]]
    for n in (1, 4):
      mesh = parallel.make_mesh(jax.devices()[:n])
      recs = loso.run_loso(config, ds, tempfile.mkdtemp(), apply_fn=model_apply(model), mesh=mesh, progress=False,
                           init_fn=lambda i: jax.device_get(init(jax.random.PRNGKey(i))))
      out[n] = [(r["y_pred"], r["probs"], r["best_epoch"]) for r in recs]
    print("RESULT" + json.dumps(out))
""")


def test_four_devices_equal_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", _FOUR_DEVICES, os.path.join(REPO, "tests")],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0]
  out = json.loads(line[len("RESULT") :])
  assert out["devices"] == [1, 4]
  assert out["bn_diff"] < 1e-6, out["bn_diff"]  # global batch statistics, as on one device
  assert abs(out["loss"][0] - out["loss"][1]) < 1e-6
  for (p1, q1, b1), (p4, q4, b4) in zip(out["1"], out["4"]):
    assert p1 == p4 and b1 == b4
    # Same predictions (hence the same Acc/UF1/UAR); probabilities differ only by float reduction order.
    np.testing.assert_allclose(q1, q4, atol=2e-4)


def test_cpu_fast_conv_reaches_every_compiled_program(setup, tmp_path, monkeypatch):
  """config.cpu_fast_conv is passed down to every program the loop compiles (pretraining, fine-tuning steps and
  the test-fold predictions); there is no process-wide setting."""
  from mer_jax.train import pretrain

  config, ds, model, init_fn = setup
  seen = []
  real = loop._compiled

  def spy(mesh, stacked, apply_fn, fast_conv="auto"):
    seen.append(fast_conv)
    return real(mesh, stacked, apply_fn, fast_conv)

  monkeypatch.setattr(loop, "_compiled", spy)
  _run(setup, tmp_path / "loso", cpu_fast_conv="off", **{"finetune.epochs": 1})
  assert len(seen) >= 2 * len(set(ds.subjects)) and set(seen) == {"off"}, seen  # steps + predictions per fold
  seen.clear()
  c = config.copy_and_resolve_references()
  c.cpu_fast_conv, c.pretrain.epochs, c.pretrain.batch_size = "on", 1, 8
  pretrain.run_pretrain(
    c, ds, str(tmp_path / "pre"), apply_fn=model_apply(model), init_variables=init_fn(0), progress=False
  )
  assert seen and set(seen) == {"on"}, seen
  seen.clear()
  _run(setup, tmp_path / "default", **{"finetune.epochs": 1})
  assert seen and set(seen) == {"auto"}, seen
