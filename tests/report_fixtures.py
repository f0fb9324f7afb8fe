"""Tiny models, checkpoints and clips for the predict / Grad-CAM tests (not collected by pytest)."""

from __future__ import annotations

import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mer_jax import config_defaults
from mer_jax.models import build_model

SIZE = 48


def tiny_config(attention: str = "spatial", num_classes: int = 2, size: int = SIZE):
  """A whole run config with a very small network (2 dense blocks of 1 layer, 3x3 convs):
  48 -> 12 -> 6 feature maps. No EVM, no face crop (tests feed noise images)."""
  c = config_defaults.get_base_config()
  c.name = "tiny_report"
  c.image_size = size
  m = c.model
  m.num_classes = num_classes
  m.attention = attention
  m.stem_features, m.growth_rate, m.block_layers = 8, 8, (1, 1)
  m.kernel_size, m.attention_kernel, m.reduction, m.head_pool = 3, 3, 2, 2
  m.bn_momentum = 0.5  # running statistics settle within a few dozen steps
  c.evm.enabled = False
  c.data.face_crop = False
  return c


def init_variables(model, seed: int = 0, size: int = SIZE) -> dict:
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(jax.random.key(seed))
  return {"params": v["params"], "batch_stats": v["batch_stats"]}


def patch_images(rng: np.random.Generator, n: int, size: int = SIZE, patch: int = 12):
  """Grey noise with one coloured square at a random place: red = class 0, blue = class 1.

  Returns images [n, size, size, 3] in [0, 1], labels [n], patch masks [n, size, size].
  """
  x = 0.5 + 0.05 * rng.standard_normal((n, size, size, 3)).astype(np.float32)
  y = rng.integers(0, 2, n)
  pos = rng.integers(0, size - patch, (n, 2))
  mask = np.zeros((n, size, size), bool)
  for i in range(n):
    r, c = pos[i]
    mask[i, r : r + patch, c : c + patch] = True
    x[i, r : r + patch, c : c + patch] = (0.9, 0.2, 0.2) if y[i] == 0 else (0.2, 0.2, 0.9)
  return np.clip(x, 0, 1).astype(np.float32), y, mask


def train_patch_model(config, steps: int = 60, seed: int = 0):
  """Trains the tiny network on :func:`patch_images` (Adam, BN in train mode) -> (model, variables)."""
  model = build_model(config.model)
  v = init_variables(model, seed, int(config.image_size))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, bs, opt, x, y):
    def loss_fn(p):
      lg, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(lg, y).mean(), upd["batch_stats"]

    (_, bs2), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), bs2, opt

  rng = np.random.default_rng(seed)
  params, bs, opt = v["params"], v["batch_stats"], tx.init(v["params"])
  for _ in range(steps):
    x, y, _ = patch_images(rng, 32, int(config.image_size))
    params, bs, opt = step(params, bs, opt, x, y)
  return model, {"params": params, "batch_stats": bs}


def save_run(run_dir: str, config, variables: dict, class_names) -> str:
  """Writes a run directory in the layout of mer_jax.train.checkpoint."""
  from mer_jax.train import checkpoint

  meta = {
    "config": json.loads(config.to_json()),
    "class_names": list(class_names),
    "image_size": int(config.image_size),
    "channels": int(config.channels),
    "epoch": 0,
    "metrics": {},
    "kind": "finetune",
  }
  checkpoint.save(run_dir, "best", 0, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, meta)
  return run_dir


def write_frames(folder: str, frames: np.ndarray) -> str:
  """frames [T, H, W, 3] float RGB in [0, 1] -> folder/img1.png ... (natural order, lossless)."""
  os.makedirs(folder, exist_ok=True)
  for t, f in enumerate(frames):
    bgr = cv2.cvtColor((np.clip(f, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(os.path.join(folder, f"img{t + 1}.png"), bgr)
  return folder


def patch_clip(rng: np.random.Generator, label: int, frames: int = 7, size: int = 64, apex: int = 4):
  """A clip whose coloured square (class ``label``) fades in to ``apex`` and out again."""
  base = 0.5 + 0.03 * rng.standard_normal((size, size, 3)).astype(np.float32)
  r, c = rng.integers(0, size - 16, 2)
  colour = np.array((0.9, 0.2, 0.2) if label == 0 else (0.2, 0.2, 0.9), np.float32)
  out = []
  for t in range(frames):
    w = max(0.0, 1.0 - abs(t - apex) / apex)
    f = base.copy()
    f[r : r + 16, c : c + 16] = (1 - w) * f[r : r + 16, c : c + 16] + w * colour
    out.append(f)
  return np.stack(out)
