"""Classify micro-expression clips with a trained checkpoint.

  python -m mer_jax.predict --checkpoint RUN_DIR --input CLIP [--fps F] [--json]

RUN_DIR is a run directory written by training (``<workdir>/pretrain`` or
``<workdir>/finetune/folds/<fold_id>``); its config decides the preprocessing.
CLIP is a video file, a folder of frame images (one clip, frames in natural
name order: img2 before img10), a single image, or a folder holding many clips
(video files and/or frame folders), which are all classified in one batched,
jitted pass.

Each clip goes through the training pipeline (:func:`mer_jax.data.preprocess.preprocess_clip`):
face crop, apex spotting (``--apex spot``; there is no annotation for a new
clip), EVM when the checkpoint was trained with it, resize. Prints one line of
class probabilities per clip, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from mer_jax.errors import DataError, UserError, run_cli

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
APEX_CHOICES = ("spot", "middle")
NO_FACE_CHOICES = ("fallback", "error")
NO_FACE_MARK = "NO FACE FOUND (centre crop: not a face result)"


def _natural_key(name: str) -> list:
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _images_in(folder: str) -> list[str]:
  names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
  return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def discover_inputs(path: str) -> list[tuple[str, str]]:
  """(kind, path) for every clip ``path`` names; kind is "video", "frames" or "image".

  A file is a video or a single image; a folder with image files is one clip; a
  folder without any holds many clips (its video files and frame sub-folders).
  """
  if not os.path.exists(path):
    raise DataError(f"--input {path} does not exist")
  if os.path.isfile(path):
    low = path.lower()
    if low.endswith(VIDEO_EXTS):
      return [("video", path)]
    if low.endswith(IMAGE_EXTS):
      return [("image", path)]
    raise DataError(f"--input {path}: not a video ({', '.join(VIDEO_EXTS)}) or image file")
  if _images_in(path):
    return [("frames", path)]
  found = []
  for name in sorted(os.listdir(path), key=_natural_key):
    p = os.path.join(path, name)
    if name.startswith("."):
      continue
    if os.path.isfile(p) and name.lower().endswith(VIDEO_EXTS):
      found.append(("video", p))
    elif os.path.isdir(p) and _images_in(p):
      found.append(("frames", p))
  if not found:
    raise DataError(
      f"--input {path}: no frame images, video files or frame folders found in it "
      f"(images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})"
    )
  return found


def load_clip(kind: str, path: str, fps: Optional[float]) -> tuple[np.ndarray, Optional[float]]:
  """-> (frames float32 [T, H, W, C] in [0, 1], fps or None). ``fps`` overrides the file's."""
  from mer_jax.data import preprocess

  if kind == "video":
    from mer_jax import video_io

    frames, file_fps = video_io.read_clip(path)
    return np.asarray(frames, np.float32), (fps or file_fps)
  if kind == "frames":
    return preprocess.read_frames(_images_in(path)), fps
  return preprocess.read_frame(path)[None], fps


def resolve_checkpoint(path: str):
  """``load_for_inference(path)`` with a pointer to the run directories when given a workdir."""
  from mer_jax.train import checkpoint

  if not os.path.isdir(path):
    raise UserError(f"--checkpoint {path} is not a directory")
  try:
    config, variables, class_names = checkpoint.load_for_inference(path)
    check_weights_match_config(config, variables, path)
    return config, variables, class_names
  except UserError:
    folds = os.path.join(path, "finetune", "folds")
    if os.path.isdir(folds):
      ids = sorted(os.listdir(folds), key=_natural_key)
      raise UserError(
        f"--checkpoint {path} is a benchmark workdir, not a run directory: pass one fold "
        f"(e.g. {os.path.join(folds, ids[0]) if ids else folds + '/<fold_id>'}; {len(ids)} "
        f"folds) or {os.path.join(path, 'pretrain')}"
      ) from None
    raise


