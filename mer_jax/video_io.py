"""Reading and writing clips: a video file or a folder of frames <-> float32 [T, H, W, C] RGB in [0, 1].

* :func:`read_clip` reads a video file (anything OpenCV's FFmpeg backend opens: .mp4, .avi, ...) or a folder of
  frames (.jpg/.jpeg/.png/.bmp, natural order: img2 before img10). Channels: a folder whose frames are *all*
  single-channel (8/16-bit grey, e.g. SAMM) gives C = 1; otherwise C = 3 (grey frames in a colour folder are
  replicated). Video files always give C = 3 (OpenCV decodes to BGR). Alpha channels are dropped; 16-bit
  images are scaled by 1/65535. Returns (frames, fps); fps is None for a folder (the datasets publish it).
* :func:`write_clip` writes a video file (.mp4: mp4v, .avi: MJPG, .mkv/.mov: mp4v) or, for any other path, a
  folder of PNG frames ``frame_00001.png`` ...
* :func:`write_strip` writes a before/after PNG strip of a few frames (like the paper's Figure 2).

Every failure a user can cause raises :class:`mer_jax.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mer_jax.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v", ".m4v": "mp4v"}


def natural_key(name: str):
  """Sort key that orders embedded numbers numerically (img2 < img10), case-insensitively."""
  return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_frames(folder: str | os.PathLike) -> list[Path]:
  """Image files of a frame folder in natural order."""
  folder = Path(folder)
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
  return sorted(files, key=lambda p: natural_key(p.name))


def _to_float(img: np.ndarray, path) -> np.ndarray:
  if img.dtype == np.uint8:
    return img.astype(np.float32) / 255.0
  if img.dtype == np.uint16:
    return img.astype(np.float32) / 65535.0
  if np.issubdtype(img.dtype, np.floating):
    return np.clip(img.astype(np.float32), 0.0, 1.0)
  raise DataError(f"{path}: unsupported pixel type {img.dtype}; expected 8/16-bit images")


def read_image(path: str | os.PathLike) -> np.ndarray:
  """One image -> float32 [H, W, 1] (grey) or [H, W, 3] (RGB) in [0, 1]."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: image file not found")
  img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if img is None or img.size == 0:
    raise DataError(f"{path}: cannot decode the image (corrupt or not an image); replace or remove it")
  if img.ndim == 2:
    img = img[..., None]
  elif img.shape[2] == 4:
    img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
  elif img.shape[2] == 3:
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  else:
    raise DataError(f"{path}: unsupported number of channels {img.shape[2]}")
  return _to_float(img, path)


def _read_folder(folder: Path) -> np.ndarray:
  files = list_frames(folder)
  if not files:
    raise DataError(f"{folder}: no frames found (expected {', '.join(IMAGE_EXTS)} files)")
  frames = [read_image(f) for f in files]
  h, w = frames[0].shape[:2]
  for f, img in zip(files, frames):
    if img.shape[:2] != (h, w):
      raise DataError(
        f"{f}: frame size {img.shape[1]}x{img.shape[0]} differs from the first frame "
        f"{files[0].name} ({w}x{h}); all frames of a clip must have the same size"
      )
  channels = 1 if all(img.shape[2] == 1 for img in frames) else 3
  if channels == 3:
    frames = [np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img for img in frames]
  return np.stack(frames).astype(np.float32)


