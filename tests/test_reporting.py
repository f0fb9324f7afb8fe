"""Reports: metric numbers vs sklearn, bootstrap CI behaviour, atomic writes, table layouts."""

import dataclasses
import json
import os

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from mer_jax import config_defaults, reporting
from mer_jax.errors import UserError

CLASSES3 = ("negative", "positive", "surprise")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _json(path):
  return json.loads(_read(path))


@pytest.fixture
def no_plots(monkeypatch):
  """For tests about numbers and text only: skip the (slow) matplotlib rendering."""

  def touch(path, *a, **k):
    open(path, "wb").close()
    return path

  monkeypatch.setattr(reporting, "plot_confusion", touch)
  monkeypatch.setattr(reporting, "plot_confusion_panel", touch)


def _config(bootstrap=300, seed=0, test_fold=False, micro=("casme2", "samm", "smic")):
  c = config_defaults.get_base_config()
  c.name = "cde_test"
  c.seed = seed
  c.bootstrap_samples = bootstrap
  c.data.micro = micro
  c.finetune.test_fold_early_stopping = test_fold
  return c


def _records(
  rng, subjects_per_source=4, sources=("casme2", "samm", "smic"), k=3, p_correct=0.7, clips=(2, 9), as_dict=False
):
  """Fabricated LOSO fold records: each subject's clips from one source, ~p_correct right."""
  recs = []
  for src in sources:
    for s in range(subjects_per_source):
      n = int(rng.integers(*clips))
      y = rng.integers(0, k, n)
      wrong = rng.random(n) > p_correct
      pred = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
      probs = rng.dirichlet(np.ones(k), n)
      rec = dict(
        subject=f"{src}/s{s:02d}",
        clip_ids=[f"{src}_s{s}_c{i}" for i in range(n)],
        sources=[src] * n,
        y_true=y,
        y_pred=pred,
        probs=probs,
        epochs_trained=12,
        best_epoch=7,
        val_metric=0.5,
        wall_time_s=1.5,
      )
      recs.append(rec if as_dict else reporting.FoldRecord(**rec))
  return recs


def _pooled(recs, src=None):
  yt, yp = [], []
  for r in recs:
    r = reporting.FoldRecord.from_any(r)
    m = np.ones(len(r.y_true), bool) if src is None else np.asarray(r.sources) == src
    yt.append(r.y_true[m])
    yp.append(r.y_pred[m])
  return np.concatenate(yt), np.concatenate(yp)


def _sk(yt, yp, k):
  """sklearn oracle. Macro averages over the classes present in truth or predictions
  (labels=None), the convention documented in mer_jax.metrics."""
  return dict(
    accuracy=accuracy_score(yt, yp),
    uf1=f1_score(yt, yp, average="macro", zero_division=0),
    uar=recall_score(yt, yp, average="macro", zero_division=0),
    confusion=confusion_matrix(yt, yp, labels=list(range(k))),
  )


def test_results_json_metrics_match_sklearn_and_counts(tmp_path):
  rng = np.random.default_rng(1)
  recs = _records(rng, as_dict=True)  # dicts are accepted as well as FoldRecord
  paths = reporting.write_reports(str(tmp_path), _config(), recs, CLASSES3, git_commit="abc123")
  res = _json(paths["results_json"])
  assert res["git_commit"] == "abc123" and res["seed"] == 0 and res["benchmark"] == "cde"
  assert res["num_folds"] == len(recs)
  assert res["num_samples"] == sum(len(r["y_true"]) for r in recs)
  assert res["config"]["model"]["attention"] == "mixed"
  assert res["test_fold_early_stopping"] is False
  for key, src in (("Mixed", None), ("casme2", "casme2"), ("samm", "samm"), ("smic", "smic")):
    yt, yp = _pooled(recs, src)
    ref = _sk(yt, yp, 3)
    got = res["aggregate"][key]
    assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9), key
    assert got["uf1"] == pytest.approx(ref["uf1"], abs=1e-9), key
    assert got["uar"] == pytest.approx(ref["uar"], abs=1e-9), key
    np.testing.assert_array_equal(np.asarray(got["confusion"]), ref["confusion"])
    assert list(res["class_counts"][key].values()) == np.bincount(yt, minlength=3).tolist()
  for f, r in zip(res["folds"], recs):
    ref = _sk(r["y_true"], r["y_pred"], 3)
    assert f["subject"] == r["subject"] and f["n"] == len(r["y_true"])
    assert f["uf1"] == pytest.approx(ref["uf1"], abs=1e-9)
    assert f["y_pred"] == r["y_pred"].tolist() and f["clip_ids"] == r["clip_ids"]
    np.testing.assert_allclose(f["probs"], r["probs"], atol=1e-6)
  # The files the report promises exist and the PNGs decode to images.
  import matplotlib.image

  for key in (
    "results_md",
    "confusion_mixed",
    "confusion_casme2",
    "confusion_samm",
    "confusion_smic",
    "confusion_matrices",
  ):
    assert os.path.getsize(paths[key]) > 0, key
  img = matplotlib.image.imread(paths["confusion_matrices"])
  assert img.ndim == 3 and min(img.shape[:2]) > 400  # (a)-(d) panels, 2 x 2
  md = _read(paths["results_md"])
  mixed = res["aggregate"]["Mixed"]
  assert "Mixed UAR | Mixed UF1 | Mixed Acc (%) | CASME II UAR" in md  # Table 5/6 layout
  assert f"{mixed['uar']:.4f} | {mixed['uf1']:.4f} | {100 * mixed['accuracy']:.2f}" in md
  assert "WARNING" not in md


