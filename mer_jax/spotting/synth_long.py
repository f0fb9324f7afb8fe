"""SynthME long videos: the CAS(ME)^2 and SAMM Long Videos layouts with expressions at known frames.

Numbers any spotter gets on these videos say nothing about real spotting: they exist to run readers,
spotters and ``python -m mer_jax.spot_eval`` end to end without licensed data.

What it draws. Each subject is a SynthME identity (:func:`mer_jax.data.synth.make_identity`, grey for
SAMM-LV); each video lasts ``seconds`` at the dataset's real frame rate (30 fps CAS(ME)^2, 200 fps
SAMM-LV) and holds micro- and macro-expressions at known frames, with blinks and head motion between
them as distractors:

* micro-expressions: 9-17 frames at 30 fps, 30-100 frames at 200 fps (the ranges of the releases),
  raised-cosine intensity (:func:`mer_jax.data.synth.intensity_profile`), peak AU displacement
  ``micro_amplitude`` px at a 112-px face (default 0.5-1.5);
* macro-expressions: 0.6-2 s, peak 4-8 px;
* blinks: 0.1-0.3 s, lids closing to 95 %;
* head motion: a slow sway (0.2 px) over the whole video plus head moves, smooth shifts of 1.5-4 px
  and up to 2 degrees of roll over 0.3-0.6 s;
* sensor noise per frame and the identity's fixed-pattern noise.

Expressions, blinks and head moves never overlap one another, so every frame's motion has one cause.

Annotation files are written exactly in the official formats (:mod:`mer_jax.spotting.readers`),
including the releases' quirks, so the readers' repairs are exercised:

* CAS(ME)^2: ``CAS(ME)^2code_final.xlsx`` (sheet 1 without header, "naming rule1", "naming rule2"),
  frames ``rawpic/s15/15_0401<stimulus>/img001.jpg``; every third macro-expression is written with
  offset 0 (read back as offset := apex).
* SAMM-LV: ``SAMM_LongVideos_V2_Release.xlsx``, sheet ``FACS_Movement_Only`` with the header on row 10,
  frames ``SAMM_longvideos/006_1/006_1_00001.jpg`` (grey); the first micro-expression is written with
  apex -1, and the first video starts with a macro-expression at frame 1 written with onset 0.

``synthme_long_manifest.json`` holds every interval's true frames, what was written, and the
distractors; readers ignore it. Output is byte-identical for the same arguments.

CLI: ``python -m mer_jax.spotting.synth_long --layout cas_long|samm_lv|all --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np

from mer_jax.data import synth
from mer_jax.errors import ConfigError, run_cli
from mer_jax.spotting.readers import CAS_LONG, CAS_XLSX, FPS, SAMM_LV, SAMM_SHEET

LAYOUTS = (CAS_LONG, SAMM_LV)
MANIFEST = "synthme_long_manifest.json"
SAMM_XLSX = "SAMM_LongVideos_V2_Release.xlsx"
DEFAULT_SECONDS = {CAS_LONG: 20.0, SAMM_LV: 12.0}
DEFAULT_FRAME_SIZE = 96

# Durations in frames (lo, hi) at each dataset's fps.
MICRO_FRAMES = {CAS_LONG: (9, 17), SAMM_LV: (30, 100)}
MACRO_SECONDS = (0.6, 2.0)
BLINK_SECONDS = (0.1, 0.3)
HEAD_MOVE_SECONDS = (0.3, 0.6)
MIN_GAP_SECONDS = 0.15

# CAS(ME)^2-style videos (code, name, stimulus word) of the synthetic naming rule2 sheet.
CAS_VIDEOS = (
  ("0101", "disgust1", "teethclip"),
  ("0102", "disgust2", "handclip"),
  ("0401", "anger1", "shoutclip"),
  ("0402", "anger2", "crashclip"),
  ("0502", "happy2", "danceclip"),
  ("0503", "happy3", "jokeclip"),
)
CAS_EMOTIONS = ("negative", "positive", "surprise", "others")
SAMM_EMOTIONS = ("happiness", "surprise", "anger", "contempt", "disgust", "fear", "sadness", "other")


@dataclasses.dataclass
class _Event:
  kind: str  # 'micro' | 'macro' | 'blink' | 'head'
  start: int  # 1-based frame number
  n: int  # frames
  apex: int = 0  # index inside the event
  emotion: str = ""
  aus: Optional[dict] = None
  amplitude: float = 0.0  # px at a 112-px face (expressions); px shift (head)
  shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # head move dx, dy (px), roll (deg)

  @property
  def end(self) -> int:
    return self.start + self.n - 1


def _plan(
  layout: str,
  rng: np.random.Generator,
  total: int,
  micro: int,
  macro: int,
  blinks: int,
  head_moves: int,
  micro_amp,
  macro_amp,
  start_with_macro: bool,
  video: str,
) -> list[_Event]:
  """Places the events of one video without overlap; gaps of at least MIN_GAP_SECONDS between them."""
  fps = FPS[layout]
  events = []
  for _ in range(micro):
    n = int(rng.integers(MICRO_FRAMES[layout][0], MICRO_FRAMES[layout][1] + 1))
    events.append(_Event("micro", 0, n, amplitude=float(rng.uniform(*micro_amp))))
  for _ in range(macro):
    n = int(round(rng.uniform(*MACRO_SECONDS) * fps))
    events.append(_Event("macro", 0, n, amplitude=float(rng.uniform(*macro_amp))))
  for _ in range(blinks):
    events.append(_Event("blink", 0, max(3, int(round(rng.uniform(*BLINK_SECONDS) * fps)))))
  for _ in range(head_moves):
    roll = float(rng.uniform(-2, 2))
    ang = rng.uniform(0, 2 * np.pi)
    amp = float(rng.uniform(1.5, 4.0))
    events.append(
      _Event(
        "head",
        0,
        max(3, int(round(rng.uniform(*HEAD_MOVE_SECONDS) * fps))),
        amplitude=amp,
        shift=(amp * math.cos(ang), amp * math.sin(ang), roll),
      )
    )
  order = list(rng.permutation(len(events)))
  if start_with_macro and macro:
    first_macro = micro  # index of the first macro event
    order.remove(first_macro)
    order.insert(0, first_macro)
  events = [events[i] for i in order]
  min_gap = int(math.ceil(MIN_GAP_SECONDS * fps))
  busy = sum(e.n for e in events)
  n_gaps = len(events) + 1
  free = total - busy - n_gaps * min_gap
  if free < 0:
    need = (busy + n_gaps * min_gap) / fps
    raise ConfigError(
      f"SynthME long video {video}: {len(events)} events need at least {need:.1f} s at "
      f"{fps:g} fps; raise seconds or lower the number of intervals per video"
    )
  gaps = min_gap + np.floor(rng.dirichlet(np.ones(n_gaps)) * free).astype(int)
  if start_with_macro and macro:
    gaps[0] = 0
  pos = 1
  for e, g in zip(events, gaps):
    e.start = pos + int(g)
    pos = e.end + 1
  for e in events:
    if e.kind in ("micro", "macro"):
      e.apex = int(round((e.n - 1) * rng.uniform(0.35, 0.6)))
      pool = CAS_EMOTIONS if layout == CAS_LONG else SAMM_EMOTIONS
      e.emotion = str(pool[int(rng.integers(len(pool)))])
      e.aus = synth.expression_aus(e.emotion, rng)
  return events


def render_video(
  ident: synth.Identity,
  events: list[_Event],
  total: int,
  *,
  frame_size: int,
  rng: np.random.Generator,
  noise_scale: float = 1.0,
):
  """Yields the ``total`` frames (uint8 [H, W] grey or [H, W, 3] BGR) of one long video."""
  base = synth.View(
    cx=frame_size / 2 + rng.uniform(-2, 2),
    cy=frame_size / 2 + rng.uniform(-1, 3),
    half_width=frame_size * rng.uniform(0.28, 0.31),
  )
  sway_period = rng.uniform(4, 9)
  peaks = {id(e): synth.displacements(e.aus, e.amplitude) for e in events if e.aus is not None}
  profiles = {id(e): synth.intensity_profile(e.n, e.apex) for e in events if e.aus is not None}
  fps_frames = max(total - 1, 1)
  for f in range(1, total + 1):
    disp: dict = {}
    blink = 0.0
    dx = dy = roll = 0.0
    for e in events:
      if e.kind == "head":
        p = float(np.clip((f - e.start) / max(e.n - 1, 1), 0.0, 1.0))
        w = 0.5 * (1 - math.cos(math.pi * p))
        dx, dy, roll = dx + e.shift[0] * w, dy + e.shift[1] * w, roll + e.shift[2] * w
      elif e.start <= f <= e.end:
        i = f - e.start
        if e.kind == "blink":
          half = (e.n - 1) / 2
          blink = 0.95 * max(0.0, 1.0 - abs(i - half) / max(half, 1))
        else:
          a = profiles[id(e)][i]
          for lm, v in peaks[id(e)].items():
            disp[lm] = disp.get(lm, 0.0) + v * a
    t = (f - 1) / fps_frames
    sway = 0.2 * math.sin(2 * math.pi * t * sway_period)
    view = dataclasses.replace(base, cx=base.cx + dx + sway, cy=base.cy + dy + 0.5 * sway, angle=roll)
    yield synth.render(
      ident, view, disp, size=(frame_size, frame_size), rng=rng, blink=blink, noise=ident.noise * noise_scale
    )


def _progress(quiet: bool):
  state = {"t": 0.0}

  def tick(done: int, total: int, what: str) -> None:
    now = time.monotonic()
    if not quiet and (done == total or now - state["t"] > 2.0):
      state["t"] = now
      print(f"  {what}: {done}/{total}", file=sys.stderr, flush=True)

  return tick


def generate_long(
  layout: str,
  out_dir: str,
  *,
  seed: int = 0,
  subjects: int = 2,
  videos_per_subject: int = 2,
  seconds: Optional[float] = None,
  micro_per_video: int = 3,
  macro_per_video: int = 2,
  blinks_per_video: int = 3,
  head_moves_per_video: int = 2,
  frame_size: int = DEFAULT_FRAME_SIZE,
  micro_amplitude: tuple[float, float] = (0.5, 1.5),
  macro_amplitude: tuple[float, float] = (4.0, 8.0),
  noise_scale: float = 1.0,
  frames: bool = True,
  quiet: bool = True,
) -> str:
  """Writes SynthME long videos in the ``layout`` (cas_long | samm_lv) into ``out_dir``.

  Args:
    layout: CAS_LONG or SAMM_LV.
    out_dir: a new or empty folder; it becomes the dataset folder.
    seed: everything is a function of it (byte-identical output).
    subjects / videos_per_subject: how many (CAS(ME)^2 at most 6 videos per subject).
    seconds: video length (default 20 s CAS(ME)^2, 12 s SAMM-LV).
    micro_per_video / macro_per_video / blinks_per_video / head_moves_per_video: events per video.
    frame_size: frames are frame_size x frame_size px.
    micro_amplitude / macro_amplitude: peak AU displacement range, px at a 112-px face.
    noise_scale: multiplies each subject's sensor-noise sigma.
    frames: False writes the annotation file and the manifest only (no images).
    quiet: no progress on stderr.
  Returns:
    ``out_dir`` (the folder to point the readers at).
  """
  import openpyxl

  if layout not in LAYOUTS:
    raise ConfigError(f"unknown SynthME long-video layout {layout!r}; expected one of {', '.join(LAYOUTS)} or all")
  for name, v in (("subjects", subjects), ("videos_per_subject", videos_per_subject), ("frame_size", frame_size)):
    if v < 1:
      raise ConfigError(f"SynthME long videos: {name} must be >= 1, got {v}")
  for name, v in (
    ("micro_per_video", micro_per_video),
    ("macro_per_video", macro_per_video),
    ("blinks_per_video", blinks_per_video),
    ("head_moves_per_video", head_moves_per_video),
  ):
    if v < 0:
      raise ConfigError(f"SynthME long videos: {name} must be >= 0, got {v}")
  if layout == CAS_LONG and videos_per_subject > len(CAS_VIDEOS):
    raise ConfigError(
      f"SynthME CAS(ME)^2 long videos: at most {len(CAS_VIDEOS)} videos per subject, got {videos_per_subject}"
    )
  fps = FPS[layout]
  seconds = DEFAULT_SECONDS[layout] if seconds is None else seconds
  total = int(round(seconds * fps))
  os.makedirs(out_dir, exist_ok=True)
  if os.listdir(out_dir):
    raise ConfigError(f"SynthME output folder {out_dir} is not empty; choose a new folder")
  tick = _progress(quiet)
  rng_of = lambda *k: synth._rng(seed, "long", layout, *k)  # noqa: E731
  videos, rows = [], []
  macro_count = 0
  first_micro_done = False
  for si in range(subjects):
    if layout == CAS_LONG:
      subj_idx, subject = si + 1, f"s{15 + 2 * si}"
      vids = [
        CAS_VIDEOS[int(k)] for k in sorted(rng_of("videos", si).permutation(len(CAS_VIDEOS))[:videos_per_subject])
      ]
    else:
      subj_idx, subject = 6 + si, f"{6 + si:03d}"
      vids = [(str(k + 1), f"{subject}_{k + 1}", "") for k in range(videos_per_subject)]
    ident = synth.make_identity(rng_of("id", subject), grey=(layout == SAMM_LV))
    for code, vname, stim in vids:
      if layout == CAS_LONG:
        video = f"{int(subject[1:])}_{code}"
        folder = os.path.join("rawpic", subject, f"{video}{stim}")
        fname = lambda n: f"img{n:03d}.jpg"  # noqa: E731
      else:
        video = vname
        folder = os.path.join("SAMM_longvideos", video)
        fname = lambda n, v=video: f"{v}_{n:05d}.jpg"  # noqa: E731
      rng = rng_of("video", video)
      events = _plan(
        layout,
        rng,
        total,
        micro_per_video,
        macro_per_video,
        blinks_per_video,
        head_moves_per_video,
        micro_amplitude,
        macro_amplitude,
        start_with_macro=(layout == SAMM_LV and not videos),
        video=video,
      )
      if frames:
        d = os.path.join(out_dir, folder)
        os.makedirs(d, exist_ok=True)
        frame_rng = rng_of("frames", video)
        for n, img in enumerate(
          render_video(ident, events, total, frame_size=frame_size, rng=frame_rng, noise_scale=noise_scale), 1
        ):
          synth._imwrite(os.path.join(d, fname(n)), img, (1, 95))  # 1 == cv2.IMWRITE_JPEG_QUALITY
          tick(n, total, f"{layout} {video}")
      intervals = []
      k = 0
      for e in sorted((e for e in events if e.aus is not None), key=lambda e: e.start):
        k += 1
        onset, apex, offset = e.start, e.start + e.apex, e.end
        w_onset, w_apex, w_offset = onset, apex, offset
        if layout == CAS_LONG and e.kind == "macro":
          macro_count += 1
          if macro_count % 3 == 1:
            w_offset = 0
        if layout == SAMM_LV:
          if e.kind == "micro" and not first_micro_done:
            first_micro_done = True
            w_apex = -1
          if onset == 1:
            w_onset = 0
        name = f"{vname}_{k}"
        iv = {
          "name": name,
          "type": e.kind,
          "onset": onset,
          "apex": apex,
          "offset": offset,
          "written": {"onset": w_onset, "apex": w_apex, "offset": w_offset},
          "emotion": e.emotion,
          "aus": synth.au_text(e.emotion, e.aus),
          "amplitude_px_at_112": e.amplitude,
        }
        intervals.append(iv)
        rows.append((subj_idx, subject, vname, iv))
      videos.append(
        {
          "subject": subject,
          "video": video,
          "name": vname,
          "folder": folder,
          "fps": fps,
          "num_frames": total,
          "intervals": intervals,
          "blinks": [{"start": e.start, "end": e.end} for e in events if e.kind == "blink"],
          "head_moves": [
            {"start": e.start, "end": e.end, "dx_px": e.shift[0], "dy_px": e.shift[1], "roll_deg": e.shift[2]}
            for e in events
            if e.kind == "head"
          ],
        }
      )

  wb = openpyxl.Workbook()
  ws = wb.active
  if layout == CAS_LONG:
    ws.title = "Sheet1"
    for subj_idx, _subject, _vname, iv in rows:
      w = iv["written"]
      ws.append(
        [
          subj_idx,
          iv["name"],
          w["onset"],
          w["apex"],
          w["offset"],
          iv["aus"],
          iv["emotion"],
          f"{iv['type']}-expression",
          "synthetic",
        ]
      )
    r1 = wb.create_sheet("naming rule1")
    for si in range(subjects):
      r1.append([si + 1, f"s{15 + 2 * si}"])
    r2 = wb.create_sheet("naming rule2")
    for code, vname, _ in CAS_VIDEOS:
      r2.append([code, vname])
    path = os.path.join(out_dir, CAS_XLSX)
  else:
    ws.title = SAMM_SHEET
    ws.append(["SAMM Long Videos (SynthME stand-in): FACS coded movements"])
    for _ in range(8):
      ws.append([])
    ws.append(
      ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type", "Action Units", "Notes"]
    )
    for subj_idx, _subject, vname, iv in rows:
      w = iv["written"]
      ws.append(
        [
          subj_idx,
          iv["name"],
          int(vname.split("_")[1]),
          w["onset"],
          w["apex"],
          w["offset"],
          iv["offset"] - iv["onset"] + 1,
          "Micro - 1/2" if iv["type"] == "micro" else "Macro",
          iv["aus"],
          "",
        ]
      )
      ws.cell(row=ws.max_row, column=1).number_format = "000"
    path = os.path.join(out_dir, SAMM_XLSX)
  synth._save_xlsx_deterministic(wb, path)
  n_types = {t: sum(iv["type"] == t for v in videos for iv in v["intervals"]) for t in ("micro", "macro")}
  man = {
    "generator": "mer_jax.spotting.synth_long (SynthME long videos)",
    "layout": layout,
    "seed": seed,
    "note": "synthetic data: numbers on it say nothing about real spotting",
    "fps": fps,
    "frame_size": frame_size,
    "frames_written": frames,
    "annotation_file": os.path.basename(path),
    "n_videos": len(videos),
    "n_subjects": subjects,
    "n_intervals": n_types,
    "videos": videos,
  }
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(man, f, indent=1)
  return out_dir


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.spotting.synth_long", description=__doc__.split("\n\n")[0])
  ap.add_argument("--layout", required=True, choices=LAYOUTS + ("all",))
  ap.add_argument("--out", required=True, help="output folder (new or empty; 'all': one subfolder per layout)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--subjects", type=int, default=2)
  ap.add_argument("--videos-per-subject", type=int, default=2)
  ap.add_argument("--seconds", type=float, default=None, help="video length (default 20 CAS(ME)^2, 12 SAMM-LV)")
  ap.add_argument("--micro-per-video", type=int, default=3)
  ap.add_argument("--macro-per-video", type=int, default=2)
  ap.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE)
  ap.add_argument("--no-frames", action="store_true", help="write the annotation files only")
  ap.add_argument("--quiet", action="store_true")
  a = ap.parse_args(argv)
  layouts = LAYOUTS if a.layout == "all" else (a.layout,)
  for lay in layouts:
    out = os.path.join(a.out, lay) if a.layout == "all" else a.out
    generate_long(
      lay,
      out,
      seed=a.seed,
      subjects=a.subjects,
      videos_per_subject=a.videos_per_subject,
      seconds=a.seconds,
      micro_per_video=a.micro_per_video,
      macro_per_video=a.macro_per_video,
      frame_size=a.frame_size,
      frames=not a.no_frames,
      quiet=a.quiet,
    )
    print(f"{lay}: {out}")
  return 0


if __name__ == "__main__":
  run_cli(main)
