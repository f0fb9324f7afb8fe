"""``python -m mer_jax.spot`` on a phone-like .mp4 (written with cv2.VideoWriter) and on frame folders, its errors,
and ``python -m mer_jax.spot_bench`` end to end on a tiny SynthME dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mer_jax.data import synth
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import synth_long
from mer_jax.spotting.readers import read_long

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

# One smile at frames 46..69 (24 frames = 0.8 s at 30 fps: a macro-expression) and a head move at 100..111.
SMILE = (46, 69)


def run(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600
  )


def one_error(proc) -> str:
  """The single ``error:`` line (FFmpeg may log its own lines before it), no traceback."""
  assert proc.returncode == 2, proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  errors = [ln for ln in lines if ln.startswith("error: ")]
  assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
  return errors[0]


@pytest.fixture(scope="module")
def phone_video(tmp_path_factory):
  """A 150-frame 30 fps 640x360 .mp4 of a SynthME face (the face ~ 250 px), and its frames as a folder."""
  d = tmp_path_factory.mktemp("spot")
  rng = np.random.default_rng(0)
  ident = synth.make_identity(rng)
  events = [
    synth_long._Event(
      "macro", SMILE[0], SMILE[1] - SMILE[0] + 1, apex=10, aus=synth.expression_aus("positive", rng), amplitude=7.0
    ),
    synth_long._Event("head", 100, 12, amplitude=3.0, shift=(2.5, 1.0, 1.0)),
  ]
  path = str(d / "phone.mp4")
  w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 360))
  folder = d / "frames"
  folder.mkdir()
  for n, img in enumerate(synth_long.render_video(ident, events, 150, frame_size=120, rng=np.random.default_rng(1)), 1):
    big = cv2.resize(img, (300, 300), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[30:330, 170:470] = big
    w.write(canvas)
    cv2.imwrite(str(folder / f"img{n}.png"), canvas)
  w.release()
  return path, str(folder)


def test_spot_phone_mp4_finds_the_expression_and_writes_both_formats(phone_video, tmp_path):
  path, _ = phone_video
  out = tmp_path / "pred.json"
  p = run("mer_jax.spot", "--input", path, "--out", str(out))
  assert p.returncode == 0, p.stderr
  res = json.loads(out.read_text())
  assert res["fps"] == 30.0 and res["num_frames"] == 150 and res["face_found"] and res["video"] == "phone"
  assert res["face_frames"] == 150 and res["face_absent"] == [] and res["cuts"] == []
  macro = [q for q in res["predictions"] if q["type"] == "macro"]
  assert len(macro) == 1, res["predictions"]
  m = macro[0]
  assert ev.iou((m["onset"], m["offset"]), SMILE) >= 0.5, m
  assert m["onset"] <= m["apex"] <= m["offset"]
  assert m["onset_s"] == pytest.approx((m["onset"] - 1) / 30, abs=1e-4)
  # nothing near the head move (frames 100..111) is taken for an expression
  assert not any(q["onset"] <= 115 and q["offset"] >= 100 for q in res["predictions"]), res["predictions"]
  # spot_eval reads the output
  assert [(q.onset, q.offset, q.type) for q in ev.load_predictions(str(out))] == [
    (q["onset"], q["offset"], q["type"]) for q in res["predictions"]
  ]
  csv_out = tmp_path / "pred.csv"
  p = run("mer_jax.spot", "--input", path, "--out", str(csv_out), "--format", "megc", "--quiet")
  assert p.returncode == 0, p.stderr
  lines = csv_out.read_text().splitlines()
  assert lines[0] == "vid,pred_onset,pred_offset,type,score"
  assert f"phone,{m['onset']},{m['offset']},mae," in "\n".join(lines)
  assert [(q.onset, q.offset, q.type) for q in ev.load_predictions(str(csv_out))] == [
    (q["onset"], q["offset"], q["type"]) for q in res["predictions"]
  ]


def test_spot_frame_folder_matches_the_video_and_needs_fps(phone_video, tmp_path):
  _, folder = phone_video
  assert one_error(run("mer_jax.spot", "--input", folder, "--out", str(tmp_path / "x.json"))) == (
    f"error: {folder} is a frame folder: give its frame rate with --fps (e.g. --fps 30)"
  )
  out = tmp_path / "f.json"
  p = run("mer_jax.spot", "--input", folder, "--fps", "30", "--out", str(out), "--quiet")
  assert p.returncode == 0, p.stderr
  res = json.loads(out.read_text())
  assert res["num_frames"] == 150 and res["video"] == "frames"
  assert any(q["type"] == "macro" and ev.iou((q["onset"], q["offset"]), SMILE) >= 0.5 for q in res["predictions"])


def test_spot_errors(tmp_path):
  missing = tmp_path / "nope.mp4"
  assert one_error(run("mer_jax.spot", "--input", str(missing), "--out", str(tmp_path / "o.json"))) == (
    f"error: {missing}: no such video file or frame folder"
  )
  # the output folder is checked before any work (a long video is not spotted for nothing)
  nodir = tmp_path / "no" / "o.json"
  assert one_error(run("mer_jax.spot", "--input", str(missing), "--out", str(nodir))) == (
    f"error: --out {nodir}: folder {nodir.parent} does not exist; create it first"
  )
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  assert one_error(run("mer_jax.spot", "--input", str(bad), "--out", str(tmp_path / "o.json"))) == (
    f"error: {bad}: cannot open the video (unknown format or corrupt file)"
  )
  params = tmp_path / "p.json"
  params.write_text(json.dumps({"params": {"threshold": 4, "tresh": 1}}))
  err = one_error(
    run("mer_jax.spot", "--input", str(missing), "--out", str(tmp_path / "o.json"), "--params", str(params))
  )
  assert err.startswith(f"error: --params {params}: unknown key(s) tresh; known: "), err
  short = tmp_path / "short"
  short.mkdir()
  for n in range(1, 5):
    cv2.imwrite(str(short / f"{n}.png"), np.full((64, 64), 100 + n, np.uint8))
  assert one_error(
    run("mer_jax.spot", "--input", str(short), "--fps", "30", "--out", str(tmp_path / "o.json"), "--quiet")
  ) == (
    f"error: {short}: 4 frames; the spotter compares each frame with the one 6 frames earlier "
    "(k_seconds=0.2 at 30 fps), so it needs at least 8 frames"
  )


def test_spot_bench_on_tiny_synthme(tmp_path):
  out = tmp_path / "bench"
  p = run(
    "mer_jax.spot_bench",
    "--config=configs/spot_cas_long.py",
    f"--workdir={out}",
    "--config.synth.enabled=true",
    "--config.synth.videos_per_subject=1",
    "--config.synth.seconds=8",
    "--config.synth.seed=1",
    "--quiet",
  )
  assert p.returncode == 0, p.stderr
  res = json.loads((out / "results.json").read_text())
  d = res["datasets"][0]
  assert d["subjects"] == ["s15", "s17"] and [f["subject"] for f in d["folds"]] == ["s15", "s17"]
  # each subject's predictions are scored once, from the fold that held it out: per-subject counts add up
  for m in ("spotter", "baseline"):
    tot = {
      k: sum(d["per_subject"][m][s][t][k] for s in d["subjects"] for t in ("micro", "macro"))
      for k in ("tp", "fp", "fn")
    }
    o = d["overall"][m][res["rule"]]["all"]
    assert tot == {"tp": o["tp"], "fp": o["fp"], "fn": o["fn"]}
    assert o["tp"] + o["fn"] == d["gt"]["micro"] + d["gt"]["macro"]
  assert res["config"]["dataset"] == "cas_long" and res["config"]["synth"]["seconds"] == 8.0
  md = (out / "results.md").read_text()
  assert "| s15 |" in md and "| s17 |" in md and "SynthME" in md
  params = json.loads((out / "params_cas_long.json").read_text())
  assert params["params"]["threshold"] == d["chosen_on_all_subjects"]["params"]["threshold"]
  # independent path: python -m mer_jax.spot on each held-out video's frame folder with its fold's setting
  # reproduces the benchmark's predictions for it
  videos = read_long(str(out / "synthme" / "cas_long")).videos
  for fold in d["folds"]:
    v = next(v for v in videos if v.subject == fold["subject"])
    pf = tmp_path / f"params_{v.subject}.json"
    pf.write_text(json.dumps({**res["base_params"], **fold["spotter"]["params"]}))
    spotted = tmp_path / f"spot_{v.subject}.json"
    p = run(
      "mer_jax.spot",
      "--input",
      v.frame_dir,
      "--fps",
      "30",
      "--params",
      str(pf),
      "--out",
      str(spotted),
      "--video-name",
      v.video,
      "--quiet",
    )
    assert p.returncode == 0, p.stderr
    got = [(q["onset"], q["offset"], q["type"]) for q in json.loads(spotted.read_text())["predictions"]]
    assert got == [(q["onset"], q["offset"], q["type"]) for q in d["predictions"]["spotter"] if q["video"] == v.video]
  bench = ("mer_jax.spot_bench", "--config=configs/spot_cas_long.py", f"--workdir={out}")
  assert one_error(run(*bench, f"--config.root={tmp_path / 'none'}")) == (
    f"error: config.root: {tmp_path / 'none'} is not a folder; give the CAS(ME)^2 dataset folder"
  )
  assert one_error(run(*bench)).startswith("error: config.root is empty: give the dataset folder")
  assert one_error(run(*bench, "--config.rule=iou")) == "error: config.rule='iou': use one of megc2020, one-to-one"
  assert one_error(run(*bench, "--config.grid.micro.threshold=()")).startswith(
    "error: config.grid.micro.threshold=(): give a non-empty tuple of candidate values"
  )
  assert one_error(run(*bench, "--config.synth.enabled=true", "--config.spotter.flow=tvl1")) == (
    "error: config.spotter: spotter flow='tvl1': expected one of farneback, dis"
  )


def test_real_video_check_writes_the_json_contact_sheets_and_report(phone_video, tmp_path):
  """experiments/real_video_check.py (the check by eye on real recordings) on a video file: spot's JSON with the
  face boxes in the input's pixels, one contact sheet per interval cropped to the face, and the report."""
  path, _ = phone_video
  out = tmp_path / "check"
  p = subprocess.run(
    [sys.executable, os.path.join(REPO, "experiments", "real_video_check.py"), "--out", str(out), path],
    capture_output=True,
    text=True,
    env=ENV,
    cwd=REPO,
    timeout=600,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads((out / "phone.json").read_text())
  # the face image is drawn at x 170..470, y 30..330 of the 640x360 frame (a 300-px square around a ~200-px face;
  # the detector's box grown by a 10 % margin): in input pixels, inside that square and most of its size
  assert res["face_boxes"] and res["face_boxes"][0][0] == 1
  for _, x, y, size in res["face_boxes"]:
    assert 170 <= x and x + size <= 470 and 30 <= y and y + size <= 330 and size >= 200, (x, y, size)
  preds = res["predictions"]
  assert any(q["type"] == "macro" and ev.iou((q["onset"], q["offset"]), SMILE) >= 0.5 for q in preds), preds
  sheets = sorted(out.glob("phone_*.png"))
  assert len(sheets) == len(preds)
  img = cv2.imread(str(sheets[0]))
  assert img.shape == (128 + 16, 7 * 128, 3)
  report = (out / "report.md").read_text()
  assert "| phone | 30.00 | 150 | 150 | - |" in report
  assert all(f"phone_{i}.png" in report for i in range(1, len(preds) + 1))
