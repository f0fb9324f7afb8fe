"""Face localisation with OpenCV's Haar frontal-face cascade (paper Section 4.1.2).

The paper crops "the face region ... by the functionality offered by OpenCV's
face recognition algorithm". We use the Viola-Jones frontal-face cascade that
ships with opencv-python (``cv2.data.haarcascades``):

* **One box per clip.** The box is detected on the *onset* frame and reused for
  every frame of the clip, so the crop does not jitter from frame to frame (the
  micro-motion we want to magnify is far smaller than the detector's jitter).
  If the onset frame has no detection, a few other frames of the clip are tried
  (the first hit is used for the whole clip).
* **Largest detection wins** (the datasets show one subject per frame).
* **Margin.** Haar boxes are tight (eyebrows to upper lip/chin); the box is grown
  by ``margin`` (default :data:`DEFAULT_MARGIN` = 0.1, i.e. 10 % of the box side)
  on every side, made square, and shifted/clipped to stay inside the frame.
* **No face.** The fallback is the centred square of side ``min(H, W)``; a
  :class:`FaceWarning` names the clip. ``on_no_face="error"`` raises a
  :class:`mer_jax.errors.DataError` instead.

Boxes are ``(x, y, w, h)`` in pixels of the frame they were found in.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Optional, Sequence

import cv2
import numpy as np

from mer_jax.errors import ConfigError, DataError

DEFAULT_MARGIN = 0.1
CASCADE_FILE = "haarcascade_frontalface_default.xml"
# Detector settings (cv2.CascadeClassifier.detectMultiScale).
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_FACE_FRACTION = 0.2  # ignore detections smaller than 20 % of min(H, W)
NO_FACE_POLICIES = ("fallback", "error")


class FaceWarning(UserWarning):
  """A clip or image where no face was found and the centre-square fallback was used."""


@dataclasses.dataclass(frozen=True)
class FaceBox:
  """A square crop box ``(x, y, size)`` in pixels and how it was obtained.

  ``detected`` is False for the centre-square fallback; ``frame`` is the index
  (into the frames passed to :func:`clip_face_box`) where the face was found.
  """

  x: int
  y: int
  size: int
  detected: bool
  frame: int = 0

  def crop(self, image: np.ndarray) -> np.ndarray:
    """[..., H, W, C] -> [..., size, size, C] (works on a frame or a whole clip)."""
    return image[..., self.y : self.y + self.size, self.x : self.x + self.size, :]


@functools.lru_cache(maxsize=None)
def _cascade() -> "cv2.CascadeClassifier":
  path = cv2.data.haarcascades + CASCADE_FILE
  c = cv2.CascadeClassifier(path)
  if c.empty():
    raise DataError(f"could not load OpenCV's Haar cascade {path}; reinstall opencv-python-headless")
  return c


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W, C] or [H, W] float in [0, 1] (or uint8) -> [H, W] uint8 luminance."""
  img = np.asarray(image)
  if img.dtype != np.uint8:
    img = np.clip(np.rint(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
  if img.ndim == 3:
    if img.shape[-1] == 1:
      img = img[..., 0]
    else:
      img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
  return img


def detect_faces(image: np.ndarray) -> np.ndarray:
  """All Haar frontal-face detections in one frame.

  image: [H, W, C] or [H, W], float in [0, 1] or uint8.
  Returns an int array [K, 4] of (x, y, w, h), largest first (K may be 0).
  """
  gray = cv2.equalizeHist(to_gray_uint8(image))
  h, w = gray.shape
  min_side = max(24, int(MIN_FACE_FRACTION * min(h, w)))
  if min(h, w) < 24:
    return np.zeros((0, 4), np.int32)
  boxes = _cascade().detectMultiScale(
    gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(min_side, min_side)
  )
  boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
  order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")
  return boxes[order]


def square_box(box: Sequence[int], frame_hw: tuple[int, int], margin: float) -> tuple[int, int, int]:
  """(x, y, w, h) -> square (x, y, size) grown by ``margin`` per side, inside the frame.

  The square is centred on the box centre; if it sticks out of the frame it is
  shifted back in, and if it is larger than the frame it is shrunk to min(H, W).
  """
  x, y, w, h = (float(v) for v in box)
  H, W = frame_hw
  side = max(w, h) * (1.0 + 2.0 * margin)
  size = int(round(min(side, H, W)))
  cx, cy = x + w / 2.0, y + h / 2.0
  x0 = int(round(cx - size / 2.0))
  y0 = int(round(cy - size / 2.0))
  x0 = min(max(x0, 0), W - size)
  y0 = min(max(y0, 0), H - size)
  return x0, y0, size


def centre_square(frame_hw: tuple[int, int]) -> tuple[int, int, int]:
  """The fallback crop: the centred square of side min(H, W)."""
  H, W = frame_hw
  size = min(H, W)
  return (W - size) // 2, (H - size) // 2, size


def _check_policy(on_no_face: str) -> None:
  if on_no_face not in NO_FACE_POLICIES:
    raise ConfigError(f"on_no_face={on_no_face!r}: expected one of {NO_FACE_POLICIES}")


def clip_face_box(
  frames: np.ndarray,
  *,
  onset: int = 0,
  margin: float = DEFAULT_MARGIN,
  on_no_face: str = "fallback",
  name: str = "clip",
  extra_tries: int = 4,
) -> FaceBox:
  """One face box for a whole clip, from its onset frame.

  frames: [T, H, W, C] (or [T, H, W]) float in [0, 1] or uint8.
  onset: index of the onset frame in ``frames``; detection runs there first,
    then on up to ``extra_tries`` other frames evenly spread over the clip.
  name: how messages refer to the clip (e.g. "casme2/sub01/EP02_01f").
  Returns a square :class:`FaceBox`; with no detection anywhere, the centre
  square (``detected=False``) and a :class:`FaceWarning`, or a DataError when
  ``on_no_face == "error"``.
  """
  _check_policy(on_no_face)
  if margin < 0:
    raise ConfigError(f"face margin must be >= 0, got {margin}")
  frames = np.asarray(frames)
  T = frames.shape[0]
  if T == 0:
    raise DataError(f"{name}: no frames to detect a face in")
  hw = tuple(frames.shape[1:3])
  onset = int(min(max(onset, 0), T - 1))
  candidates = [onset]
  if extra_tries > 0 and T > 1:
    for t in np.linspace(0, T - 1, extra_tries + 2).round().astype(int)[1:-1].tolist() + [T - 1]:
      if t not in candidates:
        candidates.append(int(t))
  for t in candidates:
    boxes = detect_faces(frames[t])
    if len(boxes):
      x, y, s = square_box(boxes[0], hw, margin)
      return FaceBox(x, y, s, detected=True, frame=t)
  msg = (
    f"{name}: OpenCV's Haar frontal-face cascade found no face (tried frames {candidates} of {T}, size {hw[1]}x{hw[0]})"
  )
  if on_no_face == "error":
    raise DataError(
      msg + "; set data.on_no_face='fallback' to use the centre-square crop, "
      "or data.face_crop=False to skip face cropping"
    )
  warnings.warn(msg + "; using the centred square crop instead", FaceWarning, stacklevel=2)
  x, y, s = centre_square(hw)
  return FaceBox(x, y, s, detected=False, frame=onset)


def image_face_box(
  image: np.ndarray, *, margin: float = DEFAULT_MARGIN, on_no_face: str = "fallback", name: str = "image"
) -> FaceBox:
  """:func:`clip_face_box` for a single image [H, W, C]."""
  return clip_face_box(np.asarray(image)[None], onset=0, margin=margin, on_no_face=on_no_face, name=name, extra_tries=0)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] float32 -> [size, size, C] float32 (area interpolation when shrinking, cubic when
  enlarging; clipped to [0, 1])."""
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image.copy()
  interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
  out = cv2.resize(image, (size, size), interpolation=interp)
  if out.ndim == 2:
    out = out[..., None]
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def crop_and_resize(image: np.ndarray, box: Optional[FaceBox], size: int) -> np.ndarray:
  """[H, W, C] -> [size, size, C] float32: crop to ``box`` (None = whole frame) and resize."""
  if box is not None:
    image = box.crop(image)
  return resize(image, size)