def _shape_table(tree) -> dict:
  import jax

  return {
    "/".join(str(getattr(k, "key", k)) for k in p): tuple(int(d) for d in np.shape(x))
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def check_weights_match_config(config: Any, variables: dict, where: str) -> None:
  """Raises UserError when the stored weights are not those of the model ``config.model`` describes
  (a checkpoint written by another model config or code version, or a hand-edited metadata file)."""
  import jax

  from mer_jax.models import build_model, init_variables

  model = build_model(config.model)
  size, channels = int(config.image_size), int(config.get("channels", 3))
  want = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), size, channels))
  want_t, got_t = _shape_table(want), _shape_table({k: variables.get(k, {}) for k in want})
  if want_t == got_t:
    return
  missing = sorted(set(want_t) - set(got_t))
  extra = sorted(set(got_t) - set(want_t))
  differ = sorted(k for k in set(want_t) & set(got_t) if want_t[k] != got_t[k])
  if differ:
    k = differ[0]
    detail = f"{k} has shape {got_t[k]} in the checkpoint but {want_t[k]} in the model its config describes"
  elif missing:
    detail = f"{missing[0]} is missing from the checkpoint"
  else:
    detail = f"the checkpoint holds {extra[0]}, which the configured model does not have"
  raise UserError(
    f"{where}: the stored weights do not match the checkpoint's model config ({detail}; "
    f"{len(differ) + len(missing) + len(extra)} array(s) differ). The checkpoint was written by a different "
    "model config (model.* / image_size / channels) or code version; use the run directory these weights "
    "came from, or retrain"
  )


def inference_config(config: Any, apex: str = "spot", on_no_face: Optional[str] = None) -> Any:
  """A copy of a checkpoint's config for new clips: no apex annotation, so spot (or middle); what to do with a
  clip in which no face is found (``fallback``: centre crop, marked in the output; ``error``: stop; None: the
  checkpoint's own ``data.on_no_face``)."""
  import ml_collections

  if apex not in APEX_CHOICES:
    raise UserError(f"--apex {apex!r}: use one of {APEX_CHOICES}")
  if on_no_face is not None and on_no_face not in NO_FACE_CHOICES:
    raise UserError(f"--on-no-face {on_no_face!r}: use one of {NO_FACE_CHOICES}")
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.data.apex = apex
  if on_no_face is not None:
    cfg.data.on_no_face = on_no_face
  return cfg


def prepare_input(kind: str, path: str, config: Any, fps: Optional[float]) -> tuple[np.ndarray, dict]:
  """One clip -> (network input float32 [S, S, C], info dict: frames, fps, apex, face_found, notes)."""
  from mer_jax.data import preprocess

  frames, clip_fps = load_clip(kind, path, fps)
  info: dict = {"input": path, "kind": kind, "frames": int(frames.shape[0]), "fps": clip_fps}
  notes = preprocess.Notes()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if kind == "image" or frames.shape[0] == 1:
      image = preprocess.preprocess_image(frames[0], config, name=path, notes=notes)
    else:
      if config.evm.enabled and not clip_fps:
        raise DataError(
          f"{path}: the checkpoint was trained with EVM, which needs the frame rate; "
          "a frame folder has none - pass --fps (e.g. --fps 200 for CASME II / SAMM)"
        )
      image = preprocess.preprocess_clip(
        frames, clip_fps, onset=None, apex=None, offset=None, config=config, name=path, notes=notes
      )
  info.update(
    apex=notes.apex,
    apex_rule=notes.apex_rule or None,
    face_found=notes.face_found,
    evm=bool(notes.evm),
    warnings=[str(w.message) for w in caught],
  )
  return image, info


