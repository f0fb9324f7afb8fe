"""Grad-CAM: maps are non-negative, input-sized, and find the discriminative patch."""

import json
import os

import numpy as np
import pytest

import report_fixtures as fx
from mer_jax import gradcam
from mer_jax.errors import UserError


@pytest.fixture(scope="module")
def trained():
  cfg = fx.tiny_config(attention="spatial")
  model, variables = fx.train_patch_model(cfg, steps=60)
  return cfg, model, variables


def test_gradcam_highlights_the_discriminative_patch(trained):
  _, model, variables = trained
  x, y, mask = fx.patch_images(np.random.default_rng(1), 12)
  cam, probs, cls = gradcam.gradcam(model, variables, x)
  assert (probs.argmax(1) == y).mean() >= 0.9  # the tiny model did learn the task
  np.testing.assert_array_equal(cls, probs.argmax(1))  # default target: the predicted class
  assert cam.shape == x.shape[:3]  # upsampled to the input's H x W
  assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
  inside = np.array([cam[i][mask[i]].mean() for i in range(len(x))])
  outside = np.array([cam[i][~mask[i]].mean() for i in range(len(x))])
  assert (inside > outside).mean() >= 0.9, (inside, outside)
  assert inside.mean() > 2 * outside.mean()
  # Another target class gives another map.
  cam_other, _, cls_other = gradcam.gradcam(model, variables, x, 1 - cls)
  np.testing.assert_array_equal(cls_other, 1 - cls)
  assert np.abs(cam_other - cam).mean() > 0.05
  # In padded batches of 5 (12 = 5 + 5 + 2): the same maps, probabilities and classes as in one batch.
  cam5, probs5, cls5 = gradcam.gradcam(model, variables, x, 1 - cls, batch_size=5)
  np.testing.assert_allclose(cam5, cam_other, atol=1e-5)
  np.testing.assert_array_equal(cls5, cls_other)
  np.testing.assert_allclose(probs5, gradcam.gradcam(model, variables, x, 1 - cls)[1], atol=1e-6)


def test_gradcam_weights_are_gradients_of_the_class_logit(trained):
  # Independent check of the definition: alpha_k from a finite difference of the logit
  # w.r.t. a uniform shift of feature channel k (d y / d A_k summed over positions / (h*w)).
  import jax
  import jax.numpy as jnp

  _, model, variables = trained
  x, _, _ = fx.patch_images(np.random.default_rng(2), 1)
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(variables, x)
  np.testing.assert_allclose(gradcam.head_logits(model, variables, feats), logits, rtol=1e-5, atol=1e-5)
  c = int(jnp.argmax(logits[0]))
  h, w = feats.shape[1:3]
  eps, k = 1e-2, feats.shape[-1]
  shift = eps * jnp.eye(k)[:, None, None, :]  # [K, 1, 1, K]: channel k shifted by eps
  up = gradcam.head_logits(model, variables, feats + shift)[:, c]
  dn = gradcam.head_logits(model, variables, feats - shift)[:, c]
  alpha_fd = np.asarray(up - dn) / (2 * eps) / (h * w)
  cam_ref = np.maximum(np.einsum("hwk,k->hw", np.asarray(feats[0]), alpha_fd), 0)
  cam_ref = np.asarray(jax.image.resize(cam_ref[None], (1,) + x.shape[1:3], "bilinear"))[0]
  cam_ref = cam_ref / cam_ref.max()
  cam, _, _ = gradcam.gradcam(model, variables, x, [c])
  np.testing.assert_allclose(cam[0], cam_ref, atol=2e-3)


def test_gradcam_cli_writes_figure8_columns(trained, tmp_path, capsys):
  cfg, _, variables = trained
  spatial = fx.save_run(str(tmp_path / "runs" / "spatial"), cfg, variables, ["red", "blue"])
  none_cfg = fx.tiny_config(attention="none")
  from mer_jax.models import build_model

  none_vars = fx.init_variables(build_model(none_cfg.model), seed=1)
  plain = fx.save_run(str(tmp_path / "runs" / "none"), none_cfg, none_vars, ["red", "blue"])
  rng = np.random.default_rng(3)
  clips = tmp_path / "clips"
  for i, label in enumerate((0, 1)):
    fx.write_frames(str(clips / f"clip{i}"), fx.patch_clip(rng, label))
  out = tmp_path / "cam"
  assert gradcam.main(["--checkpoint", plain, spatial, "--input", str(clips), "--out", str(out)]) == 0
  summary = json.loads(capsys.readouterr().out.split("\nGrad-CAM overlays")[0])
  assert [c["title"] for c in summary["columns"]] == ["No attention", "Spatial attention"]
  assert summary["columns"][1]["predictions"] == ["red", "blue"]  # the trained model gets both clips
  import matplotlib.image

  grid = matplotlib.image.imread(summary["files"]["grid"])
  assert grid.shape[1] > grid.shape[0]  # 3 columns (input + 2 variants) x 2 rows
  assert os.path.exists(summary["files"]["input_0"]) and os.path.exists(summary["files"]["input_1"])
  maps = np.load(summary["files"]["npz"])
  assert maps["cam_0"].shape == (2, fx.SIZE, fx.SIZE) and maps["cam_1"].min() >= 0
  with pytest.raises(UserError, match="not one of"):
    gradcam.run([spatial], str(clips), str(out), target="green")
  gradcam.run([spatial], str(clips), str(tmp_path / "cam_blue"), target="blue")
  assert (np.load(tmp_path / "cam_blue" / "gradcam.npz")["class_0"] == 1).all()