def test_bootstrap_scores_through_the_metrics_module(monkeypatch):
  # One implementation of UF1 / UAR: the bootstrap must call mer_jax.metrics on its [B, K, K] stack.
  from mer_jax import metrics

  calls = []
  real = metrics.scores

  def spy(conf):
    calls.append(np.shape(conf))
    return real(conf)

  monkeypatch.setattr(metrics, "scores", spy)
  assert not hasattr(reporting, "scores_from_confusion")
  yt, yp = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 1, 0, 2, 2])
  reporting.bootstrap_ci(yt, yp, np.array(list("aabbcc")), 3, samples=50, seed=0)
  assert calls == [(50, 3, 3)]


def test_paired_bootstrap_diff_is_paired_and_matches_direct_recomputation():
  from mer_jax import metrics

  rng = np.random.default_rng(11)
  g, k = 12, 3
  a = rng.integers(0, 4, (g, k, k))
  b = a.copy()
  b[:, np.arange(k), np.arange(k)] += 1  # B is A plus one correct clip per class and subject
  out = reporting.paired_bootstrap_diff(b, a, samples=300, seed=5)
  for name in ("uf1", "uar", "accuracy"):
    want = metrics.from_confusion(b.sum(0))[name] - metrics.from_confusion(a.sum(0))[name]
    assert out[name]["diff"] == pytest.approx(want)
    assert out[name]["low"] <= out[name]["diff"] <= out[name]["high"]
  # Recompute by hand from the same resamples: each resample's difference uses one draw of subjects for both.
  counts = reporting.resample_counts(g, 300, 5)
  diffs = [
    metrics.from_confusion(np.einsum("s,skl->kl", c, b))["uar"]
    - metrics.from_confusion(np.einsum("s,skl->kl", c, a))["uar"]
    for c in counts
  ]
  assert (out["uar"]["low"], out["uar"]["high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
  # Identical settings: the paired difference is exactly 0 in every resample (unpaired draws would not be).
  same = reporting.paired_bootstrap_diff(a, a, samples=100, seed=1)
  assert same["uf1"] == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_bootstrap_ci_contains_point_estimate_and_shrinks_with_more_subjects():
  rng = np.random.default_rng(7)
  widths = []
  for subjects in (8, 128):
    recs = _records(rng, subjects_per_source=subjects, sources=("casme2",), p_correct=0.6, clips=(3, 8))
    yt, yp = _pooled(recs)
    groups = np.concatenate([[r.subject] * len(r.y_true) for r in recs])
    ci = reporting.bootstrap_ci(yt, yp, groups, 3, samples=400, seed=0)
    point = _sk(yt, yp, 3)
    for m in ("uf1", "uar"):
      assert ci[m]["low"] <= point[m] <= ci[m]["high"], (subjects, m)
    widths.append(ci["uf1"]["high"] - ci["uf1"]["low"])
    assert ci["groups"] == subjects
    # Seeded: the same seed gives the same interval, another seed a different one.
    again = reporting.bootstrap_ci(yt, yp, groups, 3, samples=400, seed=0)
    other = reporting.bootstrap_ci(yt, yp, groups, 3, samples=400, seed=1)
    assert again == ci and other["uf1"] != ci["uf1"]
  assert widths[1] < 0.5 * widths[0]  # ~1/sqrt(16) expected


def test_bootstrap_resamples_whole_subjects():
  # Two subjects: one all right, one all wrong. Resampling subjects can only give
  # accuracies from {0, 1/2 (weighted by clip counts), 1}; resampling clips would give others.
  yt = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  yp = np.array([0, 1, 2, 1, 2, 0, 1, 2])
  groups = np.array(["a", "a", "a", "b", "b", "b", "b", "b"])
  rng_ci = reporting.bootstrap_ci(yt, yp, groups, 3, samples=200, seed=0)
  assert rng_ci["accuracy"]["low"] == 0.0 and rng_ci["accuracy"]["high"] == 1.0
  accs = set()
  for seed in range(20):
    r = reporting.bootstrap_ci(yt, yp, groups, 3, samples=1, seed=seed)
    accs.add(round(r["accuracy"]["low"], 6))
  assert accs <= {0.0, 1.0, round(3 / 8, 6)}


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch, no_plots):
  rng = np.random.default_rng(2)
  recs = _records(rng)
  cfg = _config(bootstrap=50)
  paths = reporting.write_reports(str(tmp_path), cfg, recs, CLASSES3, git_commit="v1")
  before = _read(paths["results_json"])

  def failing_dump(obj, f, **kw):
    f.write('{"partial": ')
    raise RuntimeError("disk full")

  monkeypatch.setattr(reporting.json, "dump", failing_dump)
  with pytest.raises(RuntimeError, match="disk full"):
    reporting.write_reports(str(tmp_path), cfg, recs, CLASSES3, git_commit="v2")
  assert _read(paths["results_json"]) == before  # old, complete file untouched
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
  fresh = tmp_path / "fresh"
  with pytest.raises(RuntimeError):
    reporting.write_reports(str(fresh), cfg, recs, CLASSES3, git_commit="v2")
  assert not (fresh / "results.json").exists()
  assert not [f for f in os.listdir(fresh) if f.endswith(".tmp")]


def test_test_fold_early_stopping_is_labelled_everywhere(tmp_path, no_plots):
  rng = np.random.default_rng(4)
  recs = _records(rng)
  reporting.write_reports(
    str(tmp_path / "tf"), _config(bootstrap=20, test_fold=True), recs, CLASSES3, git_commit="x", label="Ours"
  )
  reporting.write_reports(str(tmp_path / "ok"), _config(bootstrap=20), recs, CLASSES3, git_commit="x", label="Ours")
  res = _json(tmp_path / "tf" / "results.json")
  assert res["test_fold_early_stopping"] is True and "test fold" in res["model_selection"]
  md = _read(tmp_path / "tf" / "results.md")
  assert "WARNING: test-fold early stopping" in md and f"| Ours{reporting.TEST_FOLD_MARK} |" in md
  ok_md = _read(tmp_path / "ok" / "results.md")
  assert reporting.TEST_FOLD_MARK not in ok_md
  # A fold record saying it selected on the test fold marks the run even if the config does not.
  marked = [{**dataclasses.asdict(r), "model_selection": "test_fold"} for r in recs]
  res2 = reporting.build_results(_config(bootstrap=5), marked, CLASSES3, git_commit="x")
  assert res2["test_fold_early_stopping"] is True
  assert res2["folds"][0]["model_selection"] == "test_fold"
  paths = reporting.write_ablation_table(
    str(tmp_path / "table"), [("Proper", str(tmp_path / "ok")), ("Peeking", str(tmp_path / "tf"))], title="t"
  )
  table = _read(paths["table_md"])
  assert f"| Peeking{reporting.TEST_FOLD_MARK} |" in table and "| Proper |" in table
  assert "test_fold_early_stopping=True" in table
  rows = _json(paths["table_json"])["rows"]
  assert [r["test_fold_early_stopping"] for r in rows] == [False, True]


def test_sde_layout_single_dataset(tmp_path):
  rng = np.random.default_rng(5)
  names = ("disgust", "happiness", "repression", "surprise", "others")
  recs = _records(rng, subjects_per_source=6, sources=("casme2",), k=5)
  paths = reporting.write_reports(
    str(tmp_path), _config(bootstrap=50, micro=("casme2",)), recs, names, git_commit="x", label="Ours"
  )
  res = _json(paths["results_json"])
  assert res["benchmark"] == "sde" and res["sources"] == ["casme2"]
  md = _read(paths["results_md"])
  assert "| Method | UF1 | Acc (%) |" in md and "Mixed UAR" not in md  # Tables 7-9 layout
  yt, yp = _pooled(recs)
  ref = _sk(yt, yp, 5)
  assert f"| Ours | {ref['uf1']:.4f} | {100 * ref['accuracy']:.2f} |" in md
  assert "confusion_matrices" not in paths and os.path.exists(paths["confusion_mixed"])


def test_ablation_table_from_several_runs(tmp_path, no_plots):
  rng = np.random.default_rng(6)
  runs = []
  for name, p in (("No attention", 0.4), ("Channel attention only", 0.6), ("Mixed attention", 0.9)):
    wd = tmp_path / name.replace(" ", "_")
    reporting.write_reports(str(wd), _config(bootstrap=20), _records(rng, p_correct=p), CLASSES3, git_commit="c0ffee")
    runs.append((name, str(wd)))
  paths = reporting.write_ablation_table(str(tmp_path / "t11"), runs, title="Table 11")
  md = _read(paths["table_md"])
  lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "attention" in ln.lower() and "CI" not in ln]
  assert [ln.split(" | ")[0][2:] for ln in lines][:3] == [r[0] for r in runs]
  for (_, wd), line in zip(runs, lines):
    agg = _json(os.path.join(wd, "results.json"))["aggregate"]
    cells = line.strip("| ").split(" | ")
    assert len(cells) == 13  # Method + 4 datasets x (UAR, UF1, Acc)
    assert cells[1:4] == [
      f"{agg['Mixed']['uar']:.4f}",
      f"{agg['Mixed']['uf1']:.4f}",
      f"{100 * agg['Mixed']['accuracy']:.2f}",
    ]
    assert cells[10:13] == [
      f"{agg['smic']['uar']:.4f}",
      f"{agg['smic']['uf1']:.4f}",
      f"{100 * agg['smic']['accuracy']:.2f}",
    ]
  assert "[No attention](../No_attention/confusion_matrices.png)" in md
  with pytest.raises(UserError, match="no results.json under"):
    reporting.write_ablation_table(str(tmp_path / "t"), runs + [("Spatial", str(tmp_path / "nope"))], title="x")
  paths = reporting.write_ablation_table(
    str(tmp_path / "t"), runs + [("Spatial", str(tmp_path / "nope"))], title="x", missing_ok=True
  )
  assert "Missing (not run or not finished): Spatial" in _read(paths["table_md"])


