"""Face crop, apex spotting and clip/image preprocessing (mer_jax.data.face / apex / preprocess)."""

import cv2
import ml_collections
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
    cv2.ellipse(
      img, P(cx + dx * s, cy - (22 + brow_lift) * s), A(10 * s, 2.5 * s), 0, 0, 360, (40, 40, 50), -1, cv2.LINE_AA, sh
    )
  cv2.ellipse(img, P(cx, cy + 6 * s), A(4 * s, 10 * s), 0, 0, 360, (180, 150, 140), -1, cv2.LINE_AA, sh)
  cv2.ellipse(img, P(cx, cy + 24 * s), A(14 * s, (4 + mouth_open) * s), 0, 0, 360, (120, 60, 60), -1, cv2.LINE_AA, sh)
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
    frames.append(draw_face(size=size, centre=(100 + dx, 85), mouth_open=a, seed=seed * 100 + t if noise else None))
  return np.stack(frames)


def with_evm(c, **changes):
  """``c`` with evm fields replaced (a fresh section: ml-collections refuses a field of another type)."""
  c.evm = ml_collections.ConfigDict({**c.evm.to_dict(), **changes})
  return c


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
  assert apex_lib.spot_apex(clip, None) == 2  # whole frame: the flash wins


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
  assert box.size > 112  # shrinking: area interpolation
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
  c.evm.freq_band = (20.0, 40.0)  # 6 frames at 200 fps: the 33.3 Hz bin
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
  s = Sample(
    dataset="casme2",
    subject="sub01",
    clip_id="EP01",
    label="happiness",
    frame_paths=tuple(paths),
    onset=0,
    apex=None,
    offset=7,
    fps=200.0,
  )
  n = preprocess.Notes()
  out = preprocess.preprocess_sample(s, cfg(size=48), notes=n)
  assert out.shape == (48, 48, 3) and n.apex == 5 and n.face_found
  assert n.name == "casme2/sub01/EP01"
  with open(paths[5], "wb") as fh:
    fh.write(b"not an image")
  with pytest.raises(DataError, match=r"img5.jpg is not a readable image"):
    preprocess.preprocess_sample(s, cfg(size=48))


def test_settings_capture_every_evm_field():
  """The cache key (settings_from_config, used by the TFDS builders) changes with every evm field."""
  changed = {
    "enabled": False,
    "order": "fast",
    "alpha": 20.0,
    "freq_band": (0.2, 0.4),
    "pyramid": "gaussian",
    "levels": 3,
    "lambda_c": 20.0,
    "chrom_attenuation": 1.0,
    "temporal_filter": "iir",
    "on_empty_band": "fallback",
    "band_units": "mit_rates",
  }
  a = preprocess.settings_from_config(cfg(evm=True))
  assert a["image_size"] == 48 and a["apex"] == "annotated" and a["evm"]["order"] == "paper"
  keys = set(cfg().evm.keys())
  assert keys <= set(changed), f"no case for evm field(s) {sorted(keys - set(changed))}"
  for k in sorted(keys):
    b = preprocess.settings_from_config(with_evm(cfg(evm=True), **{k: changed[k]}))
    assert b != a and b["evm"][k] == (list(changed[k]) if isinstance(changed[k], tuple) else changed[k]), k
  # a config written before evm.order existed is keyed (and preprocessed) as the order it was made with
  c = cfg()
  del c.evm["order"]
  assert preprocess.settings_from_config(c)["evm"]["order"] == preprocess.LEGACY_ORDER == "fast"
  c.evm.order = "native"
  with pytest.raises(ConfigError, match=r"evm.order must be one of \('paper', 'fast'\), got 'native'"):
    preprocess.settings_from_config(c)


def test_tfds_cache_names_distinguish_the_orders():
  from mer_jax.data import tfds_builders as tb

  paper, fast = cfg(size=112, evm=True), cfg(size=112, evm=True)
  fast.evm.order = "fast"
  assert tb.config_name("casme2", paper) == "evm_112"
  assert tb.config_name("casme2", fast).startswith("evm_112_") and tb.canonical_settings(
    "casme2", fast
  ) != tb.canonical_settings("casme2", paper)


# ---------------------------------------------------------------------------- EVM


