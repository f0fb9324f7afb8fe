"""The training-free spotter (mer_jax.spotting.spotter) and LOSO selection (mer_jax.spotting.loso).

Signals here are built by hand (a flat noise floor with bumps at known frames), so every expected interval is
worked out in the comment next to it; the motion-signal tests render faces with SynthME and check that head
motion is removed while a local expression is kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mer_jax.data import synth
from mer_jax.errors import ConfigError
from mer_jax.spotting import evaluate as ev
from mer_jax.spotting import loso, synth_long
from mer_jax.spotting import spotter as sp
from mer_jax.spotting.readers import CAS_LONG, Interval, LongReadResult, LongVideo

# No smoothing, so runs are exactly where the hand-made signal is above the threshold.
EXACT = sp.SpotParams(
  smooth_seconds=0.0,
  macro_smooth_seconds=0.0,
  threshold=5.0,
  macro_threshold=5.0,
  merge_seconds=0.0,
  macro_merge_seconds=0.0,
  lag_fraction=0.0,
  pad_seconds=0.0,
  min_seconds=0.0,
)


def floor(n: int, seed: int = 0) -> np.ndarray:
  """A noise floor: median 1, MAD 0.1 (so z = (s - 1) / 0.148), values in [0.8, 1.2]."""
  rng = np.random.default_rng(seed)
  return (1.0 + rng.uniform(-0.2, 0.2, n)).astype(np.float32)


def bump(sig: np.ndarray, first: int, last: int, height: float = 10.0) -> np.ndarray:
  """Sets frames first..last (1-based inclusive) to ``height`` (z far above 5)."""
  out = sig.copy()
  out[first - 1 : last] = height
  return out


def spans(ivs):
  return [(i.onset, i.offset, i.type) for i in ivs]


def test_intervals_are_one_based_inclusive_and_typed_by_duration_at_the_fps():
  s = bump(bump(floor(300), 50, 64), 150, 165)  # 15 frames, then 16 frames
  # at 30 fps 15 frames = 0.5 s is micro (<= 0.5 s), 16 frames = 0.533 s is macro
  assert spans(sp.extract_intervals(s, 30.0, EXACT, k=6)) == [(50, 64, "micro"), (150, 165, "macro")]
  # at 200 fps both are far below 0.5 s: micro; the 16-frame one is no longer taken as macro
  assert spans(sp.extract_intervals(s, 200.0, EXACT, k=6)) == [(50, 64, "micro"), (150, 165, "micro")]


def test_offset_lag_pad_and_merge():
  s = bump(bump(floor(300), 100, 110), 114, 120)  # two runs with a 3-frame gap (111..113)
  p = dataclasses.replace(EXACT, merge_seconds=3 / 30)  # gaps of <= 3 frames merge
  # micro scale: merged run 100..120 (21 frames = 0.7 s: macro-length); macro scale (macro_merge 0): 100..110 (11)
  # and 114..120 (7), micro-length. Neither scale gives its own type; the longer motion is kept as macro, and the
  # two micro-length runs inside it are not added
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(100, 120, "macro")]
  p = dataclasses.replace(p, lag_fraction=1.0)  # offset = 120 - 6 = 114: 15 frames -> micro
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(100, 114, "micro")]
  p = dataclasses.replace(p, pad_seconds=2 / 30)  # onset 98: 17 frames -> macro-length on the micro scale
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(98, 114, "macro")]
  p = dataclasses.replace(p, macro_merge_seconds=3 / 30)  # the macro scale merges too: 98..114 macro
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(98, 114, "macro")]


def test_a_macro_length_run_the_macro_scale_misses_is_kept_as_macro():
  s = bump(floor(300), 100, 120)  # 21 frames = 0.7 s at z ~ 61 (floor(): z = (s - 1) / 0.148)
  # the macro scale's threshold is above the bump: only the micro scale sees it, as a macro-length run; it is
  # kept as the macro-expression it is (it used to be dropped by both scales)
  p = dataclasses.replace(EXACT, macro_threshold=100.0)
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(100, 120, "macro")]
  # a micro-length run seen only at the macro scale is not a micro-expression: the micro threshold decides
  s2 = bump(floor(300), 100, 111)
  p = dataclasses.replace(EXACT, threshold=100.0)
  assert spans(sp.extract_intervals(s2, 30.0, p, k=6)) == []
  # the extra macro interval gives way to an overlapping macro-scale one
  s3 = bump(bump(floor(300), 100, 120), 121, 140, height=2.0)  # z ~ 6.8 tail
  p = dataclasses.replace(EXACT, threshold=30.0, macro_threshold=5.0)
  assert spans(sp.extract_intervals(s3, 30.0, p, k=6)) == [(100, 140, "macro")]


def test_min_seconds_drops_short_intervals():
  s = bump(bump(floor(300), 100, 101), 200, 205)  # 2 and 6 frames
  assert spans(sp.extract_intervals(s, 30.0, EXACT, k=6)) == [(100, 101, "micro"), (200, 205, "micro")]
  p = dataclasses.replace(EXACT, min_seconds=0.1)  # 3 frames at 30 fps
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(200, 205, "micro")]
  assert sp.SpotParams().min_seconds == 0.1


def test_nothing_is_spotted_outside_valid_frames_and_runs_touching_them_are_dropped():
  s = bump(bump(bump(floor(300), 50, 60), 150, 160), 240, 250)
  valid = np.ones(300, bool)
  valid[160:200] = False  # e.g. the face left at frame 161 (1-based), right after the second run
  valid[245:260] = False
  assert spans(sp.extract_intervals(s, 30.0, EXACT, k=6)) == [
    (50, 60, "micro"),
    (150, 160, "micro"),
    (240, 250, "micro"),
  ]
  # the second run ends right before the gap (its extent is unknown), the third runs into the other gap
  assert spans(sp.extract_intervals(s, 30.0, EXACT, k=6, valid=valid)) == [(50, 60, "micro")]
  # a huge value in an invalid stretch changes neither the noise scale nor the intervals
  s3 = s.copy()
  s3[160:200] = 1e6  # the whole first invalid stretch
  assert spans(sp.extract_intervals(s3, 30.0, EXACT, k=6, valid=valid)) == [(50, 60, "micro")]
  z1, z3 = sp.noise_z(s, 30.0, EXACT, valid=valid), sp.noise_z(s3, 30.0, EXACT, valid=valid)
  np.testing.assert_array_equal(z1, z3)
  assert np.isneginf(z1[~valid]).all() and np.isfinite(z1[valid]).all()
  # ... nor, through the moving average, the z of the valid frames next to it
  sm = dataclasses.replace(EXACT, smooth_seconds=0.2)
  np.testing.assert_array_equal(sp.noise_z(s, 30.0, sm, valid=valid), sp.noise_z(s3, 30.0, sm, valid=valid))
  # runs are not merged across an invalid gap
  s4 = bump(bump(floor(300), 100, 105), 109, 114)  # gap 106..108
  v4 = np.ones(300, bool)
  v4[106] = False  # frame 107, inside the gap
  p = dataclasses.replace(EXACT, merge_seconds=0.2)
  assert spans(sp.extract_intervals(s4, 30.0, p, k=6)) == [(100, 114, "micro")]
  assert spans(sp.extract_intervals(s4, 30.0, p, k=6, valid=v4)) == [(100, 105, "micro"), (109, 114, "micro")]
  assert sp.extract_intervals(s, 30.0, EXACT, k=6, valid=np.zeros(300, bool)) == []


def test_micro_inside_a_macro_interval_is_dropped():
  s = bump(floor(300), 100, 140)
  s[110:115] = 30.0  # a spike inside the macro run
  p = dataclasses.replace(EXACT, threshold=100.0, macro_threshold=5.0)  # micro scale only sees z > 100
  # spike: (30 - 1) / 0.148 = 196 > 100 -> micro run 111..115, inside macro 100..140
  assert spans(sp.extract_intervals(s, 30.0, p, k=6)) == [(100, 140, "macro")]


def test_threshold_is_relative_to_the_videos_noise_floor():
  # the same bump shape on a floor 10x noisier must not pass the same z threshold
  quiet = bump(floor(300), 50, 60, 2.0)  # z = (2 - 1) / 0.148 = 6.7 > 5
  noisy = 1.0 + (floor(300) - 1.0) * 10
  noisy[49:60] = 2.0  # z = 1 / 1.48 = 0.67 < 5
  assert spans(sp.extract_intervals(quiet, 30.0, EXACT, k=6)) == [(50, 60, "micro")]
  assert spans(sp.extract_intervals(noisy, 30.0, EXACT, k=6)) == []


def test_baseline_windows_at_the_largest_frame_differences():
  d = np.zeros(100, np.float32)
  d[[19, 24, 69]] = [5.0, 4.0, 3.0]  # frames 20, 25 (too close to 20 for a 9-frame window), 70
  ivs = sp.frame_difference_intervals(d, 30.0, micro_frames=9, macro_frames=30, n_micro=2, n_macro=1)
  # micro windows centred at frame 20 (16..24) and 70 (66..74); frame 25's window would overlap 16..24
  # macro window centred at frame 20: 20 - 15 = 5 .. 34
  assert [(i.onset, i.apex, i.offset, i.type) for i in ivs] == [
    (16, 20, 24, "micro"),
    (66, 70, 74, "micro"),
    (5, 20, 34, "macro"),
  ]


def test_residual_flow_removes_an_affine_motion_and_keeps_a_local_one():
  s = 64
  ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
  c = (s - 1) / 2
  a = 0.03  # rotation by 0.03 rad + translation (1.5, -0.7)
  glob = np.stack([1.5 - a * (ys - c), -0.7 + a * (xs - c)], -1)
  local = np.zeros_like(glob)
  local[40:52, 20:44, 1] = -1.0  # a region moving up by 1 px (lip corners)
  r = sp.residual_flow((glob + local).astype(np.float32), sp._design(s))
  mag = np.linalg.norm(r, axis=-1)
  assert mag[:30].max() < 0.05  # far from the local motion: nothing left
  assert abs(r[44:50, 24:40, 1].mean() + 1.0) < 0.1  # the local motion is kept


def test_cell_mask_leaves_out_eye_band_top_row_and_edge_columns():
  m = sp.cell_mask(sp.SpotParams(grid=6, eye_band=(0.30, 0.48), top_rows=1, edge_columns=1))
  # row centres 1/12, 3/12, 5/12 (=0.417, eye band), 7/12, 9/12, 11/12
  expect = np.zeros((6, 6), bool)
  expect[[1, 3, 4, 5], 1:5] = True
  np.testing.assert_array_equal(m, expect)


def _face_video(events, total=90, size=96, seed=3):
  ident = synth.make_identity(np.random.default_rng(seed))
  return np.stack(
    list(synth_long.render_video(ident, events, total, frame_size=size, rng=np.random.default_rng(seed + 1)))
  )


def test_head_motion_is_removed_but_an_expression_is_kept():
  rng = np.random.default_rng(0)
  aus = synth.expression_aus("positive", rng)
  head = synth_long._Event("head", 30, 12, amplitude=3.0, shift=(3.0, 1.0, 1.5))
  expr = synth_long._Event("macro", 30, 16, apex=7, aus=aus, amplitude=6.0)
  p = sp.SpotParams()
  sig_head = sp.spotter(_face_video([head]), 30.0, p)
  sig_expr = sp.spotter(_face_video([expr]), 30.0, p)
  quiet = np.median(sig_head[60:])
  # a 3 px shift + 1.5 degree roll leaves less residual motion than a 6 px (at 112 px) smile
  assert sig_expr[30:52].max() > 2 * sig_head[30:52].max()
  assert sig_expr[30:52].max() > 4 * quiet
  # and without registration and the affine fit, the head move would dominate (what the two steps remove)
  raw = dataclasses.replace(p, register=False)
  assert sp.spotter(_face_video([head]), 30.0, raw)[30:52].max() > sig_head[30:52].max()


def test_params_validation_names_the_setting():
  with pytest.raises(ConfigError, match="spotter flow='tvl1': expected one of farneback, dis"):
    sp.SpotParams(flow="tvl1").validate()
  with pytest.raises(ConfigError, match=r"spotter parameters: unknown key\(s\) thresh;"):
    sp.SpotParams.from_dict({"thresh": 3})
  with pytest.raises(ConfigError, match="spotter k_seconds must be > 0, got 0"):
    sp.SpotParams(k_seconds=0).validate()


# ---------------------------------------------------------------------------- LOSO


def _video(subject, name, ivs):
  return LongVideo(
    CAS_LONG, subject, name, 30.0, tuple(Interval(on, off, None, t) for on, off, t in ivs), num_frames=300
  )


def _signal(bumps, seed):
  s = floor(300, seed)
  for first, last, h in bumps:
    s = bump(s, first, last, h)
  return sp.MotionSignal(signal=s, frame_diff=s.copy(), fps=30.0, k=0, step=1, face_found=True, boxes=[])


def _fake_dataset():
  """Three subjects. In A and B micro-expressions have z ~ 20 and a distractor z ~ 6; subject C's expression is
  weak (z ~ 6), so only a low threshold finds it, at the price of the distractors of A and B."""
  z = lambda v: 1.0 + 0.148 * v  # noqa: E731  signal value of a given z
  vids = [
    _video("a", "1_1", [(50, 60, "micro")]),
    _video("b", "2_1", [(80, 90, "micro")]),
    _video("c", "3_1", [(120, 130, "micro")]),
  ]
  sigs = {
    "1_1": _signal([(50, 60, z(20)), (200, 205, z(6))], 1),
    "2_1": _signal([(80, 90, z(20)), (220, 225, z(6))], 2),
    "3_1": _signal([(120, 130, z(6))], 3),
  }
  return LongReadResult(CAS_LONG, "gt.xlsx", vids, read=3), sigs


SPACE = ({"threshold": (4.0, 10.0)}, {"macro_threshold": (50.0,)})


def test_loso_thresholds_come_from_the_training_subjects_only():
  res, sigs = _fake_dataset()
  base = dataclasses.replace(EXACT, merge_seconds=0.0)
  out = loso.run_loso(res, sigs, base, space=SPACE)
  chosen = {f["subject"]: f["spotter"]["params"]["threshold"] for f in out["folds"]}
  # held out a: trained on b (z 20 expression + z 6 distractor) and c (z 6 expression). Threshold 4: b TP 1 FP 1,
  # c TP 1 -> F1 2*2/(2*3+... ) = P 2/3, R 1 -> 0.8; threshold 10: b TP 1, c FN -> P 1, R 1/2 -> 0.667 => 4.
  # held out c: trained on a and b: threshold 4 gives P 1/2 R 1 (0.667), 10 gives P 1 R 1 (1.0) => 10,
  # so c's own weak expression is missed: its ground truth did not pick its threshold.
  assert chosen == {"a": 4.0, "b": 4.0, "c": 10.0}
  c_preds = [p for p in out["predictions"]["spotter"] if p.video == "3_1"]
  assert c_preds == []
  # changing the held-out subject's ground truth changes nothing in its fold
  res2 = dataclasses.replace(res, videos=res.videos[:2] + [_video("c", "3_1", [(200, 210, "micro")])])
  out2 = loso.run_loso(res2, sigs, base, space=SPACE)
  assert [f["spotter"] for f in out2["folds"]][2] == [f["spotter"] for f in out["folds"]][2]


# ---------------------------------------------------------------------------- face track: cuts and absence


def _scene(n, value, size=96, seed=0):
  """n frames of a face-free scene: a textured grey field around ``value`` (another shot)."""
  rng = np.random.default_rng(seed)
  base = np.clip(value + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
  return np.stack([np.clip(base.astype(np.int16) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)] * n)


def test_a_cut_ends_the_track_and_no_flow_pair_spans_it():
  face = _face_video([], total=60)
  # another shot of another face, brighter (an interview's second camera): the face is found on both sides
  other = np.clip(_face_video([], total=60, seed=7).astype(np.int16) + 70, 0, 255).astype(np.uint8)
  video = np.concatenate([face, other, _scene(45, 200), face])  # cuts at frames 61, 121 and 166 (1-based)
  ms = sp.motion_signal(iter(video), 30.0, sp.SpotParams())
  assert ms.cuts == [61, 121, 166]
  assert ms.face_found and ms.face_absent() == [(121, 165)]
  k = ms.k
  # a flow pair needs k + 1 frames of one shot with a face: frames k+1..60, 61+k..120 and 166+k..225
  assert (np.flatnonzero(ms.valid) + 1).tolist() == (
    list(range(k + 1, 61)) + list(range(61 + k, 121)) + list(range(166 + k, 226))
  )
  assert (ms.signal[~ms.valid] == 0).all()
  # the held-expression signal (frame t against frame t - hold_lag) never pairs frames across a cut either
  lag = ms.hold_lag
  assert np.isnan(ms.hold[60 : 60 + lag]).all() and np.isnan(ms.hold[120 : 165 + lag]).all()
  assert np.isfinite(ms.hold[60 + lag + 3 : 120]).all() and np.isfinite(ms.hold[165 + lag + 3 :]).all()
  # the spotted intervals stay inside the valid frames, whatever the threshold
  low = dataclasses.replace(sp.SpotParams(), threshold=0.5, macro_threshold=0.5, min_seconds=0.0)
  for iv in sp.extract_intervals(ms.signal, 30.0, low, k=k, valid=ms.valid):
    assert ms.valid[iv.onset - 1 : iv.offset].all(), iv
  assert sp.extract_intervals(ms.signal, 30.0, sp.SpotParams(), k=k, valid=ms.valid) == []
  # without the cut detector the flow pairs across the face-to-face cut give the largest motion of the video,
  # spotted as a micro-expression at the cut
  off = sp.motion_signal(iter(video), 30.0, dataclasses.replace(sp.SpotParams(), cut_threshold=2.0))
  assert off.cuts == [] and off.signal[60 : 60 + k].max() > 1.5 * ms.signal[ms.valid].max()
  spotted = sp.extract_intervals(off.signal, 30.0, sp.SpotParams(), k=k, valid=off.valid)
  assert [(iv.onset <= 61 + k and iv.offset >= 61) for iv in spotted] == [True], spotted


def test_a_face_that_leaves_without_a_cut_is_absent_after_absent_seconds():
  face = _face_video([], total=60)
  hidden = face[-1:].repeat(60, 0).copy()
  hidden[:, 10:90, 15:85] = 128  # the face covered
  video = np.concatenate([face, hidden, face])
  p = dataclasses.replace(sp.SpotParams(), cut_threshold=2.0)  # the cut detector off: the face track alone
  ms = sp.motion_signal(iter(video), 30.0, p)
  assert ms.cuts == []
  absent = ms.face_absent()
  assert len(absent) == 1
  first, last = absent[0]
  # absence starts at the first missed detection (61: the detector runs at 61 since 31 hit) and lasts until a
  # detection hits again (re-detection every 0.1 s = 3 frames while missing)
  assert first == 61 and 120 <= last <= 123, absent
  # a one-second gap is needed: a face covered for less than absent_seconds keeps its track
  brief = np.concatenate([face, hidden[:15], face])
  assert sp.motion_signal(iter(brief), 30.0, p).face_absent() == []
  # no face anywhere: nothing is valid, nothing is spotted
  none = sp.motion_signal(iter(_scene(60, 120)), 30.0, p)
  assert not none.face_found and not none.valid.any() and none.face_absent() == [(1, 60)]
  assert sp.extract_intervals(none.signal, 30.0, p, k=none.k, valid=none.valid) == []


def test_a_held_expression_onset_is_not_a_micro_expression():
  """A micro-expression returns to neutral; a smile that rises in 0.2 s and fades over 2.3 s does not. Both give
  a short burst of motion (a micro candidate); the held-expression check keeps the first and drops the second."""
  rng = np.random.default_rng(0)
  ident = synth.make_identity(rng)
  micro = synth_long._Event("micro", 40, 12, apex=6, aus=synth.expression_aus("surprise", np.random.default_rng(5)))
  micro = dataclasses.replace(micro, amplitude=3.0)
  held = synth_long._Event("macro", 120, 75, apex=6, aus=synth.expression_aus("positive", np.random.default_rng(3)))
  held = dataclasses.replace(held, amplitude=4.0)
  frames = list(synth_long.render_video(ident, [micro, held], 240, frame_size=128, rng=np.random.default_rng(1)))
  ms = sp.motion_signal(iter(frames), 30.0)
  assert ms.hold_lag == 27  # 0.9 s at 30 fps
  off = dataclasses.replace(sp.SpotParams(), hold_ratio=0.0)
  unchecked = sp.intervals_of(ms, off)
  # without the check both bursts are micro-expressions: the micro event and the smile's rise
  assert [(i.type, ev.iou((i.onset, i.offset), (40, 51)) >= 0.5) for i in unchecked] == [
    ("micro", True),
    ("micro", False),
  ], unchecked
  assert 120 <= unchecked[1].onset <= 126
  # the face 0.9 s on: back to neutral after the micro event (hold ~0.1 x its peak motion), still smiling
  # after the rise (~0.9 x)
  ratios = [
    ms.hold[i.onset - 1 - ms.k + ms.hold_lag] / ms.signal[i.onset - 1 : i.offset + ms.k].max() for i in unchecked
  ]
  assert ratios[0] < 0.25 and ratios[1] > 0.7, ratios
  assert sp.intervals_of(ms, sp.SpotParams()) == unchecked[:1]


def test_face_boxes_are_reported_in_the_input_pixels():
  """The spotter works on frames shrunk to work_side (640 px); the boxes it reports go back to the input's pixels."""
  face = _face_video([], total=12, size=96)
  big = np.stack([np.kron(f, np.ones((10, 10, 1), np.uint8)) for f in face])  # 960 x 960
  ms = sp.motion_signal(iter(big), 30.0)
  assert ms.scale == pytest.approx(640 / 960)
  small = sp.motion_signal(iter(face), 30.0)  # 96 px: not shrunk
  assert small.scale == 1.0 and small.boxes
  (f, x, y, s), (_, x0, y0, s0) = ms.input_boxes()[0], small.input_boxes()[0]
  assert f == 1 and abs(x - 10 * x0) <= 25 and abs(y - 10 * y0) <= 25 and abs(s - 10 * s0) <= 40, (x, y, s, x0, y0, s0)
  fake = sp.MotionSignal(np.zeros(3), np.zeros(3), 30.0, 1, 1, True, [(1, 10, 20, 30)], scale=0.5)
  assert fake.input_boxes() == [(1, 20, 40, 60)]