def test_fold_record_validation_messages():
  good = dict(
    subject="casme2/sub01",
    clip_ids=["a", "b"],
    sources=["casme2"] * 2,
    y_true=[0, 1],
    y_pred=[0, 1],
    probs=np.eye(3)[:2],
    wall_time=3.0,
    best_val_metric=0.7,
  )
  rec = reporting.FoldRecord.from_any(good)
  assert rec.wall_time_s == 3.0 and rec.val_metric == 0.7
  with pytest.raises(UserError, match=r"'casme2/sub01'.*y_pred has 3"):
    reporting.FoldRecord.from_any({**good, "y_pred": [0, 1, 2]})
  with pytest.raises(UserError, match="lacks probs"):
    reporting.FoldRecord.from_any({k: v for k, v in good.items() if k != "probs"})
  with pytest.raises(UserError, match="repeat subject"):
    reporting.build_results(_config(), [good, good], CLASSES3, git_commit="x")
  with pytest.raises(UserError, match="outside 0..2"):
    reporting.build_results(_config(), [{**good, "y_pred": [0, 5]}], CLASSES3, git_commit="x")
  with pytest.raises(UserError, match="no LOSO fold records"):
    reporting.build_results(_config(), [], CLASSES3, git_commit="x")


def test_no_bootstrap_gives_valid_json_with_nulls(tmp_path, no_plots):
  recs = _records(np.random.default_rng(8), subjects_per_source=2)
  paths = reporting.write_reports(str(tmp_path), _config(bootstrap=0), recs, CLASSES3, git_commit="x")
  res = _json(paths["results_json"])  # strict JSON: no NaN tokens
  assert res["bootstrap"]["Mixed"]["uf1"] == {"low": None, "high": None}
  assert "| Mixed | 6 |" in _read(paths["results_md"])


