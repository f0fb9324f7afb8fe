"""Face crop, apex spotting and clip/image preprocessing (mer_jax.data.face / apex / preprocess)."""

import os
import warnings

import cv2
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.data import apex as apex_lib
from mer_jax.data import face as face_lib
from mer_jax.data import preprocess
from mer_jax.data.types import Sample
from mer_jax.errors import ConfigError, DataError, EVMError


def draw_face(size=(160, 200), centre=(100, 85), scale=1.0, mouth_open=0.0, brow_lift=0.0, bg=90, seed=None):
  """A cartoon frontal face (skin ellipse, dark eyes and brows, nose, mouth) that the Haar cascade
  detects; RGB float32 [H, W, 3] in [0, 1]. ``mouth_open``/``brow_lift`` move features in pixels."""
  h, w = size
  img = np.full((h, w, 3), bg, np.uint8)
  cv2.rectangle(img, (0, 0), (w - 1, 12), (60, 60, 60), -1)
  sh, f = 4, 16
  cx, cy = centre
  s = scale

  def P(x, y):
    return (int(round(x * f)), int(round(y * f)))

  def A(a, b):
    return (int(round(a * f)), int(round(b * f)))
  cv2.ellipse(img, P(cx, cy), A(38 * s, 50 * s), 0, 0, 360, (215, 185, 170), -1, cv2.LINE_AA, sh)
  for dx in (-15, 15):
    cv2.ellipse(img, P(cx + dx * s, cy - 12 * s), A(7 * s, 3.5 * s), 0, 0, 360, (30, 30, 40), -1, cv2.LINE_AA, sh)
    cv2.ellipse(img, P(cx + dx * s, cy - (22 + brow_lift) * s), A(10 * s, 2.5 * s), 0, 0, 360, (40, 40, 50), -1,
                cv2.LINE_AA, sh)
  cv2.ellipse(img, P(cx, cy + 6 * s), A(4 * s, 10 * s), 0, 0, 360, (180, 150, 140), -1, cv2.LINE_AA, sh)
  cv2.ellipse(img, P(cx, cy + 24 * s), A(14 * s, (4 + mouth_open) * s), 0, 0, 360, (120, 60, 60), -1,
              cv2.LINE_AA, sh)
  out = img.astype(np.float32) / 255.0
  if seed is not None:
    out = out + np.random.default_rng(seed).normal(0, 0.01, out.shape).astype(np.float32)
  return np.clip(out, 0, 1)


def make_clip(T=12, peak=7, amp=3.0, shift_after=0, size=(160, 200), seed=0, noise=True):
  """A clip whose mouth opens to ``amp`` px at frame ``peak`` (0 at the first and last frame, linear
  in between) with sensor noise;
  after frame 0 the whole face drifts by ``shift_after`` px (to show the box does not follow)."""
  frames = []
  for t in range(T):
    a = amp * (t / peak if t <= peak else (T - 1 - t) / (T - 1 - peak))
    dx = shift_after if t > 0 else 0
    frames.append(draw_face(size=size, centre=(100 + dx, 85), mouth_open=a,
                             seed=seed * 100 + t if noise else None))
  return np.stack(frames)


def cfg(size=48, evm=False, **data):
  c = config_defaults.get_base_config()
  c.image_size = size
  c.evm.enabled = evm
  for k, v in data.items():
    c.data[k] = v
  return c


# ---------------------------------------------------------------------------- face


def test_detector_finds_the_drawn_face_where_it_is():
  img = draw_face(centre=(110, 80))
  boxes = face_lib.detect_faces(img)
  assert len(boxes) >= 1
  x, y, w, h = boxes[0]
  # the face ellipse is centred at (110, 80); the box centre must be near it
  assert abs(x + w / 2 - 110) < 12 and abs(y + h / 2 - 80) < 15
  assert 50 < w < 130


def test_square_box_margin_and_clipping():
  # margin 0.1 grows a 50 px box to 60 px, centred
  assert face_lib.square_box((20, 30, 50, 50), (200, 200), 0.1) == (15, 25, 60)
  # a box at the frame edge is shifted back inside, never outside
  x, y, s = face_lib.square_box((170, 0, 40, 40), (100, 200), 0.25)
  assert s == 60 and x == 140 and y == 0
  # larger than the frame: shrunk to min(H, W)
  assert face_lib.square_box((0, 0, 90, 90), (80, 120), 0.5)[2] == 80


