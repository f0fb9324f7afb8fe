"""Grad-CAM (Selvaraju et al., ICCV 2017) on the network's last feature map (Figure 8).

  python -m mer_jax.gradcam --checkpoint RUN_DIR [RUN_DIR ...] --input CLIP_OR_FOLDER [--out DIR]

For a class c with logit y_c and the last feature map A [h, w, K] (before the
7x7 pooling head): alpha_k = mean_{i,j} dy_c / dA_ijk, and the map is
ReLU(sum_k alpha_k A_k), bilinearly upsampled to the input size and divided by
its maximum (so it lies in [0, 1]). The class is the predicted one unless
``--class`` names one.

Several checkpoints (e.g. the attention variants none / channel / spatial /
mixed of Table 11) give one column each, as in Figure 8; each column's input
is preprocessed with that checkpoint's own config. Writes into ``--out``:
``gradcam.png`` (rows = inputs, columns = input + one overlay per checkpoint),
``gradcam_<input>.png`` per input, and ``gradcam.npz`` with the raw maps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from mer_jax.errors import UserError, run_cli

ATTENTION_TITLES = {
  "none": "No attention",
  "channel": "Channel attention",
  "spatial": "Spatial attention",
  "mixed": "Mixed attention",
}


def head_logits(model, variables: dict, features):
  """The classifier head applied to a feature map: [N, h, w, C] -> logits [N, K].

  Reuses the model's own parameters (``params['head']``) and pooling
  (:func:`mer_jax.models.layers.adaptive_avg_pool`), so logits match
  ``model.apply`` (checked by :func:`make_gradcam_fn`).
  """
  import flax.linen as nn
  import jax.numpy as jnp

  from mer_jax.models.layers import adaptive_avg_pool

  pooled = adaptive_avg_pool(features.astype(jnp.float32), model.head_pool)
  flat = pooled.reshape((pooled.shape[0], -1))
  head = {k: jnp.asarray(v, jnp.float32) for k, v in variables["params"]["head"].items()}
  return nn.Dense(model.num_classes, dtype=jnp.float32).apply({"params": head}, flat)


def make_gradcam_fn(model):
  """Jitted ``(variables, x [N, H, W, C], classes [N] int or -1) -> (cam [N, H, W], logits [N, K], classes [N])``.

  classes -1 means "the predicted class". cam >= 0, max 1 per image (all zero when the
  ReLU leaves nothing, i.e. no location votes for the class).
  """
  import jax
  import jax.numpy as jnp

  @jax.jit
  def gradcam_fn(variables, x, classes):
    logits, feats = model.apply(variables, x, train=False, return_features=True)
    feats = feats.astype(jnp.float32)
    cls = jnp.where(classes < 0, jnp.argmax(logits, -1), classes)

    def score(f):
      lg = head_logits(model, variables, f)
      return jnp.sum(jnp.take_along_axis(lg, cls[:, None], axis=1)), lg

    grads, head_lg = jax.grad(score, has_aux=True)(feats)  # [N, h, w, C]
    alpha = grads.mean(axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
    cam = jax.nn.relu(jnp.sum(alpha * feats, axis=-1))  # [N, h, w]
    n, h, w, _ = x.shape
    cam = jax.image.resize(cam, (n, h, w), method="bilinear")
    cam = jnp.maximum(cam, 0.0)  # bilinear keeps >= 0; guard anyway
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)
    return cam, logits, cls, head_lg

  tol = 1e-3 if model.dtype == jnp.float32 else 5e-2  # bfloat16 models: the head here runs in float32

  def run(variables, x, classes):
    cam, logits, cls, head_lg = gradcam_fn(variables, x, classes)
    if not np.allclose(np.asarray(logits), np.asarray(head_lg), rtol=tol, atol=tol):
      raise RuntimeError(
        "Grad-CAM's head does not reproduce the model's logits: mer_jax.gradcam.head_logits "
        "is out of date with mer_jax.models.network.MERNet"
      )
    return cam, logits, cls

  return run


def gradcam(
  model, variables: dict, images: np.ndarray, classes: Optional[Sequence[int]] = None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Grad-CAM maps for images [N, H, W, C] -> (cam [N, H, W] in [0, 1], probs [N, K], class [N]).

  Runs in zero-padded batches of ``batch_size`` (one compilation; device memory bounded for big folders).
  """
  import jax

  images = np.asarray(images, np.float32)
  n = images.shape[0]
  cls = np.full(n, -1, np.int32) if classes is None else np.asarray(classes, np.int32)
  fn = make_gradcam_fn(model)
  bs = max(1, min(int(batch_size), n))
  cams, logits, used = [], [], []
  for a in range(0, n, bs):
    b = min(a + bs, n)
    x = np.zeros((bs,) + images.shape[1:], np.float32)
    x[: b - a] = images[a:b]
    c = np.full(bs, -1, np.int32)
    c[: b - a] = cls[a:b]
    cam, lg, u = fn(variables, x, c)
    cams.append(np.asarray(cam)[: b - a])
    logits.append(np.asarray(lg)[: b - a])
    used.append(np.asarray(u)[: b - a])
  logits = np.concatenate(logits)
  return np.concatenate(cams), np.asarray(jax.nn.softmax(logits, -1)), np.concatenate(used)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Heat map on the image: [H, W, C] in [0, 1] + cam [H, W] in [0, 1] -> RGB [H, W, 3]."""
  from matplotlib import colormaps

  img = np.asarray(image, np.float32)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
  return np.clip((1 - alpha) * img[..., :3] + alpha * heat, 0, 1)


def column_title(config: Any, checkpoint: str, used: Sequence[str]) -> str:
  """Figure 8 column name: the attention variant, made unique with the run folder name."""
  att = str(config.model.get("attention", "")) if "model" in config else ""
  title = ATTENTION_TITLES.get(att, os.path.basename(os.path.normpath(checkpoint)))
  if config.model.get("backbone", "dense") != "dense":
    title += f" ({config.model.backbone})"
  if title in used:
    title += f" [{os.path.basename(os.path.normpath(checkpoint))}]"
  return title


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "input"


def _draw_grid(path: str, inputs: Sequence[str], base: Sequence[np.ndarray], cols: Sequence[dict]) -> None:
  """rows = inputs; columns = the network input, then one overlay per checkpoint."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  n, m = len(inputs), len(cols) + 1
  fig = Figure(figsize=(2.3 * m, 2.5 * n + 0.3), dpi=120)
  FigureCanvasAgg(fig)
  for r in range(n):
    for c in range(m):
      ax = fig.add_subplot(n, m, r * m + c + 1)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        img = base[r]
        ax.imshow(np.repeat(img, 3, -1) if img.shape[-1] == 1 else img)
        ax.set_ylabel(_short(inputs[r]), fontsize=7)
        if r == 0:
          ax.set_title("Input", fontsize=9)
      else:
        col = cols[c - 1]
        ax.imshow(overlay(col["images"][r], col["cams"][r]))
        if r == 0:
          ax.set_title(col["title"], fontsize=9)
        ax.set_xlabel(f"{col['class_names'][col['classes'][r]]} {col['probs'][r, col['classes'][r]]:.2f}", fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


def _short(p: str, n: int = 28) -> str:
  s = os.path.basename(os.path.normpath(p))
  return s if len(s) <= n else "..." + s[-n + 3 :]


def run(
  checkpoints: Sequence[str],
  input_path: str,
  out_dir: str,
  *,
  fps: Optional[float] = None,
  target: Optional[str] = None,
  apex: str = "spot",
) -> dict:
  """Grad-CAM for every input clip and checkpoint; writes the PNGs/npz; returns a summary dict."""
  from mer_jax import predict as predict_lib
  from mer_jax.models import build_model

  inputs = predict_lib.discover_inputs(input_path)
  os.makedirs(out_dir, exist_ok=True)
  cols, titles = [], []
  for ck in checkpoints:
    config, variables, class_names = predict_lib.resolve_checkpoint(ck)
    cfg = predict_lib.inference_config(config, apex)
    images = np.stack([predict_lib.prepare_input(kind, p, cfg, fps)[0] for kind, p in inputs])
    classes = None
    if target is not None:
      if target in class_names:
        idx = class_names.index(target)
      elif target.isdigit() and int(target) < len(class_names):
        idx = int(target)
      else:
        raise UserError(f"--class {target!r} is not one of {ck}'s classes {class_names} (or an index)")
      classes = [idx] * len(inputs)
    model = build_model(cfg.model)
    cams, probs, used = gradcam(model, variables, images, classes)
    title = column_title(cfg, ck, titles)
    titles.append(title)
    cols.append(
      {
        "title": title,
        "checkpoint": ck,
        "images": images,
        "cams": cams,
        "probs": probs,
        "classes": used,
        "class_names": class_names,
      }
    )
  base = cols[0]["images"]
  paths = {"grid": os.path.join(out_dir, "gradcam.png")}
  _draw_grid(paths["grid"], [p for _, p in inputs], base, cols)
  for i, (_, p) in enumerate(inputs):
    fn = os.path.join(out_dir, f"gradcam_{i:03d}_{_safe(os.path.basename(os.path.normpath(p)))}.png")
    _draw_grid(
      fn,
      [p],
      [base[i]],
      [
        {
          **c,
          "images": c["images"][i : i + 1],
          "cams": c["cams"][i : i + 1],
          "probs": c["probs"][i : i + 1],
          "classes": c["classes"][i : i + 1],
        }
        for c in cols
      ],
    )
    paths[f"input_{i}"] = fn
  npz = os.path.join(out_dir, "gradcam.npz")
  np.savez_compressed(
    npz,
    **{f"cam_{j}": c["cams"] for j, c in enumerate(cols)},
    **{f"probs_{j}": c["probs"] for j, c in enumerate(cols)},
    **{f"class_{j}": c["classes"] for j, c in enumerate(cols)},
  )
  paths["npz"] = npz
  summary = {
    "inputs": [p for _, p in inputs],
    "columns": [
      {"title": c["title"], "checkpoint": c["checkpoint"], "predictions": [c["class_names"][k] for k in c["classes"]]}
      for c in cols
    ],
    "files": paths,
  }
  return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.gradcam", description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--checkpoint", required=True, nargs="+", help="one or more run directories (one Figure 8 column each)"
  )
  ap.add_argument("--input", required=True, help="video file, frame folder, image, or folder of clips")
  ap.add_argument("--out", default="gradcam_out", help="output folder (default: ./gradcam_out)")
  ap.add_argument("--fps", type=float, default=None, help="frame rate for frame folders (EVM)")
  ap.add_argument("--class", dest="target", default=None, help="class name or index (default: predicted)")
  ap.add_argument("--apex", default="spot", choices=("spot", "middle"))
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  summary = run(args.checkpoint, args.input, args.out, fps=args.fps, target=args.target, apex=args.apex)
  print(json.dumps(summary, indent=2))
  print(f"Grad-CAM overlays written to {os.path.abspath(args.out)} (grid: {summary['files']['grid']})")
  return 0


if __name__ == "__main__":
  run_cli(main)