def _evm_cfg(size=112, band=(10.0, 40.0), **evm):
  c = cfg(size=size, evm=True)
  c.evm.freq_band = band  # T=12 at 200 fps: bins every 16.7 Hz, two of them in 10-40 Hz
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
  c = _evm_cfg(size=32, band=(0.1, 0.4))  # the paper's band: no FFT bin in a 0.06 s clip
  with pytest.raises(
    EVMError,
    match=r"casme2/sub01/EP01 \(12 frames onset..offset at 200 fps, 0.060 s\)"
    r".*empty passband",
  ):
    preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub01/EP01")
  c.evm.on_empty_band = "fallback"
  n = preprocess.Notes()
  with pytest.warns(preprocess.PreprocessWarning, match=r"casme2/sub01/EP01: .*passband"):
    out = preprocess.preprocess_clip(
      clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub01/EP01", notes=n
    )
  assert out.shape == (32, 32, 3) and len(n.warnings) == 1
  # a second clip of the same shape (jit cache hit in mer_jax.evm) is still reported, by its own name
  n = preprocess.Notes()
  with pytest.warns(preprocess.PreprocessWarning, match=r"casme2/sub02/EP09: .*passband.*Falling back"):
    preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="casme2/sub02/EP09", notes=n)
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
  assert int(np.argmax(onset_only.mean(axis=(1, 2)))) == T - 1  # the naive rule picks the offset
  assert apex_lib.spot_apex(clip, box) == peak


def test_every_evm_field_reaches_the_preprocessed_image():
  """Each field of config.evm changes the output image, or is shown (with a value) not to matter."""
  clip = make_clip(T=12, peak=6, amp=1.5, noise=False)

  def run(**evm):
    c = with_evm(_evm_cfg(size=64), **evm)
    return preprocess.preprocess_clip(clip, 200.0, onset=0, apex=6, offset=11, config=c, name="f")

  base = run()
  # field: (settings of the reference run, the changed value)
  cases = {
    "enabled": ({}, False),
    "order": ({}, "fast"),
    "alpha": ({}, 5.0),
    "freq_band": ({}, (25.0, 40.0)),
    "pyramid": ({}, "gaussian"),
    "levels": ({}, 2),
    "lambda_c": ({}, 40.0),
    "chrom_attenuation": ({}, 1.0),
    "temporal_filter": ({}, "butterworth"),
    "band_units": ({"temporal_filter": "iir"}, "mit_rates"),
    "on_empty_band": ({"freq_band": (0.1, 0.4)}, "fallback"),
  }
  keys = set(_evm_cfg().evm.keys())
  assert keys <= set(cases), f"no case for evm field(s) {sorted(keys - set(cases))}"
  for k in sorted(keys - {"on_empty_band"}):
    ref_settings, value = cases[k]
    if k == "band_units":
      ref, value = run(**ref_settings), {"band_units": "mit_rates", "freq_band": (0.1, 0.4)}
    else:
      ref, value = base, {k: value}
    assert np.abs(run(**ref_settings, **value) - ref).max() > 1e-3, k
  # on_empty_band does not matter while the band holds a bin (10-40 Hz: 16.7 and 33.3 Hz) ...
  np.testing.assert_array_equal(run(on_empty_band="fallback"), base)
  # ... and decides between an error and the Butterworth fallback when it holds none (0.1-0.4 Hz)
  with pytest.raises(EVMError, match="empty passband"):
    run(freq_band=(0.1, 0.4))
  with pytest.warns(preprocess.PreprocessWarning, match="Falling back"):
    fallback = run(freq_band=(0.1, 0.4), on_empty_band="fallback")
  np.testing.assert_allclose(fallback, run(freq_band=(0.1, 0.4), temporal_filter="butterworth"), atol=1e-6)


# ---------------------------------------------------------------------------- order: paper vs fast


def textured_clip(n, cycles, T=60, apex=30, shift=0.5):
  """An n x n "face" of ``cycles`` vertical cosine stripes (RGB [T, n, n, 3] in [0, 1]) whose texture shifts
  right by ``shift`` px with a raised-cosine profile: 0 at frame 0, ``shift`` at ``apex``, back to 0."""
  x = np.arange(n, dtype=np.float64)
  d = shift * 0.5 * (1 - np.cos(np.pi * np.arange(T) / apex))
  rows = 0.5 + 0.25 * np.cos(2 * np.pi * cycles * (x[None, :] - d[:, None]) / n)  # [T, n]
  rgb = rows[:, None, :, None] * np.array([1.0, 0.9, 0.8]) + np.array([0.0, 0.05, 0.1])  # a little colour
  return np.ascontiguousarray(np.broadcast_to(rgb, (T, n, n, 3)).astype(np.float32))


def _area112(image):
  return cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("n", [216, 333, 432])
