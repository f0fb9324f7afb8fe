"""From a reader's :class:`~mer_jax.data.types.Sample` to the network's input image.

Micro-expression clips (paper Sections 3.2 and 4.1.2), :func:`preprocess_clip`:

1. take the frames onset..offset (the "sampled multi-frame images");
2. find one face box for the clip on the onset frame (:mod:`mer_jax.data.face`;
   ``data.face_crop``); no face -> warning + centre square (or an error);
3. choose the apex (:mod:`mer_jax.data.apex`; ``data.apex``), on the original frames;
4. when ``evm.enabled``, magnify the face region of these onset..offset frames at the
   frames' native resolution with :func:`mer_jax.evm.magnify_from_config` (every
   ``config.evm`` field applies);
5. take the (magnified) apex frame, crop it to the box and resize it to ``image_size``;
6. give it ``channels`` channels (grey sets such as SAMM are replicated to 3).

Order (``evm.order``). "paper" (the default) is the paper's order: magnify, take the
apex, then crop and rescale. "fast" crops and resizes every frame to ``image_size``
first and magnifies that small clip; it is cheaper but NOT equivalent: the Laplacian
level a spatial frequency lands in, and so its gain under the ``lambda_c`` rule
(:func:`mer_jax.evm.motion_level_alphas`), depends on the frame size. A 448-px face
whose texture shifts 0.5 px (CDE settings, configs/cde.py) keeps only 0.76, 0.47 and
0.23 of the apex change of the native-resolution magnification at 4, 8 and 14 texture
cycles per face with "fast" (tests/test_preprocess.py measures it). A config without
``evm.order`` (written before the key existed, e.g. an old checkpoint's) is
preprocessed in the order it was trained with: "fast". Cost: "paper" took 2.4x
the time of "fast" per CASME II-sized clip (reading, detection, apex, EVM; 640x480,
~70 frames, 340-450 px faces; benchmarks/preprocess_bench.py, benchmarks/RESULTS.md).

Working sizes, so that the jitted EVM does not compile once per clip ("paper"):

* Space: face boxes differ in size. The magnified region is the face box grown, from
  the surrounding frame, to a *working size*: the smallest value of the geometric
  series round(2^(j / SIZE_STEPS_PER_OCTAVE)) that is at least the box side and gives
  the same number of pyramid levels (else the largest size that does). The face keeps
  its native pixels (no resampling before EVM); only the frame diagonal that the
  ``lambda_c`` rule reads grows, by at most 2^(1/8) = 9 %. Where the frame is too
  small, the region is completed by mirroring (the pyramid's own edge rule). The box
  is cut out of the magnified region afterwards. ``data.face_crop=False`` magnifies
  the whole frame at its size (one size per dataset).
* Time: the recursive filters (``butterworth``, ``iir``) are causal, so the apex frame
  depends only on frames onset..apex: those are magnified, padded to a length of the
  series round(2^(j / LENGTH_STEPS_PER_OCTAVE)) by repeating the apex frame (frames
  before the pad are unchanged: tests/test_preprocess.py). The ideal (FFT) filter is
  not causal: it gets the exact onset..offset frames (one compilation per clip length
  and working size).

Macro images (:func:`preprocess_image`): face crop + resize (+ channels).
FER-2013 (48x48 face crops) and RAF-DB's ``aligned`` images are already face
crops, so no detection runs on them (:data:`PRE_CROPPED`).

Every image comes out float32 [S, S, channels] in [0, 1].

Frequency-resolution trap: with the ideal temporal filter, a clip of T frames
at fps has FFT bins every fps/T Hz; the paper's 0.1-0.4 Hz band holds a bin only
when T/fps >= 2.5 s (a 0.3 s CASME II clip has bins every 3.3 Hz, none in band).
``evm.on_empty_band`` decides what :mod:`mer_jax.evm` does (error / fallback);
here the error is re-raised naming the clip, and fallback warnings are re-issued
naming the clip (category :class:`PreprocessWarning`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional

import cv2
import numpy as np

from mer_jax.data import apex as apex_lib
from mer_jax.data import face as face_lib
from mer_jax.data.types import MACRO_DATASETS, Sample
from mer_jax.errors import ConfigError, DataError, EVMError

PRE_CROPPED = ("fer2013", "rafdb")  # images that are already face crops: no detection
MIN_EVM_FRAMES = 3  # fewer onset..offset frames than this cannot be band-passed
ORDERS = ("paper", "fast")  # evm.order: magnify at native resolution first | crop + resize first
LEGACY_ORDER = "fast"  # the order of configs without evm.order (written before the key existed)
SIZE_STEPS_PER_OCTAVE = 8  # working sizes of the magnified face region: round(2^(j / 8)) px
LENGTH_STEPS_PER_OCTAVE = 4  # padded lengths for the causal filters: round(2^(j / 4)) frames
CAUSAL_FILTERS = ("butterworth", "iir")


class PreprocessWarning(UserWarning):
  """Something in one sample's preprocessing that the user should know (e.g. the EVM empty-band fallback)."""