def predict(
  checkpoint_dir: str,
  input_path: str,
  *,
  fps: Optional[float] = None,
  apex: str = "spot",
  batch_size: int = 32,
  progress: bool = False,
  on_no_face: Optional[str] = None,
) -> dict:
  """Classifies every clip ``input_path`` names; see the module docstring.

  Args:
    checkpoint_dir: a run directory written by training.
    input_path: a video file, frame folder, image, or folder of clips.
    fps: frame rate (overrides a video's own; needed for frame folders when the model uses EVM).
    apex: how to pick the apex frame (``spot`` | ``middle``).
    batch_size: images per jitted inference call.
    progress: print preprocessing progress to stderr.
    on_no_face: ``fallback`` classifies a centre crop and marks the prediction (``face_found: false``);
      ``error`` raises a DataError naming the clip; None keeps the checkpoint's ``data.on_no_face``.

  Returns:
    {"checkpoint", "class_names", "predictions": [{"input", "label", "index", "probabilities": {class: p},
    "face_found", "frames", "fps", "apex", ...}]}; face_found is false where no face was detected (the
    probabilities then describe a centre crop, not a face), null where no detection ran.
  """
  from mer_jax.models import build_model

  if fps is not None and fps <= 0:
    raise UserError(f"--fps must be positive, got {fps}")
  config, variables, class_names = resolve_checkpoint(checkpoint_dir)
  cfg = inference_config(config, apex, on_no_face)
  inputs = discover_inputs(input_path)
  images, infos = [], []
  t0 = time.time()
  for i, (kind, path) in enumerate(inputs):
    image, info = prepare_input(kind, path, cfg, fps)
    images.append(image)
    infos.append(info)
    if progress and len(inputs) > 1:
      el = time.time() - t0
      eta = el / (i + 1) * (len(inputs) - i - 1)
      print(
        f"\rpreprocessed {i + 1}/{len(inputs)} clips ({el:.0f}s, ETA {eta:.0f}s)", end="", file=sys.stderr, flush=True
      )
  if progress and len(inputs) > 1:
    print(file=sys.stderr)
  model = build_model(cfg.model)
  from mer_jax.train.loop import predict_probs
  from mer_jax.train.state import model_apply

  probs = predict_probs(model_apply(model), variables, np.stack(images), batch_size)
  preds = []
  for info, p in zip(infos, probs):
    k = int(np.argmax(p))
    preds.append(
      {**info, "label": class_names[k], "index": k, "probabilities": {c: float(v) for c, v in zip(class_names, p)}}
    )
  return {"checkpoint": os.path.abspath(checkpoint_dir), "class_names": list(class_names), "predictions": preds}


def format_text(result: dict) -> str:
  lines = []
  for p in result["predictions"]:
    probs = "  ".join(f"{c} {v:.3f}" for c, v in p["probabilities"].items())
    apex = "" if p.get("apex") is None else f", apex frame {p['apex']}"
    mark = f"{NO_FACE_MARK} " if p.get("face_found") is False else ""
    lines.append(f"{p['input']}: {mark}{p['label']}  ({probs}; {p['frames']} frames{apex})")
    for w in p.get("warnings", []):
      lines.append(f"  note: {w}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.predict", description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--checkpoint", required=True, help="run directory (<workdir>/finetune/folds/<id> or <workdir>/pretrain)"
  )
  ap.add_argument("--input", required=True, help="video file, frame folder, image, or folder of clips")
  ap.add_argument(
    "--fps", type=float, default=None, help="frame rate (overrides the video's; needed for frame folders with EVM)"
  )
  ap.add_argument("--apex", default="spot", choices=APEX_CHOICES, help="how to pick the apex frame (default: spot)")
  ap.add_argument(
    "--on-no-face",
    default=None,
    choices=NO_FACE_CHOICES,
    help="a clip without a detected face: classify a centre crop, marked NO FACE FOUND in the output "
    "and face_found=false in the JSON (fallback), or stop with an error (error); default: the "
    "checkpoint's data.on_no_face (fallback unless it was trained with error)",
  )
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--json", action="store_true", help="print JSON instead of text")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  result = predict(
    args.checkpoint,
    args.input,
    fps=args.fps,
    apex=args.apex,
    batch_size=args.batch_size,
    progress=True,
    on_no_face=args.on_no_face,
  )
  print(json.dumps(result, indent=2) if args.json else format_text(result))
  return 0


if __name__ == "__main__":
  run_cli(main)