def _read_video(path: Path) -> tuple[np.ndarray, float | None]:
  cap = cv2.VideoCapture(str(path))
  try:
    if not cap.isOpened():
      raise DataError(f"{path}: cannot open the video (unknown format or corrupt file)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
      ok, frame = cap.read()
      if not ok:
        break
      frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
  finally:
    cap.release()
  if not frames:
    raise DataError(f"{path}: the video has no readable frames (corrupt or empty file)")
  return np.stack(frames), (float(fps) if fps and fps > 0 and np.isfinite(fps) else None)


def read_clip(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
  """A video file or a frame folder -> (frames float32 [T, H, W, C] RGB (C = 3) or grey (C = 1) in [0, 1], fps).

  fps is None for a frame folder or a video without a frame-rate tag.
  """
  path = Path(path)
  if path.is_dir():
    return _read_folder(path), None
  if not path.exists():
    raise DataError(f"{path}: no such video file or frame folder")
  if path.suffix.lower() in IMAGE_EXTS:
    raise DataError(f"{path}: is a single image; pass the folder that holds the clip's frames")
  return _read_video(path)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
  return np.round(np.clip(np.asarray(frames, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _to_bgr(img_u8: np.ndarray) -> np.ndarray:
  """[H, W, C] RGB/grey uint8 -> what cv2 writes (BGR, or 2-D grey)."""
  if img_u8.shape[2] == 1:
    return img_u8[..., 0]
  return cv2.cvtColor(img_u8, cv2.COLOR_RGB2BGR)


def write_clip(frames: np.ndarray, path: str | os.PathLike, fps: float | None = None) -> Path:
  """Writes float32 [T, H, W, C] in [0, 1] to a video file (by extension) or a folder of PNG frames.

  Video files need ``fps``. Returns the path written.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise DataError(f"{path}: frames must be [T, H, W, C] with C = 1 or 3, got {frames.shape}")
  path = Path(path)
  data = _to_uint8(frames)
  ext = path.suffix.lower()
  if ext in VIDEO_FOURCC:
    if not fps or fps <= 0:
      raise DataError(f"{path}: writing a video file needs the frame rate (fps)")
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, c = data.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC[ext]), float(fps), (w, h), c == 3)
    if not writer.isOpened():
      raise DataError(f"{path}: OpenCV cannot write this video format here; use .avi or a frame folder")
    try:
      for img in data:
        writer.write(_to_bgr(img))
    finally:
      writer.release()
    return path
  if ext in IMAGE_EXTS:
    raise DataError(
      f"{path}: an output clip is a video file ({', '.join(VIDEO_FOURCC)}) or a folder, not a single image"
    )
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"{path}: cannot create the output folder ({e.strerror})") from None
  digits = max(5, len(str(len(data))))
  for i, img in enumerate(data, start=1):
    out = path / f"frame_{i:0{digits}d}.png"
    if not cv2.imwrite(str(out), _to_bgr(img)):
      raise DataError(f"{out}: cannot write the frame")
  return path


def strip_image(
  before: np.ndarray, after: np.ndarray, num: int = 4, indices: Sequence[int] | None = None
) -> np.ndarray:
  """[T, H, W, C] x 2 -> uint8 [2H + gap, num * W + gaps, C]: top row before, bottom row after."""
  before, after = np.asarray(before), np.asarray(after)
  if before.shape != after.shape:
    raise ValueError(f"before {before.shape} and after {after.shape} differ")
  t = before.shape[0]
  if indices is None:
    indices = np.unique(np.linspace(0, t - 1, min(num, t)).round().astype(int))
  gap = 4
  rows = []
  for clip in (before, after):
    tiles = []
    for i in indices:
      tiles.append(_to_uint8(clip[i]))
      tiles.append(np.full((clip.shape[1], gap, clip.shape[3]), 255, np.uint8))
    rows.append(np.concatenate(tiles[:-1], axis=1))
  sep = np.full((gap,) + rows[0].shape[1:], 255, np.uint8)
  return np.concatenate([rows[0], sep, rows[1]], axis=0)


def write_strip(
  before: np.ndarray, after: np.ndarray, path: str | os.PathLike, num: int = 4, indices: Sequence[int] | None = None
) -> Path:
  """Writes :func:`strip_image` to a PNG file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), _to_bgr(strip_image(before, after, num, indices))):
    raise DataError(f"{path}: cannot write the PNG strip")
  return path