def test_clip_box_comes_from_onset_and_is_stable():
  clip = make_clip(T=8, peak=4, amp=3.0, shift_after=25)
  box = face_lib.clip_face_box(clip, onset=0, margin=0.1)
  assert box.detected and box.frame == 0
  onset_box = face_lib.detect_faces(clip[0])[0]
  assert (box.x, box.y, box.size) == face_lib.square_box(onset_box, clip.shape[1:3], 0.1)
  # the face drifted 25 px right after the onset, so a per-frame detector would move; ours does not
  later = face_lib.detect_faces(clip[5])[0]
  assert later[0] - onset_box[0] > 15
  crops = box.crop(clip)
  assert crops.shape == (8, box.size, box.size, 3)
  # re-running gives the identical box (deterministic)
  assert face_lib.clip_face_box(clip, onset=0, margin=0.1) == box


def test_no_face_warns_and_falls_back_to_centre_square():
  blank = np.full((3, 60, 100, 3), 0.5, np.float32)
  with pytest.warns(face_lib.FaceWarning, match=r"casme2/sub01/EP01.*no face.*centred square"):
    box = face_lib.clip_face_box(blank, name="casme2/sub01/EP01")
  assert not box.detected and (box.x, box.y, box.size) == (20, 0, 60)


def test_no_face_error_when_configured():
  blank = np.full((3, 60, 100, 3), 0.5, np.float32)
  with pytest.raises(DataError, match=r"samm/006/006_1_2.*no face.*on_no_face='fallback'"):
    face_lib.clip_face_box(blank, name="samm/006/006_1_2", on_no_face="error")
  with pytest.raises(ConfigError, match="on_no_face"):
    face_lib.clip_face_box(blank, on_no_face="ignore")


# ---------------------------------------------------------------------------- apex


def test_spotting_finds_the_frame_of_largest_change():
  for peak in (3, 6, 9):
    clip = make_clip(T=12, peak=peak, amp=2.0, seed=peak)
    box = face_lib.clip_face_box(clip)
    assert apex_lib.spot_apex(clip, box) == peak
    score = apex_lib.difference_from_onset(clip, box)
    assert score[0] == 0.0 and np.argmax(score) == peak


def test_spotting_is_inside_the_face_box():
  # a big change outside the face (background flash at frame 2) must not win over the face at frame 8
  clip = make_clip(T=11, peak=8, amp=2.0)
  clip[2, :, :20] = 1.0
  box = face_lib.clip_face_box(clip)
  assert box.x > 20
  assert apex_lib.spot_apex(clip, box) == 8
  assert apex_lib.spot_apex(clip, None) == 2   # whole frame: the flash wins


def test_choose_apex_modes():
  clip = make_clip(T=10, peak=6, amp=2.0)
  box = face_lib.clip_face_box(clip)
  kw = dict(onset=20, offset=29, frames=clip, box=box)
  assert apex_lib.choose_apex("annotated", annotated=23, **kw) == (23, "annotated")
  assert apex_lib.choose_apex("annotated", annotated=None, **kw) == (26, "spot (annotation missing)")
  ap, how = apex_lib.choose_apex("annotated", annotated=40, **kw)
  assert ap == 26 and "outside" in how
  assert apex_lib.choose_apex("spot", annotated=23, **kw) == (26, "spot")
  assert apex_lib.choose_apex("middle", annotated=23, **kw) == (24, "middle")
  with pytest.raises(ConfigError, match="data.apex"):
    apex_lib.choose_apex("peak", annotated=None, **kw)


# ---------------------------------------------------------------------------- preprocess


def test_clip_without_evm_is_the_cropped_resized_apex_frame():
  clip = make_clip(T=10, peak=5, amp=3.0)
  c = cfg(size=112, apex="annotated")
  notes = preprocess.Notes()
  out = preprocess.preprocess_clip(clip, 200.0, onset=1, apex=6, offset=9, config=c, name="x", notes=notes)
  assert out.shape == (112, 112, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  box = face_lib.clip_face_box(clip[1:], margin=face_lib.DEFAULT_MARGIN)
  assert notes.box == box and notes.apex == 6 and notes.apex_rule == "annotated"
  assert box.size > 112   # shrinking: area interpolation
  ref = cv2.resize(box.crop(clip[6]), (112, 112), interpolation=cv2.INTER_AREA)
  np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)


