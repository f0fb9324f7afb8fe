"""predict on a clip with no face: the prediction is marked (text and JSON), or an error with --on-no-face error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import report_fixtures as fx
from mer_jax import predict
from mer_jax.errors import DataError
from mer_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("noface")
  cfg = fx.tiny_config(attention="none")
  cfg.data.face_crop = True  # detection runs, as for a real checkpoint
  variables = fx.init_variables(build_model(cfg.model), seed=1)
  run_dir = fx.save_run(str(root / "run"), cfg, variables, ["red", "blue"])
  rng = np.random.default_rng(0)
  clip = root / "clip"
  fx.write_frames(str(clip), fx.patch_clip(rng, 0, apex=3))  # noise patches: no face to find
  return dict(run_dir=run_dir, clip=str(clip))


def test_no_face_is_marked_in_the_main_line_and_the_json(run):
  res = predict.predict(run["run_dir"], run["clip"])
  p = res["predictions"][0]
  assert p["face_found"] is False
  line = predict.format_text(res).splitlines()[0]
  assert line.startswith(f"{run['clip']}: NO FACE FOUND (centre crop: not a face result) {p['label']}  (")


def test_on_no_face_error_stops_with_the_clip_named(run):
  with pytest.raises(DataError, match="no face"):
    predict.predict(run["run_dir"], run["clip"], on_no_face="error")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "mer_jax.predict",
      "--checkpoint",
      run["run_dir"],
      "--input",
      run["clip"],
      "--on-no-face",
      "error",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("error:") and run["clip"] in proc.stderr and proc.stdout == ""
  proc = subprocess.run(
    [sys.executable, "-m", "mer_jax.predict", "--checkpoint", run["run_dir"], "--input", run["clip"], "--json"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout)["predictions"][0]["face_found"] is False
