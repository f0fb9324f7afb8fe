"""Spot, then recognise: spot expressions in a video and classify each spotted micro-expression with a trained
mer_jax checkpoint.

    python -m mer_jax.analyse --checkpoint RUN_DIR --input VIDEO_OR_FRAME_FOLDER --out FILE [--fps N]
        [--format json|str] [--params PARAMS.json] [--types micro|all] [--video-name NAME] [--subject S] [--quiet]

Spotting is ``python -m mer_jax.spot`` (same input rules, ``--params`` and progress). Each spotted interval of the
chosen types (default: micro-expressions only) becomes a clip of its frames ``onset..offset``, which goes through
the checkpoint's preprocessing exactly as ``python -m mer_jax.predict`` does for a clip (face crop, apex spotting
inside the clip, EVM when the checkpoint was trained with it, resize), and the model gives class probabilities.
RUN_DIR is a run directory written by training (``<workdir>/finetune/folds/<fold_id>`` or ``<workdir>/pretrain``).

Output: the JSON of ``mer_jax.spot`` plus, on every classified prediction, ``label`` (also written as
``emotion``, so ``python -m mer_jax.spot_eval`` can compute STRS when the checkpoint's classes are the dataset's
emotions), ``probabilities`` ({class: p}), ``clip_apex`` (the frame the classifier took as apex, a frame number of
the video) and ``clip_face_found``; and ``checkpoint``, ``class_names`` at the top. ``--format str`` writes the
spot-then-recognise CSV instead: ``subject,video,onset,offset,emotion``, one line per classified micro-expression
(``--subject``, default the video name), which ``python -m mer_jax.spot_eval`` reads as micro-expressions.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from mer_jax import predict, spot, video_io
from mer_jax.errors import ConfigError, DataError, run_cli

TYPES = ("micro", "all")


def _interval_clips(path: str, intervals: list[tuple[int, int]]) -> list[np.ndarray]:
  """Frames ``onset..offset`` (1-based inclusive) of each interval as float32 [T, H, W, C] in [0, 1], read the way
  ``mer_jax.predict`` reads a clip (a folder: ``preprocess.read_frames``; a video: RGB / 255)."""
  from mer_jax.data import preprocess

  p = Path(path)
  if p.is_dir():
    files = video_io.list_frames(p)
    return [preprocess.read_frames([str(f) for f in files[on - 1 : off]]) for on, off in intervals]
  wanted = {n for on, off in intervals for n in range(on, off + 1)}
  got: dict[int, np.ndarray] = {}
  cap = cv2.VideoCapture(str(p))
  try:
    n = 0
    last = max(wanted, default=0)
    while n < last:
      ok, frame = cap.read()
      if not ok:
        break
      n += 1
      if n in wanted:
        got[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
  finally:
    cap.release()
  missing = sorted(wanted - set(got))
  if missing:
    raise DataError(
      f"{path}: frame {missing[0]} could not be read again for classification (the video changed "
      "or cannot be decoded consistently); convert it to a frame folder and pass --fps"
    )
  return [np.stack([got[n] for n in range(on, off + 1)]) for on, off in intervals]


def analyse(
  checkpoint_dir: str,
  input_path: str,
  *,
  fps: Optional[float] = None,
  params=None,
  types: str = "micro",
  batch_size: int = 32,
  quiet: bool = True,
  video: Optional[str] = None,
) -> dict:
  """Spots ``input_path`` and classifies the spotted intervals (module docstring).

  Args:
    checkpoint_dir: a run directory written by training.
    input_path: a video file or a frame folder.
    fps: frame rate (required for a folder).
    params: :class:`mer_jax.spotting.spotter.SpotParams` (default settings when None).
    types: 'micro' (classify micro-expressions only) or 'all'.
    batch_size: clips per jitted inference call.
    quiet: no progress on stderr.
    video: the video name written in each prediction (default: the input's name).
  Returns:
    The ``mer_jax.spot`` result with ``checkpoint``, ``class_names`` and, per classified prediction,
    ``label``, ``emotion``, ``probabilities``, ``clip_apex``, ``clip_face_found``.
  """
  from mer_jax.data import preprocess
  from mer_jax.models import build_model
  from mer_jax.spotting import spotter as sp

  if types not in TYPES:
    raise ConfigError(f"--types {types!r}: use one of {', '.join(TYPES)}")
  config, variables, class_names = predict.resolve_checkpoint(checkpoint_dir)
  cfg = predict.inference_config(config, "spot")
  result = spot.spot_file(input_path, fps=fps, params=params or sp.SpotParams(), quiet=quiet, video=video)
  chosen = [q for q in result["predictions"] if types == "all" or q["type"] == "micro"]
  result.update(checkpoint=os.path.abspath(checkpoint_dir), class_names=list(class_names))
  if not chosen:
    return result
  clips = _interval_clips(input_path, [(q["onset"], q["offset"]) for q in chosen])
  images = []
  for q, frames in zip(chosen, clips):
    notes = preprocess.Notes()
    name = f"{input_path} frames {q['onset']}-{q['offset']}"
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      images.append(
        preprocess.preprocess_clip(
          frames, result["fps"], onset=None, apex=None, offset=None, config=cfg, name=name, notes=notes
        )
      )
    q["clip_apex"] = None if notes.apex is None else q["onset"] + int(notes.apex)
    q["clip_face_found"] = notes.face_found
  from mer_jax.train.loop import predict_probs
  from mer_jax.train.state import model_apply

  probs = predict_probs(model_apply(build_model(cfg.model)), variables, np.stack(images), batch_size)
  for q, pr in zip(chosen, probs):
    k = int(np.argmax(pr))
    q.update(label=class_names[k], emotion=class_names[k], probabilities={c: float(v) for c, v in zip(class_names, pr)})
  return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.analyse", description=__doc__.split("\n\n")[0])
  ap.add_argument("--checkpoint", required=True, help="run directory written by training")
  ap.add_argument("--input", required=True, help="video file or frame folder")
  ap.add_argument("--fps", type=float, default=None, help="frame rate (required for a frame folder)")
  ap.add_argument("--out", required=True, help="output file")
  ap.add_argument(
    "--format",
    choices=("json", "str"),
    default="json",
    help="json (default, everything) or str: subject,video,onset,offset,emotion per classified micro-expression",
  )
  ap.add_argument("--params", default=None, help="JSON file of spotter parameters (e.g. spot_bench's params)")
  ap.add_argument("--types", choices=TYPES, default="micro", help="which spotted intervals to classify")
  ap.add_argument("--video-name", default=None, help="video name in the output (default: the input's name)")
  ap.add_argument("--subject", default=None, help="subject column of --format str (default: the video name)")
  ap.add_argument("--quiet", action="store_true")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  a = parse_args(argv)
  params = spot.load_params(a.params)
  spot.check_out(a.out)
  result = analyse(a.checkpoint, a.input, fps=a.fps, params=params, types=a.types, quiet=a.quiet, video=a.video_name)
  spot.write_result(result, a.out, a.format, subject=a.subject)
  for q in result["predictions"]:
    lab = f"  {q['label']} ({q['probabilities'][q['label']]:.2f})" if "label" in q else ""
    print(f"{q['video']} {q['type']:5s} {q['onset']}-{q['offset']} ({q['onset_s']:.2f}-{q['offset_s']:.2f} s){lab}")
  print(f"-> {a.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  run_cli(main)
