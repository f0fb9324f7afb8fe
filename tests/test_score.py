"""mer_jax.score: MEGC 2019 scores against scikit-learn, the input formats, and every bad-input message."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from mer_jax import reporting, score
from mer_jax.data import official
from mer_jax.data.mappings import THREE_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows, header=None):
  with open(path, "w") as f:
    if header:
      f.write(header + "\n")
    for r in rows:
      f.write(",".join(str(v) for v in r) + "\n")
  return str(path)


def _sk(y_true, y_pred):
  return {
    "uf1": f1_score(y_true, y_pred, average="macro", zero_division=0),
    "uar": recall_score(y_true, y_pred, average="macro", zero_division=0),
    "accuracy": accuracy_score(y_true, y_pred),
  }


def _check_against_sklearn(res, truth_rows, pred_of):
  """res: score.evaluate output; truth_rows: OfficialClip list; pred_of: key -> predicted index."""
  keys = [c.key for c in truth_rows if c.key in pred_of]
  y_true = np.array([c.label for c in truth_rows if c.key in pred_of])
  y_pred = np.array([pred_of[k] for k in keys])
  ds = np.array([k[0] for k in keys])
  parts = {"composite": np.ones(len(keys), bool)} | {d: ds == d for d in sorted(set(ds))}
  assert set(res["scores"]) == set(parts)
  for name, mask in parts.items():
    want = _sk(y_true[mask], y_pred[mask])
    got = res["scores"][name]
    for m in ("uf1", "uar", "accuracy"):
      assert got[m] == pytest.approx(want[m], abs=1e-12), (name, m)
    assert got["num_samples"] == int(mask.sum())


def test_random_predictions_on_the_official_list_match_sklearn(tmp_path):
  truth = official.megc2019_composite()
  rng = np.random.default_rng(0)
  for trial in range(5):
    # skewed predictions: some classes never predicted in some datasets
    p = rng.dirichlet(np.full(3, 0.4))
    pred_of = {c.key: int(c.label if rng.random() < 0.5 else rng.choice(3, p=p)) for c in truth}
    rows = [(d, s, c, THREE_CLASSES[v] if trial % 2 else v) for (d, s, c), v in pred_of.items()]
    res = score.evaluate(_write(tmp_path / f"p{trial}.csv", rows))
    assert res["num_scored"] == 442 and res["num_missing"] == 0
    _check_against_sklearn(res, truth, pred_of)


def test_random_small_truth_lists_with_absent_classes_match_sklearn(tmp_path):
  rng = np.random.default_rng(1)
  for trial in range(40):
    n = int(rng.integers(1, 25))
    present = rng.choice(3, size=int(rng.integers(1, 4)), replace=False)
    truth_rows = [
      (str(rng.choice(["casme2", "samm", "smic"])), f"sub{i % 4}", f"c{i}", int(rng.choice(present))) for i in range(n)
    ]
    tpath = _write(tmp_path / f"t{trial}.csv", truth_rows)
    pred_of = {
      official.megc_key(d, s, c): int(rng.choice(present) if rng.random() < 0.7 else rng.integers(0, 3))
      for d, s, c, _ in truth_rows
    }
    ppath = _write(tmp_path / f"p{trial}.csv", [k + (v,) for k, v in pred_of.items()])
    res = score.evaluate(ppath, tpath)
    _check_against_sklearn(res, official.read_list(tpath), pred_of)


def test_precision_and_recall_differ_so_uar_is_recall(tmp_path):
  # Per dataset and pooled, macro precision != macro recall here: a scorer that averaged precisions as "UAR"
  # (as STSTNet's published UAR did) fails.
  truth = [
    ("casme2", "sub01", "a", 0),
    ("casme2", "sub01", "b", 0),
    ("casme2", "sub02", "c", 0),
    ("casme2", "sub02", "d", 1),
    ("casme2", "sub02", "e", 2),
    ("samm", "006", "006_1", 0),
    ("samm", "006", "006_2", 1),
    ("samm", "007", "007_1", 1),
    ("samm", "007", "007_2", 2),
    ("samm", "007", "007_3", 2),
  ]
  preds = [
    "negative",
    "positive",
    "negative",
    "positive",
    "negative",
    "negative",
    "negative",
    "positive",
    "surprise",
    "negative",
  ]
  tpath = _write(tmp_path / "truth.csv", truth, header="dataset,subject,clip,label")
  ppath = _write(tmp_path / "pred.csv", [t[:3] + (p,) for t, p in zip(truth, preds)])
  res = score.evaluate(ppath, tpath)
  y_true = np.array([t[3] for t in truth])
  y_pred = np.array([THREE_CLASSES.index(p) for p in preds])
  ds = np.array([t[0] for t in truth])
  for name, mask in (("composite", np.ones(len(truth), bool)), ("casme2", ds == "casme2"), ("samm", ds == "samm")):
    rec = recall_score(y_true[mask], y_pred[mask], average="macro", zero_division=0)
    prec = precision_score(y_true[mask], y_pred[mask], average="macro", zero_division=0)
    assert abs(rec - prec) > 0.05, name  # the case really separates the two
    assert res["scores"][name]["uar"] == pytest.approx(rec)
    assert res["scores"][name]["uf1"] == pytest.approx(f1_score(y_true[mask], y_pred[mask], average="macro"))
  # by hand, CASME II: recalls 2/3, 1, 0 -> 5/9; precisions 2/3, 1/2, 0 -> 7/18
  assert res["scores"]["casme2"]["uar"] == pytest.approx(5 / 9)
  assert res["scores"]["casme2"]["per_class_recall"] == pytest.approx([2 / 3, 1.0, 0.0])


def test_reader_names_are_matched_to_the_list_spelling(tmp_path):
  # SAMM '006' -> '6', SMIC-HS 's1' / 's1_ne_01' -> 's01' / 's01_ne_01'; dataset spelt as displayed.
  truth = official.megc2019_composite()
  pick = [c for c in truth if c.dataset == "samm" and c.subject == "6"][:2] + [
    c for c in truth if c.dataset == "smic" and c.subject == "s01"
  ][:2]
  rows = []
  for c in pick:
    if c.dataset == "samm":
      rows.append(("SAMM", "006", c.clip, c.label))
    else:
      rows.append(("SMIC-HS", "s1", "s1" + c.clip[3:], c.label))
  res = score.evaluate(_write(tmp_path / "p.csv", rows, header="dataset,subject,clip,prediction"), allow_missing=True)
  assert res["num_scored"] == 4 and res["num_missing"] == 442 - 4
  assert res["scores"]["composite"]["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------
# Bad input: one error line naming the file and row, exit code 2
# ---------------------------------------------------------------------------------------------

TRUTH = [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 1), ("samm", "6", "006_1_2", 2)]


@pytest.fixture
def truth_file(tmp_path):
  return _write(tmp_path / "truth.csv", TRUTH)


def _run_main(capsys, argv):
  with pytest.raises(SystemExit) as e:
    from mer_jax.errors import run_cli

    run_cli(lambda: score.main(argv))
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


@pytest.mark.parametrize(
  "rows,message",
  [
    (
      [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 1)],
      "error: samm/6/006_1_2 (ground truth {truth}) has no prediction in {pred}; pass --allow-missing",
    ),
    (
      [
        ("casme2", "sub01", "EP01", 0),
        ("casme2", "sub01", "EP02", 1),
        ("samm", "6", "006_1_2", 2),
        ("casme2", "sub09", "EP01", 0),
      ],
      "error: {pred}, row 4: casme2/sub09/EP01 is not in the ground truth ({truth})",
    ),
    (
      [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 1), ("casme2", "sub01", "EP01", 2)],
      "error: {pred}, row 3: casme2/sub01/EP01 is predicted twice (first at {pred}, row 1)",
    ),
    (
      [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", "happy")],
      "error: {pred}, row 2: unknown label 'happy'; expected 0/1/2 or one of negative, positive, surprise",
    ),
    ([("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 3)], "error: {pred}, row 2: unknown label '3'"),
    ([("casme3", "sub01", "EP01", 0)], "error: {pred}, row 1: unknown dataset 'casme3'"),
    ([("casme2", "sub01", "EP01")], "error: {pred}, row 1: expected 4 columns dataset,subject,clip,prediction"),
  ],
)
def test_bad_predictions_give_one_error_line(tmp_path, capsys, truth_file, rows, message):
  pred = _write(tmp_path / "pred.csv", rows)
  code, out, err = _run_main(capsys, [pred, "--truth", truth_file])
  assert code == 2 and out == ""
  assert err.startswith(message.format(pred=pred, truth=truth_file)), err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_file_and_bad_truth_row(tmp_path, capsys, truth_file):
  code, _, err = _run_main(capsys, [str(tmp_path / "nope.csv"), "--truth", truth_file])
  assert code == 2 and err.startswith(f"error: cannot read the predictions {tmp_path / 'nope.csv'}")
  bad_truth = _write(tmp_path / "bad_truth.csv", TRUTH[:2] + [("samm", "6", "006_1_2", "joy")])
  pred = _write(tmp_path / "pred.csv", TRUTH)
  code, _, err = _run_main(capsys, [pred, "--truth", bad_truth])
  assert code == 2 and err.startswith(f"error: {bad_truth}, row 3: unknown label 'joy'")


def test_allow_missing_scores_what_is_there_and_says_how_many(tmp_path, capsys, truth_file):
  pred = _write(tmp_path / "pred.csv", [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 0)])
  code, out, err = _run_main(capsys, [pred, "--truth", truth_file, "--allow-missing"])
  assert code == 0
  assert "1 ground-truth clips have no prediction and are NOT scored" in out
  assert "note: 1 of 3 ground-truth clips have no prediction" in err
  res = score.evaluate(pred, truth_file, allow_missing=True)
  assert res["num_scored"] == 2 and res["missing"] == ["samm/6/006_1_2"]
  assert res["scores"]["composite"]["uar"] == pytest.approx(recall_score([0, 1], [0, 0], average="macro"))


def test_cli_end_to_end_json_and_plots(tmp_path, truth_file):
  pred = _write(
    tmp_path / "pred.csv",
    [("casme2", "sub01", "EP01", 0), ("casme2", "sub01", "EP02", 0), ("samm", "006", "006_1_2", 2)],
    header="dataset,subject,clip,prediction",
  )
  plots = tmp_path / "plots"
  out = subprocess.run(
    [sys.executable, "-m", "mer_jax.score", pred, "--truth", truth_file, "--json", "--plots", str(plots)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  res = json.loads(out.stdout)
  assert res["num_scored"] == 3 and res["truth"] == truth_file
  assert list(res["scores"]) == ["composite", "casme2", "samm"]
  c = res["scores"]["composite"]
  assert c["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
  assert c["uar"] == pytest.approx(recall_score([0, 1, 2], [0, 0, 2], average="macro"))
  assert c["uf1"] == pytest.approx(f1_score([0, 1, 2], [0, 0, 2], average="macro"))
  assert res["scores"]["samm"]["uf1"] == 1.0
  for name in ("confusion_composite.png", "confusion_casme2.png", "confusion_samm.png", "confusion_matrices.png"):
    assert os.path.getsize(plots / name) > 0, name
  bad = subprocess.run(
    [sys.executable, "-m", "mer_jax.score", str(tmp_path / "nope.csv")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# mer_jax outputs as input
# ---------------------------------------------------------------------------------------------


def _fold_records():
  """Two CASME II folds, one SAMM and one SMIC-HS fold, named as mer_jax's readers name them."""
  rec = []
  for subject, src, clips, yt, yp in (
    ("casme2/sub01", "casme2", ["EP02_01f", "EP19_05f", "EP19_06f"], [1, 0, 0], [1, 0, 2]),
    ("casme2/sub02", "casme2", ["EP01_11f", "EP02_04f"], [0, 0], [0, 1]),
    ("samm/006", "samm", ["006_1_2", "006_1_3"], [0, 0], [0, 0]),
    ("smic/s1", "smic", ["s1_ne_01", "s1_po_01"], [0, 1], [2, 1]),
  ):
    probs = np.eye(3)[yp]
    rec.append(
      {"subject": subject, "clip_ids": clips, "sources": [src] * len(clips), "y_true": yt, "y_pred": yp, "probs": probs}
    )
  return rec