@dataclasses.dataclass
class Notes:
  """What happened to one sample (collected into the build summary)."""

  name: str = ""
  box: Optional[face_lib.FaceBox] = None
  face_found: Optional[bool] = None  # None: no detection ran
  apex: Optional[int] = None  # in the sample's frame numbering
  apex_rule: str = ""
  evm: bool = False
  warnings: list = dataclasses.field(default_factory=list)


def _data_opt(config, key: str, default):
  d = config.data if "data" in config else {}
  try:
    return d.get(key, default)
  except AttributeError:
    return default


def face_options(config) -> tuple[bool, float, str]:
  """(face_crop, margin, on_no_face) from ``config.data``.

  ``data.face_margin`` and ``data.on_no_face`` are optional keys (defaults
  :data:`mer_jax.data.face.DEFAULT_MARGIN` and "fallback").
  """
  return (
    bool(_data_opt(config, "face_crop", True)),
    float(_data_opt(config, "face_margin", face_lib.DEFAULT_MARGIN)),
    str(_data_opt(config, "on_no_face", "fallback")),
  )


def _fix_channels(image: np.ndarray, channels: int, name: str) -> np.ndarray:
  """[H, W, C] -> [H, W, channels]: grey replicated to 3, RGB to luminance for 1."""
  c = image.shape[-1]
  if c == channels:
    return image
  if c == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if c == 3 and channels == 1:
    return (0.299 * image[..., :1] + 0.587 * image[..., 1:2] + 0.114 * image[..., 2:3]).astype(np.float32)
  raise ConfigError(f"{name}: cannot turn a {c}-channel image into {channels} channels (config channels)")


def _as_float_image(image: np.ndarray) -> np.ndarray:
  """uint8/uint16/float [H, W] or [H, W, C] -> float32 [H, W, C] in [0, 1]."""
  img = np.asarray(image)
  if img.dtype == np.uint8:
    img = img.astype(np.float32) / 255.0
  elif img.dtype == np.uint16:
    img = img.astype(np.float32) / 65535.0
  else:
    img = img.astype(np.float32)
  if img.ndim == 2:
    img = img[..., None]
  return img


def _finish(frame: np.ndarray, box, config, name: str) -> np.ndarray:
  size = int(config.image_size)
  out = face_lib.crop_and_resize(frame, box, size)
  out = _fix_channels(out, int(config.get("channels", 3)), name)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def preprocess_image(
  image: np.ndarray, config, *, name: str = "image", detect: bool = True, notes: Optional[Notes] = None
) -> np.ndarray:
  """A macro-expression image -> float32 [S, S, channels] in [0, 1].

  image: [H, W, C] or [H, W], uint8 or float in [0, 1].
  detect: False skips face detection (images that are already face crops).
  """
  img = _as_float_image(image)
  face_crop, margin, on_no_face = face_options(config)
  box = None
  if face_crop and detect:
    box = face_lib.image_face_box(img, margin=margin, on_no_face=on_no_face, name=name)
  if notes is not None:
    notes.name, notes.box = name, box
    notes.face_found = None if box is None else box.detected
  return _finish(img, box, config, name)


