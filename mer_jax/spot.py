"""Spot micro- and macro-expressions in a video of a face (training-free optical-flow spotter).

    python -m mer_jax.spot --input VIDEO_OR_FRAME_FOLDER [--fps N] --out FILE [--format json|megc|str]
        [--params PARAMS.json] [--video-name NAME] [--checkpoint RUN_DIR [--subject S]] [--quiet]

The input is a video file (anything OpenCV's FFmpeg backend opens: .mp4, .avi, .mov ...) or a folder of frames
(.jpg/.png/.bmp in natural order: img2 before img10; ``--fps`` required). Any length: frames are streamed, only
the last ``hold_seconds`` (0.9 s) of grey frames are held. ``--params`` takes a JSON object of
:class:`mer_jax.spotting.spotter.SpotParams` fields, or the ``params.json`` that ``python -m mer_jax.spot_bench``
writes (the setting chosen on all of a dataset's subjects); without it the defaults are used, which were not
tuned on any data. Nothing is spotted where no face is tracked or across a shot cut (stderr says where).

Output (``--format json``, default): ``{"input", "video", "fps", "num_frames", "face_found", "face_frames",
"face_absent", "cuts", "face_boxes", "params", "predictions": [{"video", "onset", "apex", "offset", "onset_s",
"apex_s", "offset_s", "type", "score"}]}`` with 1-based inclusive frame numbers, seconds from the first frame
(``(frame - 1) / fps``), type ``micro`` (at most 0.5 s) or ``macro``; ``face_absent`` lists the frame ranges
without a tracked face, ``cuts`` the first frames of new shots, ``face_boxes`` the face detections
``[frame, x, y, size]`` (square boxes in the input's pixels, about one a second). ``--format megc``: CSV
``vid,pred_onset,pred_offset,type,score`` with type ``me`` / ``mae`` (the MEGC submission columns). With
``--checkpoint`` each spotted micro-expression is also classified (what ``python -m mer_jax.analyse`` does), and
``--format str`` writes the spot-then-recognise CSV ``subject,video,onset,offset,emotion`` (micro-expressions
only). All three are read by ``python -m mer_jax.spot_eval``.

Progress goes to stderr every 2 s (``--quiet`` turns it off). Bad input is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from mer_jax import reporting, video_io
from mer_jax.errors import ConfigError, DataError, run_cli
from mer_jax.spotting import spotter as sp

FORMATS = ("json", "megc", "str")
STR_COLUMNS = ("subject", "video", "onset", "offset", "emotion")


def load_params(path: Optional[str]) -> sp.SpotParams:
  """SpotParams from a JSON file (a SpotParams object, or ``{"params": {...}}``); defaults for None."""
  if path is None:
    return sp.SpotParams()
  if not os.path.isfile(path):
    raise ConfigError(
      f"--params {path}: no such file; give a JSON file of spotter parameters "
      "(e.g. the params.json written by python -m mer_jax.spot_bench)"
    )
  try:
    with open(path) as f:
      d = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"--params {path} is not valid JSON ({e})") from None
  if isinstance(d, dict) and isinstance(d.get("params"), dict):
    d = d["params"]
  if not isinstance(d, dict):
    raise ConfigError(f"--params {path}: expected a JSON object of spotter parameters")
  return sp.SpotParams.from_dict(d, where=f"--params {path}")


def open_input(path: str, fps: Optional[float]) -> tuple[Iterator[np.ndarray], float, Optional[int]]:
  """(frame iterator (uint8 BGR / grey frames), fps, number of frames or None) of a video file or frame folder."""
  p = Path(path)
  if fps is not None and not (fps > 0 and math.isfinite(fps)):
    raise ConfigError(f"--fps {fps}: must be a positive number (the video's frame rate)")
  if p.is_dir():
    files = video_io.list_frames(p)
    if not files:
      raise DataError(f"{p}: no frames found (expected {', '.join(video_io.IMAGE_EXTS)} files)")
    if fps is None:
      raise ConfigError(f"{p} is a frame folder: give its frame rate with --fps (e.g. --fps 30)")

    def frames() -> Iterator[np.ndarray]:
      for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
          raise DataError(f"{f}: cannot decode the image (corrupt or not an image); replace or remove it")
        if img.dtype != np.uint8:
          img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 4:
          img = img[..., :3]
        yield img

    return frames(), float(fps), len(files)
  if not p.exists():
    raise DataError(f"{p}: no such video file or frame folder")
  if p.suffix.lower() in video_io.IMAGE_EXTS:
    raise DataError(f"{p}: is a single image; pass a video file or the folder that holds the frames")
  cap = cv2.VideoCapture(str(p))
  if not cap.isOpened():
    cap.release()
    raise DataError(f"{p}: cannot open the video (unknown format or corrupt file)")
  tag = cap.get(cv2.CAP_PROP_FPS)
  count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
  if fps is None:
    if not (tag and tag > 0 and math.isfinite(tag)):
      cap.release()
      raise ConfigError(f"{p}: the video has no frame-rate tag; give it with --fps")
    fps = float(tag)

  def frames() -> Iterator[np.ndarray]:
    try:
      while True:
        ok, frame = cap.read()
        if not ok:
          break
        yield frame
    finally:
      cap.release()

  return frames(), float(fps), count


def _progress(quiet: bool):
  state = {"t0": time.monotonic(), "last": time.monotonic()}

  def tick(done: int, total: Optional[int]) -> None:
    now = time.monotonic()
    if quiet or now - state["last"] < 2.0:
      return
    state["last"] = now
    rate = done / max(now - state["t0"], 1e-9)
    left = f", about {int((total - done) / max(rate, 1e-9))} s left" if total and total > done else ""
    of = f"/{total}" if total else ""
    print(f"spot: {done}{of} frames ({rate:.0f} frames/s{left})", file=sys.stderr, flush=True)

  return tick


def spot_file(
  path: str,
  *,
  fps: Optional[float] = None,
  params: sp.SpotParams = sp.SpotParams(),
  video: Optional[str] = None,
  quiet: bool = True,
) -> dict:
  """Spots one video file or frame folder.

  Args:
    path: video file or frame folder.
    fps: frame rate (required for a folder; overrides the video's tag).
    params: spotter settings.
    video: the name written in each prediction (default: the file / folder name without extension).
    quiet: no progress on stderr.
  Returns:
    The JSON result (module docstring).
  """
  params.validate()
  frames, fps, count = open_input(path, fps)
  name = video or Path(path.rstrip("/")).stem
  ms = sp.motion_signal(frames, fps, params, num_frames=count, progress=_progress(quiet), name=path)
  n = len(ms.signal)
  if n == 0:
    raise DataError(f"{path}: no readable frames (corrupt or empty file)")
  if n < ms.k + 2:
    raise DataError(
      f"{path}: {n} frames; the spotter compares each frame with the one {ms.k} frames earlier "
      f"(k_seconds={params.k_seconds} at {fps:g} fps), so it needs at least {ms.k + 2} frames"
    )
  absent = ms.face_absent()
  if not ms.face_found:
    print(
      f"warning: {path}: OpenCV's Haar frontal-face cascade found no face in any tested frame; nothing was "
      "spotted (the spotter measures motion inside a face)",
      file=sys.stderr,
    )
  elif absent or ms.cuts:
    gone = sum(b - a + 1 for a, b in absent)
    print(
      f"note: {path}: no face tracked in {gone} of {n} frames ({_ranges(absent, fps)})"
      + (f"; shot cut(s) at frame(s) {', '.join(map(str, ms.cuts))}" if ms.cuts else "")
      + "; nothing is spotted without a face or across a cut",
      file=sys.stderr,
    )
  intervals = sp.intervals_of(ms, params)
  return {
    "input": os.path.abspath(path),
    "video": name,
    "fps": fps,
    "num_frames": n,
    "face_found": ms.face_found,
    "face_frames": int(ms.face.sum()) if ms.face is not None else n,
    "face_absent": [list(r) for r in absent],
    "cuts": list(ms.cuts),
    "face_boxes": [list(b) for b in ms.input_boxes()],
    "params": params.as_dict(),
    "predictions": sp.iter_intervals(intervals, name, fps),
  }


def _ranges(ranges: Sequence[tuple[int, int]], fps: float, most: int = 4) -> str:
  """'frames 1-30 (0.00-0.97 s), ...' for at most ``most`` ranges."""
  if not ranges:
    return "none"
  txt = [f"{a}-{b} ({(a - 1) / fps:.2f}-{(b - 1) / fps:.2f} s)" for a, b in ranges[:most]]
  more = f" and {len(ranges) - most} more" if len(ranges) > most else ""
  return "frames " + ", ".join(txt) + more


def check_out(out: str) -> None:
  """DataError unless the folder of the output file ``out`` exists (checked before any work)."""
  d = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(d):
    raise DataError(f"--out {out}: folder {d} does not exist; create it first")


def write_result(result: dict, out: str, fmt: str, subject: Optional[str] = None) -> None:
  """Writes ``result`` as JSON, MEGC CSV or STR CSV (module docstring).

  ``str`` needs classified predictions (``mer_jax.analyse``): one line per classified micro-expression,
  ``subject,video,onset,offset,emotion``; ``subject`` defaults to the video name.
  """
  check_out(out)
  if fmt == "json":
    text = json.dumps(result, indent=1)
  else:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if fmt == "megc":
      w.writerow(["vid", "pred_onset", "pred_offset", "type", "score"])
      for p in result["predictions"]:
        w.writerow([p["video"], p["onset"], p["offset"], "me" if p["type"] == "micro" else "mae", p["score"]])
    elif fmt == "str":
      w.writerow(STR_COLUMNS)
      for p in result["predictions"]:
        if p["type"] == "micro" and "emotion" in p:
          w.writerow([subject or p["video"], p["video"], p["onset"], p["offset"], p["emotion"]])
    else:
      raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    text = buf.getvalue()
  reporting.atomic_write_text(out, text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.spot", description=__doc__.split("\n\n")[0])
  ap.add_argument("--input", required=True, help="video file or frame folder")
  ap.add_argument("--fps", type=float, default=None, help="frame rate (required for a frame folder)")
  ap.add_argument("--out", required=True, help="output file")
  ap.add_argument(
    "--format",
    choices=FORMATS,
    default="json",
    help="json (default); megc: vid,pred_onset,pred_offset,type,score; str: subject,video,onset,offset,emotion "
    "(spot-then-recognise: needs --checkpoint)",
  )
  ap.add_argument("--params", default=None, help="JSON file of spotter parameters (e.g. spot_bench's params.json)")
  ap.add_argument("--video-name", default=None, help="video name in the output (default: the input's name)")
  ap.add_argument("--subject", default=None, help="subject column of --format str (default: the video name)")
  ap.add_argument(
    "--checkpoint",
    default=None,
    help="run directory of a trained model: classify each spotted micro-expression (as python -m mer_jax.analyse)",
  )
  ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  a = parse_args(argv)
  if a.format == "str" and a.checkpoint is None:
    raise ConfigError(
      "--format str writes subject,video,onset,offset,emotion: the emotion of each spotted micro-expression "
      "needs a trained model; add --checkpoint RUN_DIR (or use python -m mer_jax.analyse --format str)"
    )
  params = load_params(a.params)
  check_out(a.out)
  if a.checkpoint is not None:
    from mer_jax import analyse

    result = analyse.analyse(a.checkpoint, a.input, fps=a.fps, params=params, quiet=a.quiet, video=a.video_name)
  else:
    result = spot_file(a.input, fps=a.fps, params=params, video=a.video_name, quiet=a.quiet)
  write_result(result, a.out, a.format, subject=a.subject)
  kinds = {t: sum(p["type"] == t for p in result["predictions"]) for t in ("micro", "macro")}
  print(
    f"{result['video']}: {result['num_frames']} frames at {result['fps']:g} fps, {kinds['micro']} micro- and "
    f"{kinds['macro']} macro-expression interval(s) -> {a.out}"
  )
  return 0


if __name__ == "__main__":
  run_cli(main)