def test_results_json_and_predictions_json_inputs(tmp_path, monkeypatch):
  from mer_jax import config_defaults
  from mer_jax.train import loso

  monkeypatch.setattr(reporting, "plot_confusion", lambda path, *a, **k: open(path, "wb").close())
  monkeypatch.setattr(reporting, "plot_confusion_panel", lambda path, *a, **k: open(path, "wb").close())
  recs = _fold_records()
  cfg = config_defaults.get_base_config()
  cfg.bootstrap_samples = 10
  paths = reporting.write_reports(str(tmp_path / "run"), cfg, recs, list(THREE_CLASSES), git_commit="x")
  truth = official.megc2019_composite()
  keys = [official.megc_key(r["sources"][0], r["subject"].split("/")[1], c) for r in recs for c in r["clip_ids"]]
  assert all(k in {c.key for c in truth} for k in keys)  # reader names map onto the official list
  for where in (paths["results_json"], str(tmp_path / "run")):
    res = score.evaluate(where, allow_missing=True)
    assert res["num_scored"] == 9 and res["num_missing"] == 442 - 9
    stored = reporting.load_results(paths["results_json"])["aggregate"]
    for ours, theirs in (("composite", "Mixed"), ("casme2", "casme2"), ("samm", "samm"), ("smic", "smic")):
      for m in ("uf1", "uar", "accuracy"):
        assert res["scores"][ours][m] == pytest.approx(stored[theirs][m]), (ours, m)
  pj = tmp_path / "predictions.json"
  pj.write_text(
    json.dumps(loso.concatenate([dict(r, probs=r["probs"].tolist(), model_selection="validation") for r in recs]))
  )
  res = score.evaluate(str(pj), allow_missing=True)
  assert res["scores"]["composite"]["uf1"] == pytest.approx(stored["Mixed"]["uf1"])
  # A predictions.json whose clips are not on the list names the entry.
  bad = json.loads(pj.read_text())
  bad["clip_ids"][0] = "EP99_99"
  pj.write_text(json.dumps(bad))
  with pytest.raises(score.DataError, match=r"predictions.json, entry 0 \(EP99_99\): casme2/sub01/EP99_99 is not in"):
    score.evaluate(str(pj), allow_missing=True)
  # A run whose true labels differ from the list's is refused (it was scored against other labels).
  bad["clip_ids"][0] = "EP02_01f"
  bad["y_true"][0] = 0  # casme2/sub01/EP02_01f is positive on the list
  pj.write_text(json.dumps(bad))
  with pytest.raises(
    score.DataError,
    match=r"entry 0 \(EP02_01f\): casme2/sub01/EP02_01f is negative in that file "
    r"but positive in the ground truth \(official MEGC 2019 composite list\)",
  ):
    score.evaluate(str(pj), allow_missing=True)
