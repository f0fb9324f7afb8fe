"""``python -m mer_jax.analyse``: each spotted interval is classified exactly as ``mer_jax.predict`` classifies a
clip made of that interval's frames (independent path: copy the frames into a folder, run predict on it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import report_fixtures as fx
from mer_jax import analyse, predict
from mer_jax.data import synth
from mer_jax.errors import ConfigError
from mer_jax.models import build_model
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import synth_long
from mer_jax.video_io import list_frames

CLASSES = ["negative", "positive"]
SMILE = (31, 54)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("analyse")
  cfg = fx.tiny_config(attention="none")
  variables = fx.init_variables(build_model(cfg.model), seed=4)
  run_dir = fx.save_run(str(root / "workdir" / "finetune" / "folds" / "000_s01"), cfg, variables, CLASSES)
  rng = np.random.default_rng(0)
  ident = synth.make_identity(rng)
  events = [
    synth_long._Event(
      "macro", SMILE[0], SMILE[1] - SMILE[0] + 1, apex=10, aus=synth.expression_aus("positive", rng), amplitude=7.0
    )
  ]
  frames = np.stack(list(synth_long.render_video(ident, events, 90, frame_size=128, rng=np.random.default_rng(1))))
  folder = fx.write_frames(str(root / "video"), frames[..., ::-1].astype(np.float32) / 255.0)  # BGR -> RGB
  return dict(root=root, run_dir=run_dir, folder=folder)


def test_each_spotted_interval_is_classified_like_predict_on_its_frames(setup, tmp_path):
  out = tmp_path / "a.json"
  assert (
    analyse.main(
      [
        "--checkpoint",
        setup["run_dir"],
        "--input",
        setup["folder"],
        "--fps",
        "30",
        "--out",
        str(out),
        "--types",
        "all",
        "--quiet",
      ]
    )
    == 0
  )
  res = json.loads(out.read_text())
  assert res["class_names"] == CLASSES
  classified = [q for q in res["predictions"] if "probabilities" in q]
  assert classified and len(classified) == len(res["predictions"])
  assert any(q["type"] == "macro" and ev.iou((q["onset"], q["offset"]), SMILE) >= 0.5 for q in classified)
  files = list_frames(setup["folder"])
  for q in classified:
    clip = tmp_path / f"clip_{q['onset']}"
    clip.mkdir()
    for n in range(q["onset"], q["offset"] + 1):
      shutil.copy(files[n - 1], clip / files[n - 1].name)
    ref = predict.predict(setup["run_dir"], str(clip), fps=30.0)["predictions"][0]
    assert q["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-6)
    assert q["label"] == ref["label"] == q["emotion"]
    assert q["clip_apex"] == q["onset"] + ref["apex"]
  # micro only (the default): macro intervals keep no class
  assert (
    analyse.main(
      ["--checkpoint", setup["run_dir"], "--input", setup["folder"], "--fps", "30", "--out", str(out), "--quiet"]
    )
    == 0
  )
  res = json.loads(out.read_text())
  assert all(("probabilities" in q) == (q["type"] == "micro") for q in res["predictions"])


def test_bad_types_is_a_config_error(setup):
  with pytest.raises(ConfigError, match="--types 'macro': use one of micro, all"):
    analyse.analyse(setup["run_dir"], setup["folder"], fps=30.0, types="macro")


def test_str_format_lists_the_classified_micro_expressions(setup, tmp_path):
  """--format str (analyse, and spot with --checkpoint) writes subject,video,onset,offset,emotion for every
  classified micro-expression, and spot_eval reads it back as micro-expressions with their emotions."""
  from mer_jax import spot

  rng = np.random.default_rng(0)
  ident = synth.make_identity(rng)
  aus = synth.expression_aus("surprise", np.random.default_rng(5))
  events = [synth_long._Event("micro", 68, 12, apex=6, aus=aus, amplitude=3.0)]
  frames = np.stack(list(synth_long.render_video(ident, events, 90, frame_size=128, rng=np.random.default_rng(1))))
  folder = fx.write_frames(str(tmp_path / "clip"), frames[..., ::-1].astype(np.float32) / 255.0)
  js, st, st2 = tmp_path / "a.json", tmp_path / "a.csv", tmp_path / "b.csv"
  common = ["--checkpoint", setup["run_dir"], "--input", folder, "--fps", "30", "--quiet"]
  assert analyse.main(common + ["--out", str(js)]) == 0
  assert analyse.main(common + ["--out", str(st), "--format", "str", "--subject", "s07"]) == 0
  res = json.loads(js.read_text())
  micro = [q for q in res["predictions"] if q["type"] == "micro"]
  assert any(ev.iou((q["onset"], q["offset"]), (68, 79)) > 0 for q in micro), res["predictions"]
  lines = st.read_text().splitlines()
  assert lines[0] == "subject,video,onset,offset,emotion"
  assert lines[1:] == [f"s07,clip,{q['onset']},{q['offset']},{q['emotion']}" for q in micro]
  back = ev.load_predictions(str(st))
  assert [(b.video, b.onset, b.offset, b.type, b.emotion) for b in back] == [
    ("clip", q["onset"], q["offset"], "micro", q["emotion"]) for q in micro
  ]
  assert spot.main(common + ["--out", str(st2), "--format", "str", "--subject", "s07"]) == 0
  assert st2.read_text() == st.read_text()
  with pytest.raises(ConfigError, match="--format str writes subject,video,onset,offset,emotion: .* add --checkpoint"):
    spot.main(["--input", folder, "--fps", "30", "--out", str(st2), "--format", "str"])
  # only classified micro-expressions are written; the subject defaults to the video
  result = {
    "predictions": [
      {"video": "v", "onset": 3, "offset": 9, "type": "micro", "emotion": "negative"},
      {"video": "v", "onset": 20, "offset": 60, "type": "macro", "emotion": "positive"},
      {"video": "v", "onset": 70, "offset": 75, "type": "micro"},
    ]
  }
  spot.write_result(result, str(st2), "str")
  assert st2.read_text() == "subject,video,onset,offset,emotion\nv,v,3,9,negative\n"
