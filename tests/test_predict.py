"""predict: one batched pass over many clips equals the model applied to each preprocessed clip."""

import glob
import json
import os

import jax
import numpy as np
import pytest

import report_fixtures as fx
from mer_jax import predict
from mer_jax.data import preprocess
from mer_jax.errors import DataError, UserError
from mer_jax.models import build_model

CLASSES = ["red", "blue"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  cfg = fx.tiny_config(attention="none")
  model = build_model(cfg.model)
  variables = fx.init_variables(model, seed=4)
  run_dir = fx.save_run(str(root / "workdir" / "finetune" / "folds" / "000_s01"), cfg, variables, CLASSES)
  rng = np.random.default_rng(0)
  clips = root / "clips"
  for i, label in enumerate((0, 1, 1)):
    fx.write_frames(str(clips / f"clip{i}"), fx.patch_clip(rng, label, apex=4 - i % 2))
  return dict(root=root, cfg=cfg, model=model, variables=variables, run_dir=run_dir, clips=str(clips))


def _reference(run, folder):
  """Independent path: read frames, preprocess with apex spotting, apply the model, softmax."""
  cfg = predict.inference_config(run["cfg"], "spot")
  frames = preprocess.read_frames(
    sorted(glob.glob(os.path.join(folder, "*.png")), key=lambda p: int(os.path.basename(p)[3:-4]))
  )
  notes = preprocess.Notes()
  img = preprocess.preprocess_clip(frames, None, onset=None, apex=None, offset=None, config=cfg, notes=notes)
  logits = run["model"].apply(run["variables"], img[None], train=False)
  return np.asarray(jax.nn.softmax(logits, -1))[0], notes.apex


def test_folder_of_clips_matches_per_clip_model_output(run):
  res = predict.predict(run["run_dir"], run["clips"], batch_size=2)  # 3 clips: one padded chunk
  assert res["class_names"] == CLASSES
  preds = res["predictions"]
  assert [os.path.basename(p["input"]) for p in preds] == ["clip0", "clip1", "clip2"]
  for p in preds:
    ref, apex = _reference(run, p["input"])
    got = np.array([p["probabilities"][c] for c in CLASSES])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert p["label"] == CLASSES[int(ref.argmax())] and p["index"] == int(ref.argmax())
    assert p["apex"] == apex and p["frames"] == 7
  assert [p["apex"] for p in preds] == [4, 3, 4]  # the spotted apex of each clip
  # One clip alone (a frame folder) gives the same numbers as inside the batch.
  single = predict.predict(run["run_dir"], os.path.join(run["clips"], "clip1"))["predictions"]
  assert len(single) == 1
  assert single[0]["probabilities"] == pytest.approx(preds[1]["probabilities"], abs=1e-6)


def test_cli_prints_json_and_text(run, capsys):
  assert predict.main(["--checkpoint", run["run_dir"], "--input", run["clips"], "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["class_names"] == CLASSES
  assert [os.path.basename(p["input"]) for p in out["predictions"]] == ["clip0", "clip1", "clip2"]
  for p in out["predictions"]:
    ref, apex = _reference(run, p["input"])
    np.testing.assert_allclose([p["probabilities"][c] for c in CLASSES], ref, rtol=1e-5, atol=1e-6)
    assert p["label"] == CLASSES[int(ref.argmax())] and p["apex"] == apex and p["frames"] == 7
  clip0 = os.path.join(run["clips"], "clip0")
  assert predict.main(["--checkpoint", run["run_dir"], "--input", clip0]) == 0
  text = capsys.readouterr().out
  ref, _ = _reference(run, clip0)
  assert text.strip() == (
    f"{clip0}: {CLASSES[int(ref.argmax())]}  (red {ref[0]:.3f}  blue {ref[1]:.3f}; 7 frames, apex frame 4)"
  )


def test_user_errors_are_clear(run, tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    predict.predict(run["run_dir"], str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no frame images, video files or frame folders"):
    predict.predict(run["run_dir"], str(tmp_path / "empty"))
  workdir = str(run["root"] / "workdir")
  with pytest.raises(UserError, match="benchmark workdir.*finetune/folds/000_s01"):
    predict.predict(workdir, run["clips"])
  evm_cfg = fx.tiny_config(attention="none")
  evm_cfg.evm.enabled = True
  evm_run = fx.save_run(str(tmp_path / "evm_run"), evm_cfg, run["variables"], CLASSES)
  with pytest.raises(DataError, match="--fps"):
    predict.predict(evm_run, run["clips"])
  with pytest.raises(UserError, match="--fps must be positive"):
    predict.predict(evm_run, run["clips"], fps=0)


def test_predict_on_a_synthme_clip(run, tmp_path):
  from mer_jax.data import synth

  root = synth.generate("casme2", str(tmp_path / "synthme"), subjects=1, clips_per_subject=1, clip_frames=16)
  clip = os.path.dirname(glob.glob(os.path.join(root, "**", "*.jpg"), recursive=True)[0])
  cfg = fx.tiny_config(attention="none")
  cfg.data.face_crop = True  # SynthME draws faces: the Haar cascade finds them
  face_run = fx.save_run(str(tmp_path / "face_run"), cfg, run["variables"], CLASSES)
  res = predict.predict(face_run, clip, fps=200)
  (p,) = res["predictions"]
  assert p["face_found"] is True and p["fps"] == 200 and p["frames"] == len(os.listdir(clip))
  # the same numbers as face crop + preprocessing + the model applied by hand
  frames = preprocess.read_frames(
    sorted(glob.glob(os.path.join(clip, "*.jpg")), key=lambda f: int(os.path.basename(f)[3:-4]))
  )
  notes = preprocess.Notes()
  img = preprocess.preprocess_clip(
    frames, 200, onset=None, apex=None, offset=None, config=predict.inference_config(cfg, "spot"), notes=notes
  )
  ref = np.asarray(jax.nn.softmax(run["model"].apply(run["variables"], img[None], train=False), -1))[0]
  np.testing.assert_allclose([p["probabilities"][c] for c in CLASSES], ref, rtol=1e-5, atol=1e-6)
  assert p["apex"] == notes.apex and 0 <= p["apex"] < p["frames"]


def test_video_file_is_read_with_its_frame_rate(run, tmp_path):
  from mer_jax import video_io

  clip = fx.patch_clip(np.random.default_rng(5), 1)
  folder = tmp_path / "videos"
  folder.mkdir()
  video = video_io.write_clip(clip, str(folder / "clip.avi"), fps=100)
  fx.write_frames(str(folder / "frames_clip"), clip)
  res = predict.predict(run["run_dir"], str(folder))
  by_name = {os.path.basename(p["input"]): p for p in res["predictions"]}
  assert set(by_name) == {"clip.avi", "frames_clip"}
  p = by_name["clip.avi"]
  assert p["kind"] == "video" and p["fps"] == pytest.approx(100) and p["frames"] == len(clip)
  frames, _ = video_io.read_clip(str(video))
  cfg = predict.inference_config(run["cfg"], "spot")
  img = preprocess.preprocess_clip(frames, 100, onset=None, apex=None, offset=None, config=cfg)
  ref = np.asarray(jax.nn.softmax(run["model"].apply(run["variables"], img[None], train=False), -1))[0]
  np.testing.assert_allclose([p["probabilities"][c] for c in CLASSES], ref, rtol=1e-5, atol=1e-6)
  # --fps overrides the file's rate.
  assert predict.predict(run["run_dir"], str(video), fps=50)["predictions"][0]["fps"] == 50