def magnify(
  video: np.ndarray,
  fps: float,
  evm_config,
  *,
  name: str = "clip",
  notes: Optional[Notes] = None,
  num_frames: Optional[int] = None,
  only: Optional[int] = None,
) -> np.ndarray:
  """mer_jax.evm.magnify_from_config with the clip's name on its errors and warnings.

  Args:
    video: [T, H, W, C] float32 in [0, 1].
    fps: frames per second.
    evm_config: the ``evm`` config section.
    name: how messages refer to the clip.
    notes: collects the warnings.
    num_frames: the clip's onset..offset length for messages (default T; differs when ``video`` is the
      onset..apex part, padded).
    only: return only this frame.

  Returns:
    float32 [T, H, W, C], or [H, W, C] with ``only``.
  """
  from mer_jax import evm  # imported here: JAX start-up is only paid when EVM runs

  n = video.shape[0] if num_frames is None else int(num_frames)
  own = _empty_band_fallback(video.shape[0], float(fps), evm_config)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      out = evm.magnify_from_config(np.asarray(video, np.float32), float(fps), evm_config)
    except EVMError as e:
      raise EVMError(f"{name} ({n} frames onset..offset at {fps:g} fps, {n / fps:.3f} s): {e}") from e
  # mer_jax.evm warns while tracing, i.e. only for the first clip of each shape; the empty-band
  # fallback is therefore detected here for every clip.
  msgs = [own] if own else []
  msgs += [str(w.message) for w in caught if not (own and "empty passband" in str(w.message))]
  for m in msgs:
    msg = f"{name}: {m}"
    if notes is not None:
      notes.warnings.append(msg)
    warnings.warn(msg, PreprocessWarning, stacklevel=3)
  out = np.asarray(out)
  return np.array(out[only] if only is not None else out, np.float32)


def _empty_band_fallback(num_frames: int, fps: float, evm_config) -> str:
  """The fallback message when the ideal filter has no bin in the band and on_empty_band='fallback', else ''."""
  import importlib

  from mer_jax.evm import filters

  evm_magnify = importlib.import_module("mer_jax.evm.magnify")  # the module (the package exports the function)
  if (
    str(evm_config.get("temporal_filter", "ideal")) != "ideal"
    or str(evm_config.get("on_empty_band", "error")) != "fallback"
  ):
    return ""
  try:
    band = tuple(float(f) for f in evm_config.freq_band)
    bins, _ = filters.ideal_bin_gains(num_frames, fps, band, bool(evm_config.get("mit_compatible", False)))
  except (TypeError, ValueError):
    return ""  # a malformed band: mer_jax.evm raises the ConfigError
  if bins.size:
    return ""
  return (
    f"{evm_magnify.empty_band_message(num_frames, fps, band)} Falling back to temporal_filter="
    f"'{evm_magnify.FALLBACK_FILTER}' on the same band (onset-referenced)."
  )


def clip_order(evm_config) -> str:
  """``evm.order`` ("paper" | "fast"); configs without the key get :data:`LEGACY_ORDER`."""
  order = evm_config.get("order", LEGACY_ORDER) if hasattr(evm_config, "get") else LEGACY_ORDER
  if order not in ORDERS:
    raise ConfigError(
      f"evm.order must be one of {ORDERS}, got {order!r} (paper: magnify at native resolution, "
      "then take the apex and resize; fast: resize to image_size first)"
    )
  return str(order)


def geometric_bucket(n: int, steps_per_octave: int) -> int:
  """The smallest value of the series round(2^(j / steps_per_octave)), j = 0, 1, ..., that is >= ``n``."""
  n = int(n)
  if n <= 1:
    return 1
  j = max(0, math.floor(steps_per_octave * math.log2(n)) - 1)
  while round(2.0 ** (j / steps_per_octave)) < n:
    j += 1
  return int(round(2.0 ** (j / steps_per_octave)))


