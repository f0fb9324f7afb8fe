"""SynthME: a deterministic synthetic stand-in for the six licensed datasets.

The numbers any model gets on SynthME say nothing about real micro-expression
recognition: the set exists to run the whole pipeline (readers, face crop, EVM,
apex, TFDS, training, reports) end to end without licensed data.

What it draws. Each subject is an identity (face shape, skin tone, eye / brow /
nose / mouth geometry, hair, background, lighting direction, sensor-noise level,
colour or grey) drawn from a seeded ``numpy.random.Generator``. Faces are drawn
with OpenCV at sub-pixel precision (every coordinate is passed with ``shift=4``,
i.e. 1/16 px, and anti-aliased), so motions well below a pixel change the image.

Micro clips run onset -> apex -> offset (raised-cosine intensity, apex at 35-60 %
of the clip) of action-unit-like landmark motions whose largest displacement is
``amplitude`` px at a 112-px face (default 0.5-1.5 px): positive / happiness lip
corners up and out (AU6+12); negative brows down and together, lip corners down
(AU4+15); surprise brows up, eyes wider, mouth opens (AU1+2+5+26); disgust
(AU4+9+10+15), repression (AU14+15+17+24), anger (AU4+7+24), contempt (unilateral
AU12+14), fear (AU1+2+4+20), sadness (AU1+4+15) and others (one of AU7, unilateral
AU2, AU17, AU43). Distractors: blinks (30 % of clips), head drift (sub-pixel
translation), per-frame sensor noise and a fixed-pattern noise per subject.
Macro images show the same expressions at large intensity (6-10 px at 112 px) in
three styles: CK+ lab frontal sequences (neutral to peak, peak last, grey),
RAF-DB "in the wild" (rotation, scale, strong coloured lighting, background
clutter, JPEG quality 70-90) and FER-2013 (48x48 grey, mild pose and clutter).

Layouts. :func:`generate` writes one of the six official layouts (see
:mod:`mer_jax.data.readers` for the sources relied on) plus ``synthme_manifest.json``
(every sample with its label, subject, frame numbers, amplitude and the counts per
class and subject); readers ignore the manifest. Output is byte-identical for the
same arguments (fixed seeds; xlsx zip timestamps and document properties pinned).

Frame rates are the real ones (200 fps CASME II / SAMM, 100 fps SMIC-HS) and clips
last ``clip_seconds`` (0.3 s default: 60 / 60 / 30 frames). Note for EVM users:
a 0.3 s clip cannot resolve the paper's 0.1-0.4 Hz band (its lowest non-zero
frequency bin is ~3.3 Hz); :mod:`mer_jax.evm` documents how that is handled.

CLI: ``python -m mer_jax.data.synth --layout casme2|samm|smic|ck|rafdb|fer2013|all --out DIR``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re
import sys
import time
import zipfile
import zlib
from functools import lru_cache
from typing import Optional

import cv2
import numpy as np

from mer_jax.errors import ConfigError, run_cli

LAYOUTS = ("casme2", "samm", "smic", "ck", "rafdb", "fer2013")
MICRO_FPS = {"casme2": 200.0, "samm": 200.0, "smic": 100.0}
MANIFEST = "synthme_manifest.json"
SHIFT = 4  # OpenCV drawing: coordinates in 1/16 px
_ONE = 1 << SHIFT

# Default sizes (the demo size): micro sets 3 subjects x 9 clips, macro sets ~100 images each.
DEFAULT_SUBJECTS = {"casme2": 3, "samm": 3, "smic": 3, "ck": 10, "rafdb": 0, "fer2013": 0}
DEFAULT_CLIPS = {"casme2": 9, "samm": 9, "smic": 9}
DEFAULT_IMAGES = {"ck": 60, "rafdb": 120, "fer2013": 150}
DEFAULT_FRAME_SIZE = 140  # micro frames are frame_size x frame_size

# Label cycles per dataset (own labels). Subject i takes cycle[(3 i + j) % len] for clip j, so
# every class appears and the excluded labels (fear / sadness / ...) are present too.
MICRO_CYCLES = {
  "casme2": (
    "disgust",
    "happiness",
    "repression",
    "surprise",
    "others",
    "disgust",
    "happiness",
    "surprise",
    "repression",
    "others",
    "disgust",
    "happiness",
    "surprise",
    "fear",
    "repression",
    "sadness",
  ),
  "samm": (
    "anger",
    "contempt",
    "happiness",
    "surprise",
    "other",
    "anger",
    "happiness",
    "disgust",
    "surprise",
    "contempt",
    "fear",
    "sadness",
  ),
  "smic": ("negative", "positive", "surprise"),
}
# The official code tables, written out here from each dataset's documentation (not taken from the
# readers' tables in mer_jax.data.mappings, so that reading SynthME back checks those independently).
# CK+ Emotion/*.txt (Lucey et al. 2010 README): 0 neutral .. 7 surprise; labelled sequences never carry 0.
CK_CODES = {1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
# RAF-DB basic emotions, EmoLabel/list_patition_label.txt.
RAFDB_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
# FER-2013 fer2013.csv 'emotion' column.
FER_CODES = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}

# ----------------------------------------------------------------------------- action units
# Landmark displacements in "face units" (the face is 112 units wide), for intensity 1.
# Landmarks: brow_{l,r}_{in,mid,out}, eye_{l,r}_{up,lo} (lid offsets), nose_{l,r} (wings),
# mouth_{l,r} (corners), lip_up, lip_lo (mid points), jaw (mouth opening).  'l' is image-left.
AUS: dict[str, dict[str, tuple[float, float]]] = {
  "AU1": {"brow_l_in": (0, -1.0), "brow_r_in": (0, -1.0), "brow_l_mid": (0, -0.5), "brow_r_mid": (0, -0.5)},
  "AU2": {"brow_l_out": (0, -1.0), "brow_r_out": (0, -1.0), "brow_l_mid": (0, -0.6), "brow_r_mid": (0, -0.6)},
  "AU4": {
    "brow_l_in": (0.7, 0.9),
    "brow_r_in": (-0.7, 0.9),
    "brow_l_mid": (0.3, 0.7),
    "brow_r_mid": (-0.3, 0.7),
    "brow_l_out": (0, 0.4),
    "brow_r_out": (0, 0.4),
  },
  "AU5": {"eye_l_up": (0, -0.8), "eye_r_up": (0, -0.8)},
  "AU6": {"eye_l_lo": (0, -0.5), "eye_r_lo": (0, -0.5)},
  "AU7": {"eye_l_up": (0, 0.6), "eye_r_up": (0, 0.6), "eye_l_lo": (0, -0.6), "eye_r_lo": (0, -0.6)},
  "AU9": {"nose_l": (0.2, -0.8), "nose_r": (-0.2, -0.8), "brow_l_in": (0, 0.4), "brow_r_in": (0, 0.4)},
  "AU10": {"lip_up": (0, -1.0), "nose_l": (0, -0.3), "nose_r": (0, -0.3)},
  "AU12": {"mouth_l": (-0.6, -0.9), "mouth_r": (0.6, -0.9)},
  "AU14": {"mouth_l": (-0.6, -0.2), "mouth_r": (0.6, -0.2)},
  "AU15": {"mouth_l": (0.2, 1.0), "mouth_r": (-0.2, 1.0)},
  "AU17": {"lip_lo": (0, -0.9), "mouth_l": (0, -0.2), "mouth_r": (0, -0.2)},
  "AU20": {"mouth_l": (-1.0, 0.2), "mouth_r": (1.0, 0.2)},
  "AU24": {"lip_up": (0, 0.5), "lip_lo": (0, -0.5), "mouth_l": (0.3, 0), "mouth_r": (-0.3, 0)},
  "AU26": {"jaw": (0, 1.6), "lip_lo": (0, 1.0)},
  "AU43": {"eye_l_up": (0, 1.0), "eye_r_up": (0, 1.0)},
  # unilateral (image-right) variants
  "R12": {"mouth_r": (0.6, -0.9)},
  "R14": {"mouth_r": (0.8, -0.3)},
  "R2": {"brow_r_out": (0, -1.0), "brow_r_mid": (0, -0.6)},
}
# Emotion -> weighted action units (own labels of every dataset point here).
EXPRESSIONS: dict[str, dict[str, float]] = {
  "positive": {"AU6": 0.6, "AU12": 1.0},
  "negative": {"AU4": 1.0, "AU15": 0.8},
  "surprise": {"AU1": 1.0, "AU2": 0.8, "AU5": 0.6, "AU26": 1.0},
  "disgust": {"AU4": 0.6, "AU9": 1.0, "AU10": 0.8, "AU15": 0.5},
  "repression": {"AU4": 0.4, "AU14": 0.6, "AU15": 0.6, "AU17": 0.8, "AU24": 0.8},
  "anger": {"AU4": 1.0, "AU7": 0.8, "AU24": 0.8},
  "contempt": {"AU4": 0.3, "R12": 0.8, "R14": 1.0},
  "fear": {"AU1": 0.8, "AU2": 0.5, "AU4": 0.8, "AU20": 1.0},
  "sadness": {"AU1": 0.8, "AU4": 0.6, "AU15": 1.0},
  "neutral": {},
}
for _alias, _to in (("happiness", "positive"), ("happy", "positive"), ("angry", "anger"), ("sad", "sadness")):
  EXPRESSIONS[_alias] = EXPRESSIONS[_to]
OTHERS_CHOICES = ({"AU7": 1.0}, {"R2": 1.0}, {"AU17": 1.0}, {"AU43": 0.8})
ACTION_UNITS_TEXT = {  # for the label files' 'Action Units' column
  "positive": "6+12",
  "negative": "4+15",
  "surprise": "1+2+5+26",
  "disgust": "4+9+10+15",
  "repression": "14+15+17+24",
  "anger": "4+7+24",
  "contempt": "R12+R14",
  "fear": "1+2+4+20",
  "sadness": "1+4+15",
  "neutral": "",
  "AU7": "7",
  "R2": "R2",
  "AU17": "17",
  "AU43": "43",
}


def expression_aus(label: str, rng: np.random.Generator) -> dict[str, float]:
  """The weighted action units of one sample of ``label`` ('others' draws one at random)."""
  if label in ("others", "other"):
    return dict(OTHERS_CHOICES[int(rng.integers(len(OTHERS_CHOICES)))])
  if label not in EXPRESSIONS:
    raise ConfigError(f"SynthME has no expression for label {label!r}")
  return dict(EXPRESSIONS[label])


def au_text(label: str, aus: dict[str, float]) -> str:
  key = {"happiness": "positive", "happy": "positive", "angry": "anger", "sad": "sadness"}.get(label, label)
  if key in ("others", "other"):
    key = next(iter(aus))
  return ACTION_UNITS_TEXT.get(key, "")


def displacements(aus: dict[str, float], amount: float) -> dict[str, np.ndarray]:
  """Landmark displacements (face units) of weighted AUs scaled so the largest moves ``amount``."""
  out: dict[str, np.ndarray] = {}
  for au, w in aus.items():
    for lm, d in AUS[au].items():
      out[lm] = out.get(lm, np.zeros(2)) + w * np.asarray(d, np.float64)
  if not out:
    return out
  peak = max(float(np.hypot(*v)) for v in out.values())
  return {k: v * (amount / peak) for k, v in out.items()}


# ----------------------------------------------------------------------------- identities


@dataclasses.dataclass(frozen=True)
class Identity:
  """One synthetic person. Geometry in face units (face width = 112 units)."""

  skin: tuple[float, float, float]  # BGR 0-255
  hair: tuple[float, float, float]
  lips: tuple[float, float, float]
  iris: tuple[float, float, float]
  background: tuple[float, float, float]
  height_ratio: float  # face half-height / half-width
  eye_x: float
  eye_y: float
  eye_w: float
  eye_h: float
  brow_gap: float
  brow_thick: float
  nose_y: float
  mouth_y: float
  mouth_w: float
  lip_thick: float
  light_angle: float
  light_strength: float
  noise: float  # per-frame sensor noise sigma (grey levels)
  fixed_pattern: int  # seed of the per-subject fixed-pattern noise
  grey: bool


def make_identity(rng: np.random.Generator, grey: bool = False) -> Identity:
  tone = rng.uniform(0.35, 1.0)
  skin = (90 + 100 * tone, 120 + 95 * tone, 150 + 90 * tone)
  hair_l = rng.uniform(15, 70)
  hair = (hair_l, hair_l * rng.uniform(1.0, 1.4), hair_l * rng.uniform(1.0, 1.8))
  lips = (skin[0] * 0.62, skin[1] * 0.6, min(255, skin[2] * 0.92))
  bg_l = rng.uniform(60, 200)
  background = tuple(float(np.clip(bg_l + rng.uniform(-40, 40), 10, 245)) for _ in range(3))
  return Identity(
    skin=skin,
    hair=hair,
    lips=lips,
    iris=(rng.uniform(20, 80),) * 2 + (rng.uniform(30, 90),),
    background=background,
    height_ratio=rng.uniform(1.2, 1.36),
    eye_x=rng.uniform(21, 25),
    eye_y=rng.uniform(-16, -10),
    eye_w=rng.uniform(9.5, 11.5),
    eye_h=rng.uniform(4.2, 5.4),
    brow_gap=rng.uniform(10, 14),
    brow_thick=rng.uniform(3.0, 4.5),
    nose_y=rng.uniform(13, 18),
    mouth_y=rng.uniform(34, 40),
    mouth_w=rng.uniform(17, 22),
    lip_thick=rng.uniform(3.0, 4.5),
    light_angle=rng.uniform(0, 2 * np.pi),
    light_strength=rng.uniform(0.05, 0.25),
    noise=rng.uniform(1.5, 3.5),
    fixed_pattern=int(rng.integers(2**31)),
    grey=grey,
  )


# ----------------------------------------------------------------------------- rendering


@dataclasses.dataclass(frozen=True)
class View:
  """Where the face lies in the image: centre (px), face half-width (px), rotation (deg)."""

  cx: float
  cy: float
  half_width: float
  angle: float = 0.0


class _Pen:
  """Maps face units to 1/16-px integer coordinates and draws anti-aliased primitives."""

  def __init__(self, img: np.ndarray, view: View):
    self.img = img
    self.v = view
    self.s = view.half_width / 56.0
    a = math.radians(view.angle)
    self.rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

  def px(self, pts) -> np.ndarray:
    p = np.asarray(pts, np.float64).reshape(-1, 2) * self.s
    p = p @ self.rot.T + np.array([self.v.cx, self.v.cy])
    return np.round(p * _ONE).astype(np.int32)

  def poly(self, pts, color) -> None:
    cv2.fillPoly(self.img, [self.px(pts)], color, cv2.LINE_AA, SHIFT)

  def line(self, pts, color, thick_units: float) -> None:
    t = max(1, int(round(thick_units * self.s)))
    cv2.polylines(self.img, [self.px(pts)], False, color, t, cv2.LINE_AA, SHIFT)

  def ellipse(self, center, axes, color, angle: float = 0.0, arc=(0, 360), thick_units: float = -1):
    c = self.px(center)[0]
    ax = np.round(np.asarray(axes, np.float64) * self.s * _ONE).astype(int)
    t = -1 if thick_units < 0 else max(1, int(round(thick_units * self.s)))
    cv2.ellipse(
      self.img,
      (int(c[0]), int(c[1])),
      (int(max(ax[0], 1)), int(max(ax[1], 1))),
      angle + self.v.angle,
      arc[0],
      arc[1],
      color,
      t,
      cv2.LINE_AA,
      SHIFT,
    )


def _curve(p0, p1, p2, n: int = 9) -> np.ndarray:
  """Quadratic Bezier from p0 to p2 with control p1, n points."""
  t = np.linspace(0, 1, n)[:, None]
  p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _shade(c, f: float) -> tuple[float, float, float]:
  return tuple(float(np.clip(x * f, 0, 255)) for x in c)


def draw_face(img: np.ndarray, ident: Identity, view: View, disp: dict[str, np.ndarray], blink: float = 0.0) -> None:
  """Draws the face of ``ident`` into ``img`` (uint8 BGR, in place) with landmark displacements."""
  pen = _Pen(img, view)
  d = lambda k: disp.get(k, np.zeros(2))  # noqa: E731
  hh = 56.0 * ident.height_ratio
  skin, hair = ident.skin, ident.hair
  # neck, hair behind the head, face, fringe
  pen.poly([(-26, hh * 0.6), (26, hh * 0.6), (30, hh * 1.6), (-30, hh * 1.6)], _shade(skin, 0.8))
  pen.ellipse((0, -10), (63, hh + 6), hair)
  pen.ellipse((0, 0), (56, hh), skin)
  pen.ellipse((0, -hh * 0.93), (52, hh * 0.32), hair)
  # jaw shading, cheeks
  pen.ellipse((0, hh * 0.55), (40, hh * 0.38), _shade(skin, 0.96))
  ex, ey = ident.eye_x, ident.eye_y
  for side, sx in (("l", -1), ("r", 1)):
    cx = sx * ex
    # eye socket shadow
    pen.ellipse((cx, ey - 1), (ident.eye_w + 5, ident.eye_h + 6), _shade(skin, 0.84))
    # eye opening: upper and lower lid curves
    up = d(f"eye_{side}_up")[1]
    lo = d(f"eye_{side}_lo")[1]
    top = ey - ident.eye_h + up
    bot = ey + ident.eye_h * 0.8 + lo
    top = top + blink * (bot - top - 0.4)
    left, right = (cx - ident.eye_w, ey), (cx + ident.eye_w, ey)
    upper = _curve(left, (cx, 2 * top - ey), right)
    lower = _curve(right, (cx, 2 * bot - ey), left)
    if bot - top > 0.8:
      pen.poly(np.vstack([upper, lower]), (235, 238, 240))
      r = min(ident.eye_h * 0.95, (bot - top) * 0.55)
      pen.ellipse((cx, (top + bot) / 2), (ident.eye_h * 0.95, r), ident.iris)
      pen.ellipse((cx, (top + bot) / 2), (ident.eye_h * 0.4, min(r, ident.eye_h * 0.4)), (20, 20, 20))
    pen.line(upper, _shade(hair, 0.8), 1.6)
    # brow: filled band through inner, mid, outer
    b_in = np.array((cx - sx * ident.eye_w * 0.9, ey - ident.brow_gap)) + d(f"brow_{side}_in")
    b_mid = np.array((cx + sx * 1.0, ey - ident.brow_gap - 3.5)) + d(f"brow_{side}_mid")
    b_out = np.array((cx + sx * ident.eye_w * 1.25, ey - ident.brow_gap + 1.0)) + d(f"brow_{side}_out")
    lower_edge = _curve(b_in, b_mid, b_out, 7)
    upper_edge = lower_edge[::-1] - np.array((0, ident.brow_thick))
    upper_edge[-1, 1] += ident.brow_thick * 0.4  # taper the inner end
    pen.poly(np.vstack([lower_edge, upper_edge]), hair)
  # nose: side shading, wings, nostrils
  ny = ident.nose_y
  nl, nr = np.array((-7.0, ny)) + d("nose_l"), np.array((7.0, ny)) + d("nose_r")
  pen.line([(-4, ey + 3), (-5.5, ny - 5), nl + (1, -1)], _shade(skin, 0.82), 1.5)
  pen.line([(4, ey + 3), (5.5, ny - 5), nr + (-1, -1)], _shade(skin, 0.88), 1.2)
  pen.line(_curve(nl, (0, ny + 5), nr, 7), _shade(skin, 0.7), 1.4)
  pen.ellipse(nl + (2.8, 0.8), (2.2, 1.2), _shade(skin, 0.45))
  pen.ellipse(nr + (-2.8, 0.8), (2.2, 1.2), _shade(skin, 0.45))
  # mouth
  my, mw = ident.mouth_y, ident.mouth_w
  ml = np.array((-mw, my)) + d("mouth_l")
  mr = np.array((mw, my)) + d("mouth_r")
  up_mid = np.array((0, my - ident.lip_thick)) + d("lip_up")
  gap = max(0.0, float(d("jaw")[1]))
  lo_mid = np.array((0, my + ident.lip_thick * 1.3 + gap)) + d("lip_lo") - (0, d("jaw")[1])
  centre_line_up = np.array((0, my + 0.5)) + d("lip_up") * 0.5
  centre_line_lo = centre_line_up + (0, gap)
  # nasolabial folds follow the corners
  pen.line(_curve(nl + (-2, -1), nl + (-6, 8), ml + (-4, -2), 7), _shade(skin, 0.86), 1.2)
  pen.line(_curve(nr + (2, -1), nr + (6, 8), mr + (4, -2), 7), _shade(skin, 0.86), 1.2)
  upper_lip = np.vstack(
    [_curve(ml, (-mw * 0.5, up_mid[1] - 1.5), up_mid, 7), _curve(up_mid, (mw * 0.5, up_mid[1] - 1.5), mr, 7)[1:]]
  )
  lower_lip = _curve(mr, (0, 2 * lo_mid[1] - my - 0.5), ml, 11)
  pen.poly(np.vstack([upper_lip, lower_lip]), ident.lips)
  if gap > 0.3:
    inner_up = _curve(ml, 2 * centre_line_up - (ml + mr) / 2, mr, 9)
    inner_lo = _curve(mr, 2 * centre_line_lo - (ml + mr) / 2, ml, 9)
    pen.poly(np.vstack([inner_up, inner_lo]), (35, 30, 45))
  else:
    pen.line(_curve(ml, 2 * centre_line_up - (ml + mr) / 2, mr, 9), _shade(ident.lips, 0.5), 1.3)


@lru_cache(maxsize=64)
def _lighting(shape: tuple[int, int], angle: float, strength: float) -> np.ndarray:
  h, w = shape
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  g = ((x - w / 2) * math.cos(angle) + (y - h / 2) * math.sin(angle)) / max(h, w)
  return (1.0 + 2 * strength * g)[..., None]


@lru_cache(maxsize=16)
def _fixed_pattern(seed: int, h: int, w: int, sigma: float) -> np.ndarray:
  return np.random.default_rng(seed).normal(0, sigma, (h, w, 1)).astype(np.float32)


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
  h, w = img.shape[:2]
  for _ in range(n):
    col = tuple(float(c) for c in rng.uniform(0, 255, 3))
    k = int(rng.integers(3))
    p = rng.uniform(0, 1, 4) * [w, h, w, h]
    if k == 0:
      cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, -1)
    elif k == 1:
      cv2.circle(img, (int(p[0]), int(p[1])), int(rng.uniform(3, w / 4)), col, -1, cv2.LINE_AA)
    else:
      cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, int(rng.integers(1, 4)), cv2.LINE_AA)


def render(
  ident: Identity,
  view: View,
  disp: dict[str, np.ndarray],
  *,
  size: tuple[int, int],
  rng: np.random.Generator,
  blink: float = 0.0,
  noise: Optional[float] = None,
  light: Optional[tuple[float, float]] = None,
  tint=(1.0, 1.0, 1.0),
  clutter: int = 0,
  blur: float = 0.7,
  fixed_pattern: float = 1.5,
) -> np.ndarray:
  """One frame. size = (H, W). Returns uint8 [H, W, 3] BGR, or [H, W] when ident.grey."""
  h, w = size
  img = np.empty((h, w, 3), np.uint8)
  img[:] = np.round(ident.background).astype(np.uint8)
  if clutter:
    _clutter(img, rng, clutter)
  draw_face(img, ident, view, disp, blink)
  f = img.astype(np.float32)
  ang, strength = light if light is not None else (ident.light_angle, ident.light_strength)
  f *= _lighting((h, w), ang, strength) * np.asarray(tint, np.float32)
  if blur > 0:
    f = cv2.GaussianBlur(f, (0, 0), blur)
  if fixed_pattern > 0:
    f += _fixed_pattern(ident.fixed_pattern, h, w, fixed_pattern)
  sigma = ident.noise if noise is None else noise
  if sigma > 0:
    f += rng.normal(0, sigma, f.shape).astype(np.float32)
  out = np.clip(np.round(f), 0, 255).astype(np.uint8)
  if ident.grey:
    out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
  return out


# ----------------------------------------------------------------------------- clips


@dataclasses.dataclass
class ClipSpec:
  subject: str
  clip_id: str
  label: str
  n_frames: int
  apex: int  # index of the apex inside the clip
  amplitude: float  # px at a 112-px face
  aus: dict
  blink_at: Optional[int]
  drift: tuple[float, float]  # total px drift over the clip


def intensity_profile(n: int, apex: int) -> np.ndarray:
  """Raised-cosine rise 0 -> 1 at ``apex`` and fall back to 0 at the last frame. [n]"""
  t = np.arange(n, dtype=np.float64)
  rise = 0.5 * (1 - np.cos(np.pi * t / max(apex, 1)))
  fall = 0.5 * (1 + np.cos(np.pi * (t - apex) / max(n - 1 - apex, 1)))
  return np.where(t <= apex, rise, fall)


def render_clip(
  ident: Identity,
  spec: ClipSpec,
  *,
  frame_size: int,
  rng: np.random.Generator,
  pad_before: int = 0,
  pad_after: int = 0,
  noise_scale: float = 1.0,
) -> list[np.ndarray]:
  """Frames of one micro clip (pad_before neutral frames, onset..offset, pad_after frames)."""
  base = View(
    cx=frame_size / 2 + rng.uniform(-3, 3),
    cy=frame_size / 2 + rng.uniform(-2, 4),
    half_width=frame_size * rng.uniform(0.28, 0.31),
  )
  amount_units = spec.amplitude * (112.0 / (2 * 56.0))  # px at 112 px == face units at width 112
  disp_peak = displacements(spec.aus, amount_units)
  prof = intensity_profile(spec.n_frames, spec.apex)
  total = pad_before + spec.n_frames + pad_after
  frames = []
  for k in range(total):
    i = k - pad_before
    p = prof[i] if 0 <= i < spec.n_frames else 0.0
    disp = {lm: v * p for lm, v in disp_peak.items()}
    frac = k / max(total - 1, 1)
    view = dataclasses.replace(
      base, cx=base.cx + spec.drift[0] * frac, cy=base.cy + spec.drift[1] * frac + 0.15 * math.sin(2 * math.pi * frac)
    )
    blink = 0.0
    if spec.blink_at is not None:
      blink = max(0.0, 1.0 - abs(i - spec.blink_at) / 4.0) * 0.95
    frames.append(
      render(ident, view, disp, size=(frame_size, frame_size), rng=rng, blink=blink, noise=ident.noise * noise_scale)
    )
  return frames


# ----------------------------------------------------------------------------- writers


def _rng(seed: int, *keys) -> np.random.Generator:
  ints = [seed] + [zlib.crc32(str(k).encode()) for k in keys]
  return np.random.default_rng(np.random.SeedSequence(ints))


def _imwrite(path: str, img: np.ndarray, params=()) -> None:
  ext = os.path.splitext(path)[1]
  ok, buf = cv2.imencode(ext, img, list(params))
  if not ok:
    raise OSError(f"cannot encode {path}")
  with open(path, "wb") as f:
    f.write(buf.tobytes())


_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def _save_xlsx_deterministic(wb, path: str) -> None:
  """Saves an openpyxl workbook with pinned zip timestamps and document dates."""
  when = datetime.datetime(*_FIXED_TIME)
  wb.properties.created = when
  wb.properties.modified = when
  buf = io.BytesIO()
  wb.save(buf)
  buf.seek(0)
  stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
  with zipfile.ZipFile(buf) as zin, open(path, "wb") as fout:
    with zipfile.ZipFile(fout, "w", zipfile.ZIP_DEFLATED) as zout:
      for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename == "docProps/core.xml":
          data = re.sub(
            rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)", rb"\g<1>" + stamp.encode() + rb"\g<2>", data
          )
        zi = zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME)
        zi.compress_type = zipfile.ZIP_DEFLATED
        zi.external_attr = 0o600 << 16
        zout.writestr(zi, data)


def _counts(samples: list[dict], key: str) -> dict:
  out: dict = {}
  for s in samples:
    out[s[key]] = out.get(s[key], 0) + 1
  return dict(sorted(out.items()))


def _write_manifest(root: str, layout: str, seed: int, samples: list[dict], extra: dict) -> None:
  per_subject_class: dict = {}
  for s in samples:
    per_subject_class.setdefault(s["subject"], {}).setdefault(s["label"], 0)
    per_subject_class[s["subject"]][s["label"]] += 1
  man = {
    "generator": "mer_jax.data.synth (SynthME)",
    "layout": layout,
    "seed": seed,
    "note": "synthetic data: numbers on it say nothing about real micro-expression recognition",
    "n_samples": len(samples),
    "per_label": _counts(samples, "label"),
    "per_subject": _counts(samples, "subject"),
    "per_subject_label": per_subject_class,
    **extra,
    "samples": samples,
  }
  with open(os.path.join(root, MANIFEST), "w") as f:
    json.dump(man, f, indent=1, sort_keys=False)


def _micro_specs(
  layout: str, seed: int, subjects: int, clips: int, n_frames: int, amplitude: tuple[float, float]
) -> tuple[list[str], list[ClipSpec]]:
  cyc = MICRO_CYCLES[layout]
  subj_ids = {
    "casme2": [f"sub{i + 1:02d}" for i in range(subjects)],
    "samm": [f"{6 + i:03d}" for i in range(subjects)],
    "smic": [f"s{i + 1}" for i in range(subjects)],
  }[layout]
  specs = []
  for si, s in enumerate(subj_ids):
    per_label: dict[str, int] = {}
    for j in range(clips):
      label = cyc[(3 * si + j) % len(cyc)]
      rng = _rng(seed, layout, "clip", s, j)
      per_label[label] = per_label.get(label, 0) + 1
      if layout == "casme2":
        clip_id = f"EP{j + 1:02d}_{int(rng.integers(1, 20)):02d}{'f' if j % 2 else ''}"
      elif layout == "samm":
        clip_id = f"{s}_{1 + j % 7}_{1 + j // 7}"
      else:
        short = {"negative": "ne", "positive": "po", "surprise": "sur"}[label]
        clip_id = f"{s}_{short}_{per_label[label]:02d}"
      apex = int(round(n_frames * rng.uniform(0.35, 0.6)))
      specs.append(
        ClipSpec(
          subject=s,
          clip_id=clip_id,
          label=label,
          n_frames=n_frames,
          apex=apex,
          amplitude=float(rng.uniform(*amplitude)),
          aus=expression_aus(label, rng),
          blink_at=int(rng.integers(n_frames)) if rng.uniform() < 0.3 else None,
          drift=(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.6, 0.6))),
        )
      )
  return subj_ids, specs


def _generate_micro(
  layout: str,
  root: str,
  *,
  seed: int,
  subjects: int,
  clips: int,
  n_frames: int,
  frame_size: int,
  amplitude,
  noise_scale: float,
  progress,
) -> None:
  import openpyxl

  subj_ids, specs = _micro_specs(layout, seed, subjects, clips, n_frames, amplitude)
  idents = {s: make_identity(_rng(seed, layout, "id", s), grey=(layout == "samm")) for s in subj_ids}
  pad = 0 if layout == "smic" else 2
  samples, rows = [], []
  for ci, spec in enumerate(specs):
    rng = _rng(seed, layout, "frames", spec.subject, spec.clip_id)
    frames = render_clip(
      idents[spec.subject], spec, frame_size=frame_size, rng=rng, pad_before=pad, pad_after=pad, noise_scale=noise_scale
    )
    first = int(rng.integers(20, 3000 if layout == "samm" else 300))
    onset = first + pad
    offset = onset + spec.n_frames - 1
    apex_no: Optional[int] = onset + spec.apex
    if layout == "casme2":
      d = os.path.join(root, "CASME2_RAW_selected", spec.subject, spec.clip_id)
      names = [f"img{first + k}.jpg" for k in range(len(frames))]
      if ci == 1:  # the release writes '/' where no apex was coded
        apex_no = None
    elif layout == "samm":
      d = os.path.join(root, "SAMM", spec.subject, spec.clip_id)
      names = [f"{spec.subject}_{first + k:05d}.jpg" for k in range(len(frames))]
    else:
      d = os.path.join(root, "HS", spec.subject, "micro", spec.label, spec.clip_id)
      names = [f"image{first + k:06d}.bmp" for k in range(len(frames))]
    os.makedirs(d, exist_ok=True)
    for name, fr in zip(names, frames):
      params = (cv2.IMWRITE_JPEG_QUALITY, 95) if name.endswith(".jpg") else ()
      _imwrite(os.path.join(d, name), fr, params)
    samples.append(
      {
        "subject": spec.subject,
        "clip_id": spec.clip_id,
        "label": spec.label,
        "n_frames": spec.n_frames,
        "onset_frame": onset,
        "offset_frame": offset,
        "apex_frame": apex_no,
        "true_apex_index": spec.apex,
        "amplitude_px_at_112": spec.amplitude,
        "aus": spec.aus,
        "blink_index": spec.blink_at,
        "drift_px": list(spec.drift),
        "fps": MICRO_FPS[layout],
        "folder": os.path.relpath(d, root),
      }
    )
    rows.append((spec, onset, apex_no, offset))
    progress(ci + 1, len(specs))

  if layout == "casme2":
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    # Header as in CASME2-coding-20140508.xlsx; columns 3 and 7 have blank headers in the release.
    ws.append(
      ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units", "Estimated Emotion"]
    )
    for spec, on, ap, off in rows:
      ws.append(
        [
          int(spec.subject[3:]),
          spec.clip_id,
          None,
          on,
          "/" if ap is None else ap,
          off,
          None,
          au_text(spec.label, spec.aus),
          spec.label,
        ]
      )
    _save_xlsx_deterministic(wb, os.path.join(root, "CASME2-coding-20140508.xlsx"))
  elif layout == "samm":
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "FACS_Movement_Only"
    ws.append(["SAMM: Spontaneous Actions and Micro-Movements (SynthME stand-in)"])
    ws.append([])
    ws.append(["Micro-movement FACS codes; frame numbers refer to the image names."])
    for _ in range(10):
      ws.append([])
    ws.append(
      [
        "Subject",
        "Filename",
        "Inducement Code",
        "Onset Frame",
        "Apex Frame",
        "Offset Frame",
        "Duration",
        "Type",
        "Action Units",
        "Notes",
        "Estimated Emotion",
        "Objective Classes",
      ]
    )
    objective = {
      "happiness": 1,
      "surprise": 2,
      "anger": 3,
      "contempt": 4,
      "disgust": 5,
      "fear": 6,
      "sadness": 6,
      "other": 7,
    }
    for spec, on, ap, off in rows:
      ws.append(
        [
          int(spec.subject),
          spec.clip_id,
          int(spec.clip_id.split("_")[1]),
          on,
          ap,
          off,
          off - on + 1,
          "Micro - 1/2",
          au_text(spec.label, spec.aus),
          "",
          spec.label.capitalize(),
          objective[spec.label],
        ]
      )
      ws.cell(row=ws.max_row, column=1).number_format = "000"
    _save_xlsx_deterministic(wb, os.path.join(root, "SAMM_Micro_FACS_Codes_v2.xlsx"))
  _write_manifest(root, layout, seed, samples, {"fps": MICRO_FPS[layout], "frame_size": frame_size})


def _macro_label_cycle(codes: dict, n: int, rng: np.random.Generator) -> list[int]:
  keys = list(codes)
  out = [keys[i % len(keys)] for i in range(n)]
  rng.shuffle(out)
  return [int(k) for k in out]


def _generate_ck(root: str, *, seed: int, images: int, subjects: int, progress) -> None:
  img_root = os.path.join(root, "cohn-kanade-images")
  emo_root = os.path.join(root, "Emotion")
  codes = _macro_label_cycle(CK_CODES, images, _rng(seed, "ck", "labels"))
  per = math.ceil(images / subjects)
  samples = []
  h, w = 140, 160
  for n, code in enumerate(codes):
    si, qi = divmod(n, per)
    subj = f"S{5 + 5 * si:03d}"
    seq = f"{qi + 1:03d}"
    rng = _rng(seed, "ck", subj, seq)
    ident = make_identity(_rng(seed, "ck", "id", subj), grey=True)
    view = View(cx=w / 2 + rng.uniform(-4, 4), cy=h / 2 + rng.uniform(-2, 5), half_width=rng.uniform(38, 44))
    aus = expression_aus(CK_CODES[code], rng)
    peak = displacements(aus, rng.uniform(6, 10))
    n_frames = int(rng.integers(5, 9))
    d = os.path.join(img_root, subj, seq)
    os.makedirs(d, exist_ok=True)
    for k in range(n_frames):
      p = k / (n_frames - 1)
      img = render(
        ident,
        view,
        {lm: v * p for lm, v in peak.items()},
        size=(h, w),
        rng=rng,
        noise=1.0,
        light=(ident.light_angle, 0.05),
        fixed_pattern=0.5,
      )
      _imwrite(os.path.join(d, f"{subj}_{seq}_{k + 1:08d}.png"), img)
    ed = os.path.join(emo_root, subj, seq)
    os.makedirs(ed, exist_ok=True)
    with open(os.path.join(ed, f"{subj}_{seq}_{n_frames:08d}_emotion.txt"), "w") as f:
      f.write(f"   {float(code):.7e}\n")
    samples.append(
      {
        "subject": subj,
        "clip_id": f"{subj}_{seq}",
        "label": CK_CODES[code],
        "code": code,
        "n_frames": n_frames,
        "aus": aus,
      }
    )
    # CK+ holds sequences without an emotion label: one per subject, after its last labelled one.
    if qi == per - 1 or n == len(codes) - 1:
      ud = os.path.join(img_root, subj, f"{qi + 2:03d}")
      os.makedirs(ud, exist_ok=True)
      for k in range(3):
        img = render(ident, view, {}, size=(h, w), rng=rng, noise=1.0)
        _imwrite(os.path.join(ud, f"{subj}_{qi + 2:03d}_{k + 1:08d}.png"), img)
    progress(n + 1, len(codes))
  _write_manifest(root, "ck", seed, samples, {"unlabelled_sequences": "one per subject"})


def _wild_image(
  ident: Identity, aus: dict, rng: np.random.Generator, size: int, intensity: float, clutter: int, max_angle: float
) -> np.ndarray:
  view = View(
    cx=size / 2 + rng.uniform(-0.04, 0.04) * size,
    cy=size / 2 + rng.uniform(-0.03, 0.06) * size,
    half_width=size * rng.uniform(0.28, 0.33),
    angle=rng.uniform(-max_angle, max_angle),
  )
  peak = displacements(aus, intensity)
  tint = tuple(rng.uniform(0.8, 1.2, 3))
  return render(
    ident,
    view,
    peak,
    size=(size, size),
    rng=rng,
    noise=rng.uniform(1, 5),
    light=(rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.45)),
    tint=tint,
    clutter=clutter,
    blur=rng.uniform(0.5, 1.2),
  )


def _generate_rafdb(root: str, *, seed: int, images: int, progress) -> None:
  label_dir = os.path.join(root, "EmoLabel")
  img_dir = os.path.join(root, "Image", "aligned")
  os.makedirs(label_dir, exist_ok=True)
  os.makedirs(img_dir, exist_ok=True)
  codes = _macro_label_cycle(RAFDB_CODES, images, _rng(seed, "rafdb", "labels"))
  n_train = int(round(images * 0.8))
  lines, samples = [], []
  for n, code in enumerate(codes):
    name = f"train_{n + 1:05d}" if n < n_train else f"test_{n - n_train + 1:04d}"
    rng = _rng(seed, "rafdb", name)
    ident = make_identity(rng)
    aus = expression_aus(RAFDB_CODES[code], rng)
    img = _wild_image(ident, aus, rng, 100, rng.uniform(6, 10), int(rng.integers(3, 9)), 12)
    _imwrite(os.path.join(img_dir, f"{name}_aligned.jpg"), img, (cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 91))))
    lines.append(f"{name}.jpg {code}")
    samples.append(
      {
        "subject": "",
        "clip_id": name,
        "label": RAFDB_CODES[code],
        "code": code,
        "split": "train" if n < n_train else "test",
        "aus": aus,
      }
    )
    progress(n + 1, len(codes))
  with open(os.path.join(label_dir, "list_patition_label.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _write_manifest(root, "rafdb", seed, samples, {})


def _generate_fer2013(root: str, *, seed: int, images: int, progress) -> None:
  os.makedirs(root, exist_ok=True)
  codes = _macro_label_cycle(FER_CODES, images, _rng(seed, "fer2013", "labels"))
  n_train, n_pub = int(round(images * 0.8)), int(round(images * 0.1))
  samples = []
  with open(os.path.join(root, "fer2013.csv"), "w", newline="") as f:
    wr = csv.writer(f, lineterminator="\n")
    wr.writerow(["emotion", "pixels", "Usage"])
    for n, code in enumerate(codes):
      usage = "Training" if n < n_train else "PublicTest" if n < n_train + n_pub else "PrivateTest"
      rng = _rng(seed, "fer2013", n)
      ident = dataclasses.replace(make_identity(rng), grey=True)
      aus = expression_aus(FER_CODES[code], rng)
      big = _wild_image(ident, aus, rng, 96, rng.uniform(6, 10), int(rng.integers(0, 4)), 8)
      small = cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA)
      wr.writerow([code, " ".join(str(int(v)) for v in small.reshape(-1)), usage])
      samples.append(
        {
          "subject": "",
          "clip_id": f"fer2013_{n + 1:05d}",
          "label": FER_CODES[code],
          "code": code,
          "split": usage,
          "aus": aus,
        }
      )
      progress(n + 1, len(codes))
  _write_manifest(root, "fer2013", seed, samples, {})


def _progress_printer(layout: str, quiet: bool):
  state = {"t": 0.0}

  def progress(done: int, total: int) -> None:
    if quiet:
      return
    now = time.monotonic()
    if done == total or now - state["t"] > 2.0:
      state["t"] = now
      print(f"  {layout}: {done}/{total}", file=sys.stderr, flush=True)

  return progress


def generate(
  layout: str,
  out_dir: str,
  *,
  seed: int = 0,
  subjects: Optional[int] = None,
  clips_per_subject: Optional[int] = None,
  images: Optional[int] = None,
  clip_seconds: float = 0.3,
  clip_frames: Optional[int] = None,
  frame_size: int = DEFAULT_FRAME_SIZE,
  amplitude: tuple[float, float] = (0.5, 1.5),
  noise_scale: float = 1.0,
  quiet: bool = True,
) -> str:
  """Writes SynthME in the official layout of ``layout`` into ``out_dir``; returns the folder
  to point the reader at (``out_dir`` itself).

  subjects / clips_per_subject: micro sets (default 3 x 9) and CK+ subjects (default 10);
  images: macro sets (CK+ labelled sequences 60, RAF-DB 120, FER-2013 150);
  clip_seconds / clip_frames: micro clip length (onset..offset) at the dataset's fps;
  amplitude: range of the peak AU displacement in px at a 112-px face;
  noise_scale: multiplies each subject's sensor-noise sigma (1.5-3.5 grey levels).
  """
  if layout not in LAYOUTS:
    raise ConfigError(f"unknown SynthME layout {layout!r}; expected one of {', '.join(LAYOUTS)} or all")
  for name, v in (
    ("subjects", subjects),
    ("clips_per_subject", clips_per_subject),
    ("images", images),
    ("clip_frames", clip_frames),
  ):
    if v is not None and v < 1:
      raise ConfigError(f"SynthME {name} must be >= 1, got {v}")
  if not (0 < amplitude[0] <= amplitude[1]):
    raise ConfigError(f"SynthME amplitude range must be 0 < lo <= hi, got {amplitude}")
  os.makedirs(out_dir, exist_ok=True)
  if os.listdir(out_dir):
    raise ConfigError(f"SynthME output folder {out_dir} is not empty; choose a new folder")
  progress = _progress_printer(layout, quiet)
  if layout in MICRO_FPS:
    n_frames = clip_frames or max(8, int(round(clip_seconds * MICRO_FPS[layout])))
    _generate_micro(
      layout,
      out_dir,
      seed=seed,
      subjects=subjects or DEFAULT_SUBJECTS[layout],
      clips=clips_per_subject or DEFAULT_CLIPS[layout],
      n_frames=n_frames,
      frame_size=frame_size,
      amplitude=amplitude,
      noise_scale=noise_scale,
      progress=progress,
    )
  elif layout == "ck":
    _generate_ck(
      out_dir,
      seed=seed,
      images=images or DEFAULT_IMAGES["ck"],
      subjects=subjects or DEFAULT_SUBJECTS["ck"],
      progress=progress,
    )
  elif layout == "rafdb":
    _generate_rafdb(out_dir, seed=seed, images=images or DEFAULT_IMAGES["rafdb"], progress=progress)
  else:
    _generate_fer2013(out_dir, seed=seed, images=images or DEFAULT_IMAGES["fer2013"], progress=progress)
  return out_dir


def generate_all(
  out_root: str,
  *,
  seed: int = 0,
  subjects: Optional[int] = None,
  clips_per_subject: Optional[int] = None,
  images: Optional[int] = None,
  layouts=LAYOUTS,
  **kw,
) -> dict[str, str]:
  """Writes every layout into ``out_root/<name>``; returns {name: root}. ``subjects`` applies
  to the micro sets (CK+ keeps its default), ``images`` to the macro sets."""
  out = {}
  for name in layouts:
    micro = name in MICRO_FPS
    out[name] = generate(
      name,
      os.path.join(out_root, name),
      seed=seed,
      subjects=subjects if micro else None,
      clips_per_subject=clips_per_subject if micro else None,
      images=None if micro else images,
      **kw,
    )
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.data.synth", description=__doc__.split("\n\n")[0])
  ap.add_argument("--layout", required=True, choices=LAYOUTS + ("all",))
  ap.add_argument("--out", required=True, help="output folder (must be new or empty; 'all': one subfolder per layout)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--subjects", type=int, default=None, help="micro sets: subjects (default 3)")
  ap.add_argument("--clips-per-subject", type=int, default=None, help="micro sets: clips per subject (default 9)")
  ap.add_argument("--images", type=int, default=None, help="macro sets: images / labelled sequences")
  ap.add_argument("--clip-seconds", type=float, default=0.3)
  ap.add_argument("--clip-frames", type=int, default=None, help="overrides --clip-seconds")
  ap.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE)
  ap.add_argument(
    "--amplitude",
    type=float,
    nargs=2,
    default=(0.5, 1.5),
    metavar=("LO", "HI"),
    help="peak AU displacement range, px at a 112-px face",
  )
  ap.add_argument("--noise-scale", type=float, default=1.0)
  ap.add_argument("--quiet", action="store_true")
  a = ap.parse_args(argv)
  kw = dict(
    seed=a.seed,
    clip_seconds=a.clip_seconds,
    clip_frames=a.clip_frames,
    frame_size=a.frame_size,
    amplitude=tuple(a.amplitude),
    noise_scale=a.noise_scale,
    quiet=a.quiet,
  )
  t0 = time.monotonic()
  if a.layout == "all":
    roots = generate_all(a.out, subjects=a.subjects, clips_per_subject=a.clips_per_subject, images=a.images, **kw)
  else:
    roots = {
      a.layout: generate(
        a.layout, a.out, subjects=a.subjects, clips_per_subject=a.clips_per_subject, images=a.images, **kw
      )
    }
  for name, root in roots.items():
    print(f"{name}: {root}")
  if not a.quiet:
    print(f"SynthME written in {time.monotonic() - t0:.1f} s (synthetic: says nothing about real MER)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  run_cli(main)