def test_clip_spotting_middle_and_no_crop():
  clip = make_clip(T=9, peak=2, amp=3.0)
  n = preprocess.Notes()
  preprocess.preprocess_clip(clip, 100.0, onset=0, apex=None, offset=8, config=cfg(apex="annotated"), notes=n)
  assert n.apex == 2 and n.apex_rule.startswith("spot")
  n = preprocess.Notes()
  preprocess.preprocess_clip(clip, 100.0, onset=0, apex=None, offset=8, config=cfg(apex="middle"), notes=n)
  assert n.apex == 4
  out = preprocess.preprocess_clip(clip, 100.0, onset=0, apex=4, offset=8, config=cfg(size=32, face_crop=False))
  ref = cv2.resize(clip[4], (32, 32), interpolation=cv2.INTER_AREA)
  np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)


def test_grey_clip_is_replicated_to_three_channels():
  clip = make_clip(T=6, peak=3)
  grey = (0.299 * clip[..., :1] + 0.587 * clip[..., 1:2] + 0.114 * clip[..., 2:3]).astype(np.float32)
  out = preprocess.preprocess_clip(grey, 200.0, onset=0, apex=3, offset=5, config=cfg(size=40))
  assert out.shape == (40, 40, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  c = cfg(size=40, evm=True)
  c.evm.freq_band = (20.0, 40.0)   # 6 frames at 200 fps: the 33.3 Hz bin
  mag = preprocess.preprocess_clip(grey, 200.0, onset=0, apex=3, offset=5, config=c)
  assert mag.shape == (40, 40, 3) and mag.dtype == np.float32 and 0 <= mag.min() and mag.max() <= 1
  np.testing.assert_array_equal(mag[..., 0], mag[..., 1])
  assert np.abs(mag - out).max() > 0.01


def test_bad_onset_offset_and_too_short_clip_messages():
  clip = make_clip(T=6, peak=3)
  with pytest.raises(DataError, match=r"clipA: onset 4 / offset 9 do not fit a clip of 6 frames"):
    preprocess.preprocess_clip(clip, 200.0, onset=4, apex=None, offset=9, config=cfg(), name="clipA")
  with pytest.raises(DataError, match=r"clipB: clip too short for EVM: onset..offset is 2 frame\(s\)"):
    preprocess.preprocess_clip(clip, 200.0, onset=2, apex=None, offset=3, config=cfg(evm=True), name="clipB")
  with pytest.raises(DataError, match=r"clipC: EVM needs the clip's frame rate"):
    preprocess.preprocess_clip(clip, None, onset=0, apex=None, offset=5, config=cfg(evm=True), name="clipC")


def test_macro_image_crop_and_fallback():
  img = draw_face(size=(180, 240), centre=(150, 95))
  n = preprocess.Notes()
  out = preprocess.preprocess_image((img * 255).astype(np.uint8), cfg(size=64), name="ck/S005", notes=n)
  assert out.shape == (64, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
  assert n.face_found and abs(n.box.x + n.box.size / 2 - 150) < 15
  # FER-style 48x48 grey pixels, already a face crop: no detection, just resize + 3 channels
  pix = (np.arange(48 * 48).reshape(48, 48) % 256).astype(np.uint8)
  out = preprocess.preprocess_image(pix, cfg(size=112), detect=False)
  assert out.shape == (112, 112, 3)
  with pytest.warns(face_lib.FaceWarning, match="rafdb/x"):
    preprocess.preprocess_image(np.zeros((90, 90, 3), np.uint8), cfg(), name="rafdb/x")


def test_preprocess_sample_reads_frames_and_reports_bad_files(tmp_path):
  clip = make_clip(T=8, peak=5, amp=3.0)
  paths = []
  for t, fr in enumerate(clip):
    p = str(tmp_path / f"img{t}.jpg")
    cv2.imwrite(p, cv2.cvtColor((fr * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    paths.append(p)
  s = Sample(dataset="casme2", subject="sub01", clip_id="EP01", label="happiness", frame_paths=tuple(paths),
             onset=0, apex=None, offset=7, fps=200.0)
  n = preprocess.Notes()
  out = preprocess.preprocess_sample(s, cfg(size=48), notes=n)
  assert out.shape == (48, 48, 3) and n.apex == 5 and n.face_found
  assert n.name == "casme2/sub01/EP01"
  with open(paths[5], "wb") as fh:
    fh.write(b"not an image")
  with pytest.raises(DataError, match=r"img5.jpg is not a readable image"):
    preprocess.preprocess_sample(s, cfg(size=48))


def test_settings_capture_every_evm_field():
  a = preprocess.settings_from_config(cfg())
  c = cfg()
  c.evm.alpha = 20.0
  b = preprocess.settings_from_config(c)
  assert a != b and a["evm"]["alpha"] == 15.0 and b["evm"]["alpha"] == 20.0
  assert a["image_size"] == 48 and a["apex"] == "annotated"


# ---------------------------------------------------------------------------- EVM


def _evm_cfg(size=112, band=(10.0, 40.0), **evm):
  c = cfg(size=size, evm=True)
  c.evm.freq_band = band       # T=12 at 200 fps: bins every 16.7 Hz, two of them in 10-40 Hz
  for k, v in evm.items():
    c.evm[k] = v
  return c


def test_evm_clip_gives_112x112x3_in_range_and_magnifies_motion():
  clip = make_clip(T=12, peak=6, amp=1.0, noise=False)
  out = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=_evm_cfg(), name="c")
  assert out.shape == (112, 112, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  plain = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=cfg(size=112))
  onset = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=0, offset=11, config=cfg(size=112))
  # the apex differs from the onset much more after magnification (around the mouth)
  assert np.abs(out - onset).mean() > 3 * np.abs(plain - onset).mean()


def test_evm_leaves_a_static_clip_unchanged():
  clip = np.repeat(draw_face()[None], 10, axis=0)
  out = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=5, offset=9, config=_evm_cfg(size=64), name="s")
  plain = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=5, offset=9, config=cfg(size=64))
  np.testing.assert_allclose(out, plain, atol=2e-3)


def test_evm_empty_band_error_and_fallback_name_the_clip():
  clip = make_clip(T=12, peak=6, amp=1.0)
  c = _evm_cfg(size=32, band=(0.1, 0.4))   # the paper's band: no FFT bin in a 0.06 s clip
  with pytest.raises(EVMError, match=r"casme2/sub01/EP01 \(12 frames onset..offset at 200 fps, 0.060 s\)"
                                     r".*empty passband"):
    preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub01/EP01")
  c.evm.on_empty_band = "fallback"
  n = preprocess.Notes()
  with pytest.warns(preprocess.PreprocessWarning, match=r"casme2/sub01/EP01: .*passband"):
    out = preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub01/EP01",
                                     notes=n)
  assert out.shape == (32, 32, 3) and len(n.warnings) == 1
  # a second clip of the same shape (jit cache hit in mer_jax.evm) is still reported, by its own name
  n = preprocess.Notes()
  with pytest.warns(preprocess.PreprocessWarning, match=r"casme2/sub02/EP09: .*passband.*Falling back"):
    preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub02/EP09",
                               notes=n)
  assert len(n.warnings) == 1


def test_spotting_ignores_a_steady_illumination_ramp():
  """A brightness ramp from onset to offset (or slow drift) must not pull the apex to the offset:
  the score is taken against the onset-offset blend, not against the onset alone."""
  T, peak = 14, 5
  clip = make_clip(T=T, peak=peak, amp=2.0, seed=3)
  clip = np.clip(clip + 0.08 * (np.arange(T) / (T - 1))[:, None, None, None], 0, 1).astype(np.float32)
  box = face_lib.clip_face_box(clip)
  luminance = clip[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
  onset_only = np.abs(box.crop(luminance[..., None])[..., 0] - box.crop(luminance[..., None])[0, ..., 0])
  assert int(np.argmax(onset_only.mean(axis=(1, 2)))) == T - 1     # the naive rule picks the offset
  assert apex_lib.spot_apex(clip, box) == peak