def _pyramid_levels(side: int, evm_config) -> Optional[int]:
  """Levels mer_jax.evm would use for side x side frames with these settings (None: too small / invalid)."""
  from mer_jax.evm import pyramids

  try:
    return pyramids.check_levels(
      side, side, evm_config.get("levels", "auto"), str(evm_config.get("pyramid", "laplacian"))
    )
  except (TypeError, ValueError):
    return None


def work_size(side: int, evm_config) -> int:
  """The working size (px) of a face box of ``side`` px for the "paper" order.

  The smallest value of round(2^(j / SIZE_STEPS_PER_OCTAVE)) that is >= ``side`` and gives the same number of
  pyramid levels as ``side`` (so the per-level gains only see a diagonal at most 2^(1/8) larger); where the
  next series value has more levels, the largest size with the same number (the top of that level range).
  Boxes too small for a pyramid keep their size (mer_jax.evm reports them).
  """
  side = int(side)
  levels = _pyramid_levels(side, evm_config)
  if levels is None:
    return side
  b = geometric_bucket(side, SIZE_STEPS_PER_OCTAVE)
  if _pyramid_levels(b, evm_config) == levels:
    return b
  lo, hi = side, b  # levels(lo) == levels, levels(hi) != levels; levels grow with the side
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if _pyramid_levels(mid, evm_config) == levels:
      lo = mid
    else:
      hi = mid
  return lo


def work_length(apex_index: int, num_frames: int, evm_config) -> tuple[int, int]:
  """(frames used, padded length) of the onset..offset clip for the "paper" order.

  Causal filters (butterworth, iir): the frames onset..apex, padded to a length of the series
  round(2^(j / LENGTH_STEPS_PER_OCTAVE)) (at least MIN_EVM_FRAMES). The ideal filter: all frames, no padding.
  """
  if str(evm_config.get("temporal_filter", "ideal")) in CAUSAL_FILTERS:
    used = int(apex_index) + 1
    return used, max(geometric_bucket(used, LENGTH_STEPS_PER_OCTAVE), MIN_EVM_FRAMES)
  return int(num_frames), int(num_frames)


