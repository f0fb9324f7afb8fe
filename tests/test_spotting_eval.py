"""Spotting evaluation on hand-worked cases (both matching rules), STRS, prediction files and the
``python -m mer_jax.spot_eval`` command line (errors as one ``error:`` line, no traceback).

Every expected number below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import pytest

from mer_jax.errors import DataError
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import synth_long
from mer_jax.spotting.readers import CAS_LONG, SAMM_LV, Interval, LongReadResult, LongVideo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def gt(*videos, dataset=CAS_LONG) -> LongReadResult:
  return LongReadResult(dataset, "gt.xlsx", list(videos), read=sum(len(v.intervals) for v in videos))


def video(name, subject, *ivs) -> LongVideo:
  return LongVideo(CAS_LONG, subject, name, 30.0, tuple(ivs))


def iv(on, off, t="micro", emotion="negative") -> Interval:
  return Interval(onset=on, offset=off, apex=None, type=t, emotion=emotion)


def pred(v, on, off, t="micro", score=1.0, emotion=None) -> ev.Prediction:
  return ev.Prediction(video=v, onset=on, offset=off, type=t, score=score, emotion=emotion, dataset=CAS_LONG)


def counts(res, ds=CAS_LONG, t="micro"):
  c = res["datasets"][ds][t]
  return c["tp"], c["fp"], c["fn"]


# A = [1, 5] and B = [6, 10] (5 frames each); a prediction [1, 10] has IoU 5/10 = 0.5 with both.
TWO = video("15_0401", "s15", iv(1, 5), iv(6, 10))


def test_iou_counts_inclusive_frames_exactly():
  assert ev.iou((1, 10), (1, 5)) == Fraction(1, 2)  # 5 shared of 10
  assert ev.iou((1, 1), (1, 1)) == 1  # one frame is length 1, not 0
  assert ev.iou((1, 5), (5, 9)) == Fraction(1, 9)  # frame 5 shared; union 1..9
  assert ev.iou((1, 5), (6, 9)) == 0
  assert ev.passes(Fraction(1, 2), Fraction("0.5"), strict=False)
  assert not ev.passes(Fraction(1, 2), Fraction("0.5"), strict=True)


def test_one_prediction_overlapping_two_ground_truths():
  p = [pred("15_0401", 1, 10)]
  # megc2020: both A and B are hit (IoU 0.5 >= 0.5): TP 2, FP = 1 prediction - 2 = -1, FN 0;
  # precision = TP / predictions = 2, recall 1, F1 = 2*2*1/(2+1) = 4/3.
  r = ev.evaluate([gt(TWO)], p, rule="megc2020")
  assert counts(r) == (2, -1, 0)
  c = r["datasets"][CAS_LONG]["micro"]
  assert c["precision"] == 2.0 and c["recall"] == 1.0 and c["f1"] == pytest.approx(4 / 3)
  # one-to-one: the prediction takes one of them (the earlier, A, on the IoU tie): TP 1, FP 0, FN 1;
  # P 1, R 1/2, F1 2/3.
  r = ev.evaluate([gt(TWO)], p, rule="one-to-one")
  assert counts(r) == (1, 0, 1)
  assert r["datasets"][CAS_LONG]["micro"]["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("rule", ev.MATCHINGS)
def test_iou_exactly_half_counts_with_ge_not_with_strict(rule):
  g = gt(video("15_0401", "s15", iv(1, 5)))
  p = [pred("15_0401", 1, 10)]  # IoU exactly 5/10
  assert counts(ev.evaluate([g], p, rule=rule)) == (1, 0, 0)
  assert counts(ev.evaluate([g], p, rule=rule, strict=True)) == (0, 1, 1)
  assert counts(ev.evaluate([g], [pred("15_0401", 1, 11)], rule=rule)) == (0, 1, 1)  # 5/11 < 0.5


@pytest.mark.parametrize("rule", ev.MATCHINGS)
def test_subject_without_predictions_adds_its_false_negatives(rule):
  s15 = video("15_0401", "s15", iv(1, 5), iv(100, 140, "macro"))
  s16 = video("16_0401", "s16", iv(20, 30), iv(40, 50), iv(200, 260, "macro"))  # no predictions at all
  p = [pred("15_0401", 1, 5), pred("15_0401", 100, 140, "macro")]
  r = ev.evaluate([gt(s15, s16)], p, rule=rule)
  # micro: s15's one found (TP 1), s16's two missed (FN 2); macro: TP 1, FN 1. P = 1, R = 1/3 and 1/2.
  assert counts(r) == (1, 0, 2)
  assert counts(r, t="macro") == (1, 0, 1)
  assert counts(r, t="all") == (2, 0, 3)
  assert r["overall"]["all"]["recall"] == pytest.approx(2 / 5)
  assert r["subjects"][CAS_LONG]["s16"]["micro"]["fn"] == 2 and r["subjects"][CAS_LONG]["s16"]["micro"]["pred"] == 0


@pytest.mark.parametrize("rule", ev.MATCHINGS)
def test_type_mismatch_is_a_false_positive_and_a_miss(rule):
  g = gt(video("15_0401", "s15", iv(1, 5)))
  r = ev.evaluate([g], [pred("15_0401", 1, 5, "macro")], rule=rule)  # exact frames, wrong type
  assert counts(r, t="micro") == (0, 0, 1)
  assert counts(r, t="macro") == (0, 1, 0)
  assert counts(r, t="all") == (0, 1, 1)


def test_duplicate_predictions():
  g = gt(video("15_0401", "s15", iv(1, 5)))
  dup = [pred("15_0401", 1, 5), pred("15_0401", 1, 5)]
  # one ground truth, two identical predictions: both rules credit it once; the copy is a false positive.
  for rule in ev.MATCHINGS:
    assert counts(ev.evaluate([g], dup, rule=rule)) == (1, 1, 0)
  # two identical predictions [1, 10] over A and B: megc2020 TP 2, FP 2 - 2 = 0; one-to-one: the first
  # (higher score) takes A, the second takes B (still unmatched, IoU 0.5): TP 2, FP 0.
  dup2 = [pred("15_0401", 1, 10, score=0.9), pred("15_0401", 1, 10, score=0.8)]
  assert counts(ev.evaluate([gt(TWO)], dup2, rule="megc2020")) == (2, 0, 0)
  assert counts(ev.evaluate([gt(TWO)], dup2, rule="one-to-one")) == (2, 0, 0)


def test_one_to_one_takes_predictions_by_score():
  # GT [1, 10]; P1 [1, 10] (IoU 1, score 0.2) and P2 [2, 10] (IoU 0.9, score 0.9): P2 goes first and takes it.
  g = gt(video("15_0401", "s15", iv(1, 10, emotion="negative")))
  p = [pred("15_0401", 1, 10, score=0.2, emotion="negative"), pred("15_0401", 2, 10, score=0.9, emotion="positive")]
  c, pairs = ev.match(
    [(1, 10), (2, 10)], [0.2, 0.9], [(1, 10)], threshold=Fraction(1, 2), strict=False, rule="one-to-one"
  )
  assert (c.tp, c.fp, c.fn) == (1, 1, 0) and pairs == [(0, 1)]
  # STRS emotion: one-to-one pairs the GT with P2 (positive: wrong); megc2020 with its best-IoU P1 (right).
  assert ev.evaluate([g], p, rule="one-to-one")["strs"][CAS_LONG]["analysis_uf1"] == 0.0
  assert ev.evaluate([g], p, rule="megc2020")["strs"][CAS_LONG]["analysis_uf1"] == 1.0


def test_counts_pool_over_datasets_before_f1():
  cas = gt(video("15_0401", "s15", iv(1, 5), iv(20, 30)))
  samm = gt(LongVideo(SAMM_LV, "006", "006_1", 200.0, (iv(1, 50, emotion=None),)), dataset=SAMM_LV)
  p = [pred("15_0401", 1, 5), ev.Prediction("006_1", 300, 400, "micro", 1.0, dataset=SAMM_LV)]
  r = ev.evaluate([cas, samm], p)
  # CAS micro TP 1 FN 1 (F1 2/3); SAMM micro FP 1 FN 1 (F1 0); pooled TP 1 FP 1 FN 2: P 1/2, R 1/3, F1 0.4
  # (the mean of the per-dataset F1s would be 1/3).
  assert r["overall"]["micro"]["f1"] == pytest.approx(0.4)
  assert r["no_strs"] == [SAMM_LV] and SAMM_LV not in r["strs"]


def test_strs_uses_uf1_over_correctly_spotted_micro_expressions():
  g = gt(
    video(
      "15_0401",
      "s15",
      iv(1, 10, emotion="negative"),
      iv(20, 29, emotion="positive"),
      iv(40, 49, emotion="surprise"),
      iv(100, 150, "macro", emotion="positive"),
    )
  )
  p = [
    pred("15_0401", 1, 10, emotion="negative"),  # spotted, right emotion
    pred("15_0401", 20, 29, emotion="surprise"),  # spotted, wrong emotion
    pred("15_0401", 60, 70, emotion="negative"),  # false positive: not analysed
    pred("15_0401", 100, 150, "macro", emotion="negative"),
  ]  # macro: not analysed
  s = ev.evaluate([g], p)["strs"][CAS_LONG]
  # spot micro: TP 2 FP 1 FN 1 -> P = R = F1 = 2/3. Analysis pairs (neg, neg), (pos, sur): F1 negative 1,
  # positive 0, surprise 0 (others absent) -> UF1 1/3; recalls 1, 0, and 0 for surprise -> UAR 1/3.
  assert s["analysed"] == 2
  assert s["spot_f1"] == pytest.approx(2 / 3)
  assert s["analysis_uf1"] == pytest.approx(1 / 3) and s["analysis_uar"] == pytest.approx(1 / 3)
  assert s["strs"] == pytest.approx(2 / 9)


# ---------------------------------------------------------------------------- prediction files


def test_json_and_megc_csv_predictions(tmp_path):
  js = tmp_path / "p.json"
  js.write_text(
    json.dumps(
      {
        "predictions": [
          {"video": "15_0401", "onset": 3, "offset": 9, "type": "me", "score": 0.5, "emotion": "Positive"}
        ]
      }
    )
  )
  (p,) = ev.load_predictions(str(js))
  assert (p.video, p.onset, p.offset, p.type, p.score, p.emotion) == ("15_0401", 3, 9, "micro", 0.5, "positive")
  c1 = tmp_path / "a.csv"
  c1.write_text("15_0401,3,9,me\n006_1,100,400,mae,0.7,negative\n")
  a, b = ev.load_predictions(str(c1))
  assert (a.video, a.onset, a.offset, a.type, a.score) == ("15_0401", 3, 9, "micro", 0.0)
  assert (b.type, b.score, b.emotion) == ("macro", 0.7, "negative")
  c2 = tmp_path / "b.csv"
  c2.write_text("type,vid,pred_offset,pred_onset,score\nmae,006_1,400,100,0.25\n")
  (h,) = ev.load_predictions(str(c2))
  assert (h.video, h.onset, h.offset, h.type, h.score) == ("006_1", 100, 400, "macro", 0.25)
  # spot-then-recognise files (subject,video,onset,offset,emotion): no type column, every line a micro-expression
  c3 = tmp_path / "str.csv"
  c3.write_text("subject,video,onset,offset,emotion\ns15,15_0401,3,9,Surprise\n")
  (t,) = ev.load_predictions(str(c3))
  assert (t.video, t.onset, t.offset, t.type, t.emotion) == ("15_0401", 3, 9, "micro", "surprise")
  c4 = tmp_path / "notype.csv"
  c4.write_text("vid,onset,offset\n15_0401,3,9\n")
  with pytest.raises(DataError, match="header has no column\\(s\\) type"):
    ev.load_predictions(str(c4))


@pytest.mark.parametrize(
  "text,needle",
  [
    ("15_0401,9,3,me\n", "b.csv line 1: bad interval: offset 3 is before onset 9"),
    ("15_0401,0,3,me\n", "b.csv line 1: bad interval: onset 0"),
    ("15_0401,3,x,me\n", "b.csv line 1: offset 'x' is not a frame number"),
    ("15_0401,3,9,blink\n", "b.csv line 1: type 'blink' is not one of micro, macro"),
    ("15_0401,3,9\n", "b.csv line 1: expected vid,pred_onset,pred_offset,type"),
  ],
  ids=["offset-before-onset", "onset-0", "offset-not-a-number", "unknown-type", "too-few-columns"],
)
def test_bad_prediction_lines(tmp_path, text, needle):
  f = tmp_path / "b.csv"
  f.write_text(text)
  with pytest.raises(DataError) as e:
    ev.load_predictions(str(f))
  assert needle in str(e.value)


def test_unknown_video_and_aliases():
  g = [gt(LongVideo(CAS_LONG, "s15", "15_0401", 30.0, (iv(1, 5),), name="anger1"))]
  for alias in ("15_0401", "s15/15_0401", "s15_anger1", "S15_ANGER1"):
    (p,) = ev.resolve([ev.Prediction(alias, 1, 5, "micro", source="x")], g, "p.json")
    assert p.video == "15_0401" and p.dataset == CAS_LONG
  with pytest.raises(DataError, match=r"p.json entry 2: unknown video '15_9999'.*named like 15_0401"):
    ev.resolve([ev.Prediction("15_9999", 1, 5, "micro", source="p.json entry 2")], g, "p.json")


# ---------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def gt_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("spot_gt")
  cas = synth_long.generate_long(CAS_LONG, str(root / "cas"), seed=5, subjects=2, videos_per_subject=2, frames=False)
  samm = synth_long.generate_long(SAMM_LV, str(root / "samm"), seed=5, subjects=2, videos_per_subject=2, frames=False)
  return cas, samm


def run(*args):
  return subprocess.run(
    [sys.executable, "-m", "mer_jax.spot_eval", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=ENV,
    timeout=120,
  )


def one_error(proc) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr
  errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert len(errs) == 1, proc.stderr
  assert proc.stdout == ""
  return errs[0]


def manifest(root):
  with open(os.path.join(root, synth_long.MANIFEST)) as f:
    return json.load(f)


def test_cli_perfect_predictions_of_the_truth(gt_files, tmp_path):
  cas, samm = gt_files
  preds = []
  for root in gt_files:
    for v in manifest(root)["videos"]:
      for i in v["intervals"]:
        preds.append(
          {
            "video": v["video"],
            "onset": i["onset"],
            "offset": i["offset"],
            "type": i["type"],
            "score": 1.0,
            "emotion": i["emotion"],
          }
        )
  pf = tmp_path / "p.json"
  pf.write_text(json.dumps(preds))
  out = tmp_path / "r.json"
  proc = run("--pred", pf, "--gt", cas, "--gt", samm, "--json", out)
  assert proc.returncode == 0, proc.stderr
  res = json.loads(out.read_text())["results"]
  for rule in ev.MATCHINGS:
    o = res[rule]["overall"]
    # every interval found except the CAS(ME)^2 macro rows written with offset 0 (read as offset := apex,
    # so the true [onset, offset] prediction overlaps less): those are the only misses.
    n_off0 = sum(i["written"]["offset"] == 0 for v in manifest(cas)["videos"] for i in v["intervals"])
    assert n_off0 >= 1
    assert o["micro"]["f1"] == 1.0
    assert o["macro"]["fn"] <= n_off0 and o["macro"]["fp"] == o["macro"]["fn"]
    assert res[rule]["strs"][CAS_LONG]["analysis_uf1"] == 1.0
  assert "matching megc2020" in proc.stdout and "matching one-to-one" in proc.stdout
  assert "STRS SAMM-LV: not defined" in proc.stdout
  # the same predictions split over several files (one per video, JSON and STR CSV mixed) score the same
  files = []
  for n, pr in enumerate(preds):
    f = tmp_path / f"p{n}.json"
    if pr["type"] == "micro" and n % 2:
      f = tmp_path / f"p{n}.csv"
      f.write_text(
        f"subject,video,onset,offset,emotion\nsX,{pr['video']},{pr['onset']},{pr['offset']},{pr['emotion']}\n"
      )
    else:
      f.write_text(json.dumps({"predictions": [pr]}))
    files += ["--pred", f]
  out2 = tmp_path / "r2.json"
  proc = run(*files, "--gt", cas, "--gt", samm, "--json", out2)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(out2.read_text())["results"] == res


def test_cli_strict_iou_flag(gt_files, tmp_path):
  cas, _ = gt_files
  v = manifest(cas)["videos"][0]
  i = next(i for i in v["intervals"] if i["type"] == "micro")
  n = i["offset"] - i["onset"] + 1
  pf = tmp_path / "p.csv"
  pf.write_text(f"vid,pred_onset,pred_offset,type\n{v['video']},{i['onset']},{i['offset'] + n},me\n")  # IoU 1/2
  for flag, tp in (((), 1), (("--iou-strict",), 0)):
    out = tmp_path / f"r{tp}.json"
    proc = run("--pred", pf, "--gt", cas, *flag, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["results"]["megc2020"]["overall"]["micro"]["tp"] == tp


@pytest.mark.parametrize(
  "content,needles",
  [
    ('[{"video": "99_9999", "onset": 1, "offset": 5, "type": "micro"}]', ["p.json entry 1", "unknown video '99_9999'"]),
    (
      '[{"video": "15_0101", "onset": 8, "offset": 5, "type": "micro"}]',
      ["p.json entry 1", "bad interval", "offset 5 is before onset 8"],
    ),
    ('[{"video": "15_0101", "onset": 1, "type": "micro"}]', ["p.json entry 1", "missing key(s) offset"]),
    ('{"video": 1}', ["expected a JSON list"]),
    ('[{"video": "15_0101", "onset": 1, "offset', ["is not valid JSON"]),
  ],
  ids=["unknown-video", "offset-before-onset", "missing-key", "not-a-list", "bad-json"],
)
def test_cli_bad_predictions(gt_files, tmp_path, content, needles):
  pf = tmp_path / "p.json"
  pf.write_text(content)
  msg = one_error(run("--pred", pf, "--gt", gt_files[0]))
  for n in needles:
    assert n in msg, msg


def test_cli_bad_ground_truth(gt_files, tmp_path):
  pf = tmp_path / "p.json"
  pf.write_text("[]")
  assert "does not exist" in one_error(run("--pred", pf, "--gt", tmp_path / "nope.xlsx"))
  assert "neither" in one_error(run("--pred", pf, "--gt", tmp_path))
  assert "a second CAS(ME)^2 annotation" in one_error(run("--pred", pf, "--gt", gt_files[0], "--gt", gt_files[0]))
  assert "--iou 'half' is not a number" in one_error(run("--pred", pf, "--gt", gt_files[0], "--iou", "half"))
