"""experiments/leakage.py and the last-epoch switch: end to end at tiny sizes, and the analysis on known folds."""

import json
import os

import jax
import numpy as np
import pytest

import train_data
from experiments import leakage
from mer_jax import metrics
from mer_jax.data import synth
from mer_jax.errors import UserError
from mer_jax.models import build_model
from mer_jax.train import loop
from mer_jax.train.state import jit_init, model_apply

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny sizes: 3 CASME II subjects (3 LOSO folds), 16x16 inputs, a 1-layer-per-block network, 1 pretraining epoch.
OVERRIDES = [
  "--config.data.micro=('casme2',)",
  "--config.data.macro=('ck',)",
  "--config.image_size=16",
  "--config.model.block_layers=(1,1)",
  "--config.model.stem_features=4",
  "--config.model.growth_rate=4",
  "--config.model.head_pool=2",
  "--config.model.reduction=2",
  "--config.pretrain.epochs=1",
  "--config.pretrain.batch_size=4",
  "--config.finetune.epochs=3",
  "--config.finetune.batch_size=4",
  "--config.finetune.early_stopping_patience=1",
  "--config.finetune.parallel_folds=0",
  "--config.checkpoint_async=False",
  "--config.bootstrap_samples=20",
  "--config.log_every_steps=0",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One leakage experiment on tiny SynthME data (shared by the end-to-end tests)."""
  root = tmp_path_factory.mktemp("leak_data")
  micro = synth.generate(
    "casme2", str(root / "casme2"), seed=3, subjects=3, clips_per_subject=5, clip_frames=40, frame_size=64
  )
  macro = synth.generate("ck", str(root / "ck"), seed=3, subjects=3, frame_size=64)
  data = [
    f"--config.data.roots.casme2={micro}",
    f"--config.data.roots.ck={macro}",
    f"--config.data.cache_dir={root / 'tfds'}",
  ]
  wd = str(tmp_path_factory.mktemp("leak") / "exp")
  rc = leakage.main(["--workdir", wd, "--config=configs/synth_demo.py", "--bootstrap-samples=200", *data, *OVERRIDES])
  assert rc == 0
  return wd


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_three_runs_from_one_pretraining(finished):
  wd = finished
  runs = {v: _json(os.path.join(wd, v, "results.json")) for v in leakage.VARIANTS}
  # Only the default run pretrains; the others start from its pretraining.
  assert os.path.isdir(os.path.join(wd, "validation", "pretrain"))
  for v in ("test-subject", "last-epoch"):
    assert not os.path.exists(os.path.join(wd, v, "pretrain"))
    assert _json(os.path.join(wd, v, "config.json"))["pretrained_checkpoint"] == os.path.join(
      wd, "validation", "pretrain"
    )
  assert runs["validation"]["model_selection"] == "validation split of the training subjects only"
  assert runs["test-subject"]["test_fold_early_stopping"] is True
  assert runs["last-epoch"]["model_selection"].startswith("none: the last epoch's weights")
  for f in runs["last-epoch"]["folds"]:
    # no selection, no early stopping (patience 1 would stop the others): every fold keeps epoch 3 of 3
    assert (f["model_selection"], f["epochs_trained"], f["best_epoch"]) == ("last_epoch", 3, 2)
  for f in runs["test-subject"]["folds"]:
    assert f["model_selection"] == "test_fold" and f["n_val"] == f["n"]
  # Same pretrained weights, seeds and split: where the default run kept its last epoch, the last-epoch run
  # made exactly the same predictions (the in-memory pretraining equals the reloaded checkpoint).
  same = [
    (a, b)
    for a, b in zip(runs["validation"]["folds"], runs["last-epoch"]["folds"])
    if a["best_epoch"] == a["epochs_trained"] - 1 == 2
  ]
  for a, b in same:
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)


def test_leakage_report_matches_the_runs(finished):
  wd = finished
  out = _json(os.path.join(wd, "leakage.json"))
  runs = {v: _json(os.path.join(wd, v, "results.json")) for v in leakage.VARIANTS}
  assert out["subjects"] == 3 and out["sources"] == ["Mixed"]
  for v, r in runs.items():
    for m in ("uf1", "uar", "accuracy"):
      assert out["scores"][v]["Mixed"][m] == pytest.approx(r["aggregate"]["Mixed"][m])
  infl = next(d for d in out["differences"] if d["comparison"].startswith("inflation"))
  assert (infl["a"], infl["b"]) == ("test-subject", "validation")
  assert infl["uf1"]["diff"] == pytest.approx(
    runs["test-subject"]["aggregate"]["Mixed"]["uf1"] - runs["validation"]["aggregate"]["Mixed"]["uf1"]
  )
  md = open(os.path.join(wd, "leakage.md")).read()
  assert "| Selection on the held-out subject (leaky) |" in md and "## Per-fold results" in md
  for f in out["folds"]:
    assert f"| {f['subject']} | {f['n']} |" in md
  # A second call reuses the finished runs (nothing retrained) and rewrites the same numbers.
  assert (
    leakage.main(["--workdir", wd, "--config=configs/synth_demo.py", "--assemble-only", "--bootstrap-samples=200"]) == 0
  )
  assert _json(os.path.join(wd, "leakage.json"))["differences"] == out["differences"]


# ---------------------------------------------------------------------------------------------
# Fast checks: the commands, the analysis on fabricated runs, the last-epoch switch in the loop
# ---------------------------------------------------------------------------------------------


def test_plan_shares_the_default_pretraining_unless_told_otherwise():
  cmds = dict(leakage.plan("py", "configs/cde.py", "w", ["--config.finetune.epochs=2"]))
  assert list(cmds) == ["validation", "test-subject", "last-epoch"]
  assert not any("pretrained_checkpoint" in a for a in cmds["validation"])
  assert "--config.finetune.test_fold_early_stopping=True" in cmds["test-subject"]
  assert "--config.finetune.select_best=False" in cmds["last-epoch"]
  for v in ("test-subject", "last-epoch"):
    assert f"--config.pretrained_checkpoint={os.path.join('w', 'validation', 'pretrain')}" in cmds[v]
    assert cmds[v][-1] == "--config.finetune.epochs=2"
  off = dict(leakage.plan("py", "c", "w", ["--config.pretrain.enabled=False"]))
  assert not any("pretrained_checkpoint" in a for c in off.values() for a in c)


def _fake_run(preds, subjects, truth, sources=None):
  folds = []
  for s, (t, p) in zip(subjects, zip(truth, preds)):
    folds.append(
      {
        "subject": s,
        "n": len(t),
        "clip_ids": [f"{s}_{i}" for i in range(len(t))],
        "clip_sources": (sources or {}).get(s, ["casme2"] * len(t)),
        "y_true": t,
        "y_pred": p,
        "accuracy": float(np.mean(np.asarray(t) == np.asarray(p))),
        "best_epoch": 1,
        "epochs_trained": 2,
      }
    )
  return {
    "class_names": ["negative", "positive", "surprise"],
    "sources": ["casme2"],
    "folds": folds,
    "git_commit": "g",
    "seed": 0,
  }


def test_analyse_pairs_subjects_and_scores_pooled():
  rng = np.random.default_rng(0)
  subjects = [f"casme2/s{i}" for i in range(8)]
  truth = [rng.integers(0, 3, int(rng.integers(2, 6))).tolist() for _ in subjects]
  good = [t if i % 2 else rng.integers(0, 3, len(t)).tolist() for i, t in enumerate(truth)]
  bad = [rng.integers(0, 3, len(t)).tolist() for t in truth]
  runs = {"validation": _fake_run(bad, subjects, truth), "test-subject": _fake_run(good, subjects, truth)}
  out = leakage.analyse(runs, samples=300, seed=0)
  yt = np.concatenate(truth)
  for v, p in (("validation", bad), ("test-subject", good)):
    assert out["scores"][v]["Mixed"]["uf1"] == pytest.approx(metrics.compute(yt, np.concatenate(p), 3)["uf1"])
  d = out["differences"][0]
  assert d["comparison"].startswith("inflation") and d["groups"] == 8
  assert d["uar"]["diff"] == pytest.approx(
    out["scores"]["test-subject"]["Mixed"]["uar"] - out["scores"]["validation"]["Mixed"]["uar"]
  )
  assert [f["subject"] for f in out["folds"]] == subjects
  assert out["folds"][1]["test-subject"]["correct"] == len(truth[1])
  # Runs over other clips cannot be paired.
  other = _fake_run(good, subjects, [[(y + 1) % 3 for y in t] for t in truth])
  with pytest.raises(UserError, match="hold different clips or labels"):
    leakage.analyse({"validation": runs["validation"], "test-subject": other}, samples=10, seed=0)


def test_select_best_false_keeps_the_last_epoch_and_never_stops_early():
  config = train_data.tiny_config(epochs=4)
  ft = config.finetune
  ft.early_stopping_patience = 1
  ds = train_data.fabricate(subject_sizes=(6, 6, 6))
  model = build_model(config.model)
  init = jax.device_get(jit_init(model, jax.random.PRNGKey(0), train_data.SIZE, 3))
  run = loop.RunData(
    name="r", train_x=ds.images[:12], train_y=ds.labels[:12], val_x=ds.images[12:], val_y=ds.labels[12:], seed=0
  )
  ft.select_best = False
  res = loop.fit(model_apply(model), init, run, ft, num_classes=3, progress=False)
  assert (res.epochs_trained, res.best_epoch) == (4, 3)
  assert res.best_val_accuracy == res.history[-1]["val_accuracy"]
  many = loop.fit_many(model_apply(model), [init, init], [run, run], ft, num_classes=3, progress=False)
  assert [(r.epochs_trained, r.best_epoch) for r in many] == [(4, 3), (4, 3)]
  apply_fn = model_apply(model)
  np.testing.assert_allclose(
    loop.predict_probs(apply_fn, many[0].variables, run.val_x, 4),
    loop.predict_probs(apply_fn, res.variables, run.val_x, 4),
    atol=1e-5,
  )
  # The default (select_best=True) stops early on this run and keeps its best epoch.
  ft.select_best = True
  best = loop.fit(apply_fn, init, run, ft, num_classes=3, progress=False)
  assert best.best_val_accuracy == max(h["val_accuracy"] for h in best.history)