def _axis_window(start: int, size: int, want: int, full: int) -> tuple[int, int, int, int, int]:
  """One axis of the working region: (lo, hi, pad_before, pad_after, offset).

  frames[lo:hi] mirrored by (pad_before, pad_after) is ``want`` long and holds [start, start + size) at
  ``offset``; centred on it, shifted to stay inside the frame, mirrored only where the frame is too short.
  """
  if want <= full:
    lo = min(max(start - (want - size) // 2, 0), full - want)
    return lo, lo + want, 0, 0, start - lo
  before = (want - full) // 2
  return 0, full, before, want - full - before, before + start


def _magnified_apex_paper(
  clip: np.ndarray,
  box: Optional[face_lib.FaceBox],
  apex_index: int,
  fps: float,
  config,
  name: str,
  notes: Optional[Notes],
) -> np.ndarray:
  """ "paper" order: magnify the face region at native resolution, take the apex, crop the box.

  clip: [T, H, W, C] onset..offset. Returns the magnified apex face [s, s, C] (box) or [H, W, C] (no box),
  before the resize to image_size.
  """
  evm_config = config.evm
  t, h, w = clip.shape[:3]
  used, length = work_length(apex_index, t, evm_config)
  if box is None:
    region, (oy, ox), (sh, sw) = clip[:used], (0, 0), (h, w)
  else:
    b = work_size(box.size, evm_config)
    y0, y1, py0, py1, oy = _axis_window(box.y, box.size, b, h)
    x0, x1, px0, px1, ox = _axis_window(box.x, box.size, b, w)
    region, sh, sw = clip[:used, y0:y1, x0:x1], box.size, box.size
    if py0 or py1 or px0 or px1:
      region = np.pad(region, ((0, 0), (py0, py1), (px0, px1), (0, 0)), mode="reflect")
  if length > used:  # causal filters: repeats of the apex frame change no earlier frame
    region = np.concatenate([region, np.repeat(region[-1:], length - used, axis=0)])
  out = magnify(region, fps, evm_config, name=name, notes=notes, num_frames=t, only=apex_index)
  return out[oy : oy + sh, ox : ox + sw]


def preprocess_clip(
  frames: np.ndarray,
  fps: Optional[float],
  *,
  onset: Optional[int],
  apex: Optional[int],
  offset: Optional[int],
  config,
  name: str = "clip",
  notes: Optional[Notes] = None,
) -> np.ndarray:
  """A micro-expression clip -> its (magnified) apex face, float32 [S, S, channels] in [0, 1].

  With EVM the "paper" order magnifies the face region at native resolution
  (grown to a working size, onset..apex padded to a working length for the causal
  filters; see the module docstring), the "fast" order the 112-px face crops.

  Args:
    frames: [T, H, W, C] float32 in [0, 1] (C = 1 or 3).
    fps: frames per second (needed when ``config.evm.enabled``).
    onset: index into ``frames`` (None: 0).
    apex: index into ``frames`` (None: from ``config.data.apex``'s rule).
    offset: index into ``frames`` (None: T-1).
    config: the ml-collections config (image_size, channels, evm.* including
      evm.order, data.apex, data.face_crop, data.face_margin, data.on_no_face).
    name: how messages refer to this clip.
    notes: optional :class:`Notes`, filled with what happened to this clip (face box, apex, warnings).

  Returns:
    float32 [S, S, channels] in [0, 1], S = ``config.image_size``.

  Raises:
    DataError: bad frames or onset/offset, a clip too short for EVM or without a frame rate, no face with
      ``data.on_no_face="error"``; EVMError / ConfigError: EVM settings that cannot run on this clip.
  """
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[..., None]
  if frames.ndim != 4:
    raise DataError(f"{name}: expected frames [T, H, W, C], got shape {frames.shape}")
  frames = _as_float_image(frames) if frames.dtype != np.float32 else frames
  T = frames.shape[0]
  onset = 0 if onset is None else int(onset)
  offset = T - 1 if offset is None else int(offset)
  if not (0 <= onset <= offset < T):
    raise DataError(
      f"{name}: onset {onset} / offset {offset} do not fit a clip of {T} frames "
      "(check the label file's onset/offset columns)"
    )
  clip = frames[onset : offset + 1]
  evm_on = bool(config.evm.enabled)
  if evm_on:
    if len(clip) < MIN_EVM_FRAMES:
      raise DataError(
        f"{name}: clip too short for EVM: onset..offset is {len(clip)} frame(s) ({onset}..{offset}); "
        f"the temporal filter needs at least {MIN_EVM_FRAMES}. Fix the onset/offset, set "
        "data.skip_bad_samples=True to skip such clips, or evm.enabled=False"
      )
    if not fps or fps <= 0:
      raise DataError(f"{name}: EVM needs the clip's frame rate, but fps is {fps!r}")
  face_crop, margin, on_no_face = face_options(config)
  box = face_lib.clip_face_box(clip, onset=0, margin=margin, on_no_face=on_no_face, name=name) if face_crop else None
  mode = str(_data_opt(config, "apex", "annotated"))
  ap, how = apex_lib.choose_apex(mode, onset=onset, offset=offset, annotated=apex, frames=clip, box=box, name=name)
  if notes is not None:
    notes.name, notes.box, notes.apex, notes.apex_rule, notes.evm = name, box, ap, how, evm_on
    notes.face_found = None if box is None else box.detected
  size = int(config.image_size)
  if evm_on and clip_order(config.evm) == "paper":
    apex_face = face_lib.resize(_magnified_apex_paper(clip, box, ap - onset, float(fps), config, name, notes), size)
  elif evm_on:  # "fast": crop and resize every frame first, then magnify
    faces = np.stack([face_lib.crop_and_resize(f, box, size) for f in clip])  # [T, S, S, C]
    apex_face = magnify(faces, float(fps), config.evm, name=name, notes=notes, only=ap - onset)
  else:  # without EVM only the apex frame is needed
    apex_face = face_lib.crop_and_resize(clip[ap - onset], box, size)
  out = _fix_channels(apex_face, int(config.get("channels", 3)), name)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def read_frame(path: str) -> np.ndarray:
  """One image file -> float32 [H, W, C] in [0, 1], RGB (C = 3) or grey (C = 1)."""
  img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if img is None:
    import os

    what = "does not exist" if not os.path.exists(path) else "is not a readable image (corrupt or unknown format)"
    raise DataError(
      f"frame {path} {what}; restore the file from the dataset, or set data.skip_bad_samples=True to skip this sample"
    )
  if img.ndim == 3:
    if img.shape[-1] == 4:
      img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[-1] == 3:
      img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  return _as_float_image(img)


def read_frames(paths) -> np.ndarray:
  """Image files of one clip -> float32 [T, H, W, C]; all frames must have the same size."""
  frames = [read_frame(p) for p in paths]
  if not frames:
    raise DataError("no frame files to read")
  c = max(f.shape[-1] for f in frames)
  frames = [np.repeat(f, c, axis=-1) if f.shape[-1] != c else f for f in frames]
  shapes = {f.shape for f in frames}
  if len(shapes) > 1:
    raise DataError(f"frames of one clip have different sizes {sorted(shapes)}: {paths[0]} .. {paths[-1]}")
  return np.stack(frames)


def sample_name(sample: Sample) -> str:
  parts = [sample.dataset, sample.subject, sample.clip_id]
  return "/".join(p for p in parts if p)


def is_micro(sample: Sample) -> bool:
  return sample.dataset not in MACRO_DATASETS


def preprocess_sample(sample: Sample, config, *, notes: Optional[Notes] = None) -> np.ndarray:
  """Load a reader's sample from disk and preprocess it -> float32 [S, S, channels] in [0, 1].

  Micro clips: only onset..offset frames are read, then :func:`preprocess_clip`.
  Images: FER-2013 ``pixels`` or the one frame (CK+: the annotated apex, else the
  last frame = the peak), then :func:`preprocess_image`.
  """
  name = sample_name(sample)
  if is_micro(sample):
    n = len(sample.frame_paths)
    if n == 0:
      raise DataError(f"{name}: the sample lists no frames ({sample.source_row or 'label file'})")
    onset = 0 if sample.onset is None else sample.onset
    offset = n - 1 if sample.offset is None else sample.offset
    if not (0 <= onset <= offset < n):
      raise DataError(
        f"{name}: onset {onset} / offset {offset} do not fit the {n} frames found "
        f"({sample.source_row or 'label file'}); check the onset/offset columns"
      )
    frames = read_frames(sample.frame_paths[onset : offset + 1])
    ap = None if sample.apex is None else sample.apex - onset
    out = preprocess_clip(
      frames, sample.fps, onset=0, apex=ap, offset=offset - onset, config=config, name=name, notes=notes
    )
    if notes is not None and notes.apex is not None:
      notes.apex += onset  # back to the sample's frame numbering
    return out
  if sample.pixels is not None:
    image = np.asarray(sample.pixels)
  else:
    if not sample.frame_paths:
      raise DataError(f"{name}: the sample has neither pixels nor an image file")
    idx = (
      sample.apex
      if sample.apex is not None
      else (sample.offset if sample.offset is not None else len(sample.frame_paths) - 1)
    )
    image = read_frame(sample.frame_paths[idx])
  out = preprocess_image(image, config, name=name, detect=sample.dataset not in PRE_CROPPED, notes=notes)
  return out


def settings_from_config(config) -> dict[str, Any]:
  """Every setting that changes the preprocessed images, as a JSON-able dict (cache keys use it)."""
  face_crop, margin, on_no_face = face_options(config)
  evm_cfg = config.evm.to_dict() if hasattr(config.evm, "to_dict") else dict(config.evm)
  evm_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(evm_cfg.items())}
  evm_cfg["order"] = clip_order(config.evm)  # explicit, also for configs without the key
  return {
    "image_size": int(config.image_size),
    "channels": int(config.get("channels", 3)),
    "face_crop": face_crop,
    "face_margin": margin,
    "on_no_face": on_no_face,
    "apex": str(_data_opt(config, "apex", "annotated")),
    "evm": evm_cfg,
  }