# ---------------------------------------------------------------------------------------------
# Results in context (mer_jax.literature)
# ---------------------------------------------------------------------------------------------


def test_cde_results_md_shows_the_paper_and_published_results_in_context(tmp_path, no_plots):
  rng = np.random.default_rng(21)
  recs = _records(rng)
  paths = reporting.write_reports(str(tmp_path), _config(bootstrap=50), recs, CLASSES3, git_commit="c")
  md, res = _read(paths["results_md"]), _json(paths["results_json"])
  assert "## Results in context" in md
  # MEGC 2019 layout: composite + per-dataset rows, this run beside the paper's Tables 5-6 figures.
  for part, name, paper in (
    ("Mixed", "Composite (Mixed)", "0.9213 | 0.9167 | 93.74"),
    ("casme2", "CASME II", "0.9340 | 0.9174 | 94.67"),
    ("samm", "SAMM", "0.8485 | 0.8415 | 90.15"),
    ("smic", "SMIC-HS", "0.9510 | 0.9512 | 95.76"),
  ):
    a = res["aggregate"][part]
    n = sum(res["class_counts"][part].values())
    assert (
      f"| {name} | {n} | {res['bootstrap'][part]['groups']} | {a['uf1']:.4f} | {a['uar']:.4f} | "
      f"{100 * a['accuracy']:.2f} | {paper} |"
    ) in md, name
  # Published results: STSTNet with the RESCORED UAR (its published 0.7605 is macro precision), marked corrected.
  line = next(ln for ln in md.splitlines() if ln.startswith("| STSTNet |"))
  assert "| 0.7353 | 0.7186\u2021 | 0.8382 | 0.8190\u2021 | 0.6588 | 0.6415\u2021 | 0.6801 | 0.6703\u2021 |" in line
  assert "0.7605" not in line and "| no |" in line
  assert (
    "\u2021 STSTNet: the published UAR (0.7605 composite, 0.8686 CASME II, 0.6810 SAMM, 0.7013 SMIC-HS) "
    "equals its macro-averaged precision"
  ) in md
  assert next(ln for ln in md.splitlines() if ln.startswith("| HTNet |")).count("yes (optimistic)") == 1
  ctx = res["context"]
  assert ctx["benchmarks"] == {"Mixed": "cde_full", "casme2": "cde_casme2", "samm": "cde_samm", "smic": "cde_smic"}
  assert ctx["paper"]["Mixed"]["uf1"] == 0.9213
  ststnet = next(r for r in ctx["published"]["cde_full"] if r["method"] == "STSTNet")
  assert (ststnet["uar"], ststnet["uar_published"], ststnet["selects_on_test"]) == (0.7186, 0.7605, "no")
  assert all(r["method"] != "Gan et al. (this paper)" for r in ctx["published"]["cde_full"])
  assert "The official MEGC 2019 composite list has 442 clips of 68 subjects; this run has 74 clips" in md
  synth = _config(bootstrap=20)
  synth.data.synthetic = True
  md = _read(reporting.write_reports(str(tmp_path / "s"), synth, recs, CLASSES3, git_commit="c")["results_md"])
  assert "SynthME run: its clips are synthetic" in md and "official MEGC 2019 composite list has" not in md


def test_sde_results_md_context_and_no_context_where_nothing_fits(tmp_path, no_plots):
  rng = np.random.default_rng(22)
  recs = _records(rng, sources=("smic",))
  paths = reporting.write_reports(
    str(tmp_path / "smic"), _config(bootstrap=20, micro=("smic",)), recs, CLASSES3, git_commit="c"
  )
  md, res = _read(paths["results_md"]), _json(paths["results_json"])
  assert res["context"]["benchmarks"] == {"Mixed": "sde_smic_3c"}
  assert "This run beside the paper (Table 9, sde_smic_3c)" in md
  assert "| Paper: proposed method | - | 0.9139 | - | 92.73 |" in md
  assert "| TSCNN | 2019 | 0.7236 | - | 72.74 |" in md
  # CASME II 3-class SDE: the paper has no such table (Table 7 is 5-class) -> no context section.
  recs = _records(rng, sources=("casme2",))
  paths = reporting.write_reports(
    str(tmp_path / "c3"), _config(bootstrap=20, micro=("casme2",)), recs, CLASSES3, git_commit="c"
  )
  assert "Results in context" not in _read(paths["results_md"])
  assert _json(paths["results_json"])["context"]["benchmarks"] == {}