def test_paper_order_keeps_the_native_resolution_gain(n):
  """The apex change of the default ("paper") order is within 20% of an independent reference: the whole
  n-px clip magnified with mer_jax.evm.magnify_from_config, its apex resized with INTER_AREA. The "fast" order
  (resize to 112 first) falls short at the finer textures. The sizes sit just above a working size
  (216 -> 235, 333 -> 362, 432 -> 470 px: the largest region growth, 2^(1/8)); CDE's EVM settings."""
  from configs import cde
  from mer_jax import evm

  c = cde.get_config()
  assert c.evm.order == "paper" and c.evm.temporal_filter in preprocess.CAUSAL_FILTERS
  assert preprocess.work_size(n, c.evm) / n > 1.08
  ratios = {"paper": [], "fast": []}
  for cycles in (4, 8, 14):
    video = textured_clip(n, cycles)
    plain = _area112(video[30])
    ref = _area112(np.asarray(evm.magnify_from_config(video, 200.0, c.evm))[30]) - plain
    for order in ("paper", "fast"):
      c.evm.order = order
      with pytest.warns(face_lib.FaceWarning, match="no face"):  # the texture is no face: the box is the frame
        out = preprocess.preprocess_clip(video, 200.0, onset=0, apex=30, offset=59, config=c, name="tex")
      ratios[order].append(float(((out - plain) * ref).sum() / (ref * ref).sum()))  # projection on ref
  assert all(0.8 <= r <= 1.2 for r in ratios["paper"]), ratios
  assert ratios["fast"][2] < 0.6 and min(ratios["fast"]) < 0.8, ratios


def test_causal_filters_ignore_appended_frames_and_ideal_does_not():
  """Why the paper order may pad the time axis for butterworth / iir (frames before the pad are exactly
  unchanged, and the apex needs no later frame) but keeps the ideal filter's clip exact."""
  from mer_jax import evm

  video = np.random.default_rng(0).uniform(0.2, 0.8, (20, 36, 44, 3)).astype(np.float32)
  padded = np.concatenate([video, np.repeat(video[-1:], 7, axis=0)])
  e = ml_collections.ConfigDict({**config_defaults.get_evm_config().to_dict(), "freq_band": (2.0, 20.0)})
  for f in ("butterworth", "iir", "ideal"):
    e.temporal_filter = f
    full = np.asarray(evm.magnify_from_config(video, 100.0, e))
    tail = np.asarray(evm.magnify_from_config(padded, 100.0, e))[:20]
    head = np.asarray(evm.magnify_from_config(video[:12], 100.0, e))
    if f == "ideal":
      assert np.abs(tail - full).max() > 0.05 and preprocess.work_length(11, 20, e) == (20, 20)
    else:
      np.testing.assert_array_equal(tail, full)
      np.testing.assert_array_equal(head, full[:12])
      assert preprocess.work_length(11, 20, e) == (12, 13)


def test_working_sizes_and_lengths():
  e = config_defaults.get_evm_config()
  series = sorted({preprocess.geometric_bucket(n, 8) for n in range(150, 700)})
  assert series[:4] == [152, 166, 181, 197] and all(b / a < 1.1 for a, b in zip(series, series[1:]))
  from mer_jax.evm import pyramids

  for n in range(150, 700):
    b = preprocess.work_size(n, e)
    assert n <= b <= max(n, round(n * 2 ** (1 / 8))), n
    assert pyramids.check_levels(b, b, "auto", "laplacian") == pyramids.check_levels(n, n, "auto", "laplacian"), n
  assert len({preprocess.work_size(n, e) for n in range(200, 451)}) <= 12
  assert [preprocess.geometric_bucket(t, 4) for t in (3, 5, 24, 27, 28, 70)] == [3, 5, 27, 27, 32, 76]


def test_paper_order_compiles_once_per_working_size_and_length():
  """Clips with different face sizes (236-256 px -> working size 256) and onset..apex lengths (24-27 frames
  -> 27) share one compiled EVM; another working size compiles again (the counter counts)."""
  import jax

  compiles = []

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  c = with_evm(cfg(size=112, evm=True), temporal_filter="butterworth")
  clips = [((30, 240, 250), 23), ((34, 245, 300), 24), ((40, 300, 256), 26), ((27, 237, 237), 25)]
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = []
    for (t, h, w), apex in clips + [((30, 300, 300), 23)]:
      assert preprocess.work_length(apex, t, c.evm)[1] == 27
      video = textured_clip(max(h, w), 9, T=t, apex=apex)[:, :h, :w].copy()
      before = len(compiles)
      with pytest.warns(face_lib.FaceWarning):
        preprocess.preprocess_clip(video, 200.0, onset=0, apex=apex, offset=t - 1, config=c)
      counts.append(len(compiles) - before)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert {preprocess.work_size(min(h, w), c.evm) for (_, h, w), _ in clips} == {256}
  assert preprocess.work_size(300, c.evm) == 304
  assert counts[0] >= 1 and counts[1:4] == [0, 0, 0] and counts[4] >= 1, counts
