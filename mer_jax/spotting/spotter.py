"""A training-free spotter: face track -> motion signal from dense optical flow -> intervals.

Two pluggable steps, both pure functions of their inputs:

* :func:`motion_signal` (or :func:`spotter` for an in-memory clip): for every frame ``t`` the dense optical flow
  (OpenCV Farneback, or DIS) between frame ``t - k`` and frame ``t`` inside the face box, with ``k`` about half a
  micro-expression at the video's frame rate (``k_seconds``, default 0.2 s: 6 frames at 30 fps, 40 at 200 fps).
  Global head motion is removed in two steps: frame ``t - k`` is first aligned to frame ``t`` by an affine
  transform found with ECC (:func:`register`); then an affine motion (translation, rotation, scale, shear) is
  fitted to the face's remaining flow by least squares (refitted on the 70 % best-fitting points, so a local
  expression does not pull the fit) and subtracted. The residual flow is averaged in a ``grid x grid`` array of
  cells; the cells of the eye band (blinks), of the outer columns (face contour) and of the top row (hairline) are
  left out, and the per-frame value is the mean of the ``top_cells`` strongest cells (an expression moves a few
  regions). A cell's value is the length of its mean flow vector, so uncorrelated flow noise averages out. The
  same pass records the mean absolute grey-level difference to the previous frame (the baseline's signal,
  :func:`frame_difference_intervals`).
* :func:`extract_intervals`: at two time scales (micro: ``smooth_seconds``, ``threshold``, ``merge_seconds``;
  macro: ``macro_smooth_seconds``, ``macro_threshold``, ``macro_merge_seconds``) the signal is smoothed (moving
  average), put on a per-video noise scale (``z = (s - median) / (1.4826 * MAD)``) and thresholded; runs above
  the threshold closer than the merge gap are merged, intervals shorter than ``min_seconds`` dropped. Because the flow
  compares ``t`` with ``t - k``, motion ending at frame ``e`` keeps the signal up until ``e + k``, while the
  threshold cuts the slow rise and fall: the interval is ``[start - pad_seconds, end - lag_fraction * k]`` (both
  chosen on training subjects by :mod:`mer_jax.spotting.loso`). An interval of at most ``micro_max_seconds``
  (0.5 s) is a micro-expression, a longer one a macro-expression; micro intervals come from the micro scale, macro
  intervals from the macro scale, and a micro interval overlapping a macro one is dropped; a run longer than
  0.5 s at the micro scale that the macro scale misses is kept as a macro interval where it overlaps nothing
  else. The apex is the frame
  of strongest motion minus ``k / 2``; the score the peak ``z``.

Held-expression check: a micro-expression returns to neutral. The same pass measures, every 0.1 s, the residual
flow between frame ``t`` and frame ``t - hold_seconds`` (0.9 s; ``MotionSignal.hold``); a micro candidate whose
face ``hold_seconds`` after the frame ``k`` before its onset still differs from that frame by more than
``hold_ratio`` times its peak motion is the onset of a held expression (a smile that rises fast and stays) and is
dropped (:func:`extract_intervals`).

Face tracking: the face is detected (:func:`mer_jax.data.face.detect_faces`, Haar cascade) every
``detect_seconds`` (every 0.1 s while it is missing); the box used at frame ``t`` is the per-coordinate median of
the last 3 detections (a smoothed track that ignores one-off jumps); both frames of a flow pair are cropped with
the box of the later frame, trimmed by ``inner`` per side (background, hair) and resized to ``flow_size`` px, so
amplitudes are in pixels of a ``flow_size``-px face whatever the resolution. Real recordings are not one steady
shot of a face: a face missed by every detection for ``absent_seconds`` has left the picture (from the first
missed detection on), and a shot cut (the frame's grey histogram jumps: Bhattacharyya distance to the previous
frame above ``cut_threshold``) ends the track and the flow pairs. Frames without a tracked face, and the first
``k`` frames after a cut or the face's return, are not *valid* (``MotionSignal.valid``): nothing is spotted there,
and they are left out of the noise scale. A video where no face is ever found gives no intervals.
Frames are first shrunk so that their longer side is at most ``work_side`` px (phone video: 1080p -> 640 px) and
only the last ``hold_seconds`` (plus ``step`` frames) of grey frames are kept: constant memory for any length.

At high frame rates the flow is computed on every ``step``-th frame only (``step = ceil(fps / max_rate)``), between
the means of the ``step`` frames ending at ``t`` and at ``t - k`` (less sensor noise), and the signal is
interpolated linearly to every frame.

Frame numbers in the output are 1-based and inclusive (as the annotations of the long-video datasets).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np

from mer_jax.data import face
from mer_jax.errors import ConfigError, DataError

FLOW_METHODS = ("farneback", "dis")
CELL_STATS = ("vector", "magnitude")


@dataclasses.dataclass(frozen=True)
class SpotParams:
  """Spotter settings (times in seconds, converted at each video's fps)."""

  k_seconds: float = 0.2  # flow offset: frame t vs frame t - k
  flow: str = "farneback"  # 'farneback' | 'dis'
  flow_size: int = 112  # face crop side for the flow, px
  inner: float = 0.15  # fraction of the face box trimmed off each side (background, hair)
  grid: int = 6  # cells per side of the face crop
  top_cells: int = 3  # the signal is the mean of the strongest cells
  eye_band: tuple[float, float] = (0.30, 0.48)  # rows (fraction of the crop) left out: blinks
  edge_columns: int = 1  # cell columns left out on each side (face contour against the background)
  top_rows: int = 1  # cell rows left out at the top (hairline)
  register: bool = True  # align frame t - k to frame t (ECC, affine) before the flow
  cell_stat: str = "vector"  # cell value: 'vector' (length of the mean flow) | 'magnitude' (mean length)
  detect_seconds: float = 1.0  # face re-detection period
  absent_seconds: float = 1.0  # no detection for this long: the face has left (nothing is spotted there)
  cut_threshold: float = 0.3  # shot cut: grey-histogram Bhattacharyya distance to the previous frame above this
  work_side: int = 640  # frames are shrunk to this longer side first
  max_rate: float = 60.0  # flow computed at most this many times per second
  smooth_seconds: float = 0.1  # moving average of the signal
  threshold: float = 5.0  # z above the noise floor
  merge_seconds: float = 0.2  # runs closer than this are one interval
  min_seconds: float = 0.1  # shorter intervals are dropped (annotated MEs last >= 0.15 s; 1-2 frames: glitches)
  lag_fraction: float = 0.5  # the offset is the run's end minus lag_fraction * k
  pad_seconds: float = 0.0  # the onset is moved this much earlier (the threshold cuts the rise)
  micro_max_seconds: float = 0.5  # micro-expression: duration <= this
  hold_seconds: float = 0.9  # the held-expression check compares the face this long after k before the onset
  hold_ratio: float = 0.5  # a micro candidate whose face is still that far from its pre-onset state is held: dropped
  macro_threshold: float = 5.0  # z threshold of the macro-expression scale
  macro_smooth_seconds: float = 0.3  # moving average of the macro-expression scale
  macro_merge_seconds: float = 0.3  # runs closer than this are one macro interval

  def validate(self) -> "SpotParams":
    """Raises ConfigError naming the bad setting."""
    if self.cell_stat not in CELL_STATS:
      raise ConfigError(f"spotter cell_stat={self.cell_stat!r}: expected one of {', '.join(CELL_STATS)}")
    if self.flow not in FLOW_METHODS:
      raise ConfigError(f"spotter flow={self.flow!r}: expected one of {', '.join(FLOW_METHODS)}")
    for name in (
      "k_seconds",
      "detect_seconds",
      "absent_seconds",
      "cut_threshold",
      "max_rate",
      "micro_max_seconds",
      "hold_seconds",
    ):
      if not getattr(self, name) > 0:
        raise ConfigError(f"spotter {name} must be > 0, got {getattr(self, name)}")
    if not 0 <= self.lag_fraction <= 1:
      raise ConfigError(f"spotter lag_fraction must be in [0, 1], got {self.lag_fraction}")
    for name in (
      "hold_ratio",
      "smooth_seconds",
      "merge_seconds",
      "min_seconds",
      "pad_seconds",
      "macro_smooth_seconds",
      "macro_merge_seconds",
    ):
      if not getattr(self, name) >= 0:
        raise ConfigError(f"spotter {name} must be >= 0, got {getattr(self, name)}")
    if not (self.flow_size >= 16 and self.grid >= 1 and 1 <= self.top_cells <= self.grid * self.grid):
      raise ConfigError(
        f"spotter flow_size {self.flow_size} (>= 16), grid {self.grid} (>= 1) and top_cells "
        f"{self.top_cells} (1..grid^2) out of range"
      )
    if not 0 <= 2 * self.edge_columns < self.grid:
      raise ConfigError(f"spotter edge_columns {self.edge_columns} leaves no column of a {self.grid}-cell grid")
    if not 0 <= self.top_rows < self.grid:
      raise ConfigError(f"spotter top_rows {self.top_rows} leaves no row of a {self.grid}-cell grid")
    if not 0 <= self.inner < 0.5:
      raise ConfigError(f"spotter inner must be in [0, 0.5), got {self.inner}")
    if self.work_side < 32:
      raise ConfigError(f"spotter work_side must be >= 32 px, got {self.work_side}")
    lo, hi = self.eye_band
    if not 0 <= lo <= hi <= 1:
      raise ConfigError(f"spotter eye_band {self.eye_band}: expected 0 <= low <= high <= 1")
    return self

  @classmethod
  def from_dict(cls, d: dict, where: str = "spotter parameters") -> "SpotParams":
    """From a JSON object (unknown keys are an error naming them)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    d = dict(d)
    if "eye_band" in d:
      d["eye_band"] = tuple(float(v) for v in d["eye_band"])
    try:
      params = cls(**d)
    except TypeError as e:
      raise ConfigError(f"{where}: {e}") from None
    try:
      return params.validate()
    except ConfigError as e:
      raise ConfigError(f"{where}: {e}") from None

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["eye_band"] = list(self.eye_band)
    return d


def k_frames(fps: float, params: SpotParams) -> int:
  """The flow offset in frames at ``fps`` (at least 1)."""
  return max(1, int(round(params.k_seconds * fps)))


def flow_step(fps: float, params: SpotParams) -> int:
  """Every how many frames the flow is computed at ``fps``."""
  return max(1, int(math.ceil(fps / params.max_rate - 1e-9)))


@dataclasses.dataclass
class MotionSignal:
  """What :func:`motion_signal` measured over one video (index i = frame i + 1)."""

  signal: np.ndarray  # [T] float32: residual flow magnitude, px at a flow_size-px face
  frame_diff: np.ndarray  # [T] float32: mean |grey(t) - grey(t-1)| in the face box, 0..255
  fps: float
  k: int  # flow offset, frames
  step: int  # flow computed every step-th frame
  face_found: bool  # False: no detection anywhere (nothing spotted)
  boxes: list  # [(frame number, x, y, size)] detections (working resolution)
  valid: Optional[np.ndarray] = None  # [T] bool: a tracked face and a flow pair inside one shot (None: all)
  face: Optional[np.ndarray] = None  # [T] bool: a face was tracked in the frame
  cuts: list = dataclasses.field(default_factory=list)  # frame numbers that start a new shot
  hold: Optional[np.ndarray] = None  # [T] float32: residual flow between frame t and frame t - hold_lag (NaN: none)
  hold_lag: int = 0  # frames
  scale: float = 1.0  # working resolution px per input px (boxes are in working px)

  def input_boxes(self) -> list[tuple[int, int, int, int]]:
    """``boxes`` in the input frames' pixels: [(frame number, x, y, size)]."""
    return [(f, *(int(round(v / self.scale)) for v in b)) for f, *b in self.boxes]

  def face_absent(self) -> list[tuple[int, int]]:
    """[(first, last)] 1-based inclusive frame ranges without a tracked face."""
    if self.face is None:
      return []
    return [(s + 1, e + 1) for s, e in runs(~self.face)]


def _grey_small(frame: np.ndarray, work_side: int) -> np.ndarray:
  """[H, W, C] / [H, W] uint8 or float -> [h, w] uint8 grey, longer side <= work_side."""
  g = face.to_gray_uint8(frame)
  h, w = g.shape
  s = work_side / max(h, w)
  if s < 1:
    g = cv2.resize(g, (max(1, int(round(w * s))), max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA)
  return g


def _mean_u8(frames: list) -> np.ndarray:
  """Mean of uint8 frames [h, w] (rounded), the frame itself for one."""
  if len(frames) == 1:
    return frames[0]
  return np.rint(np.mean(np.stack(frames), 0)).astype(np.uint8)


def _crop(g: np.ndarray, box: tuple[int, int, int], size: int, inner: float = 0.0) -> np.ndarray:
  x, y, s = box
  m = int(round(inner * s))
  c = g[y + m : y + s - m, x + m : x + s - m]
  s = c.shape[0]
  interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
  return cv2.resize(c, (size, size), interpolation=interp)


def _flow_fn(method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  if method == "dis":
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda a, b: dis.calc(a, b, None)
  return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def register(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
  """Warps ``prev`` [S, S] uint8 onto ``cur`` with the affine motion found by ECC (OpenCV ``findTransformECC``
  on lightly blurred images); unchanged when ECC does not converge."""
  w = np.eye(2, 3, dtype=np.float32)
  a = cv2.GaussianBlur(prev, (0, 0), 1.5).astype(np.float32)
  b = cv2.GaussianBlur(cur, (0, 0), 1.5).astype(np.float32)
  try:
    _, w = cv2.findTransformECC(
      b, a, w, cv2.MOTION_AFFINE, (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4), None, 1
    )
  except cv2.error:
    return prev
  return cv2.warpAffine(
    prev,
    w,
    (prev.shape[1], prev.shape[0]),
    flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
    borderMode=cv2.BORDER_REPLICATE,
  )


def _design(size: int, sub: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Pixel grid subsampled every ``sub`` px: (indices [P, 2] (row, col), affine design [P, 3])."""
  ys, xs = np.mgrid[sub // 2 : size : sub, sub // 2 : size : sub]
  ys, xs = ys.ravel(), xs.ravel()
  c = (size - 1) / 2
  a = np.stack([np.ones_like(xs, np.float64), (xs - c) / size, (ys - c) / size], 1)
  return np.stack([ys, xs], 1), a


def residual_flow(flow: np.ndarray, design: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """Removes the best affine motion of the face from a flow field.

  Args:
    flow: [S, S, 2] flow (dx, dy).
    design: :func:`_design` of S.
  Returns:
    [S, S, 2] flow minus the affine motion fitted by least squares on the subsampled points, refitted on the
    70 % of points with the smallest residual.
  """
  idx, a = design
  f = flow[idx[:, 0], idx[:, 1]].astype(np.float64)  # [P, 2]
  coef, *_ = np.linalg.lstsq(a, f, rcond=None)
  r = np.linalg.norm(f - a @ coef, axis=1)
  keep = r <= np.quantile(r, 0.7)
  if keep.sum() >= 6:
    coef, *_ = np.linalg.lstsq(a[keep], f[keep], rcond=None)
  s = flow.shape[0]
  ys, xs = np.mgrid[0:s, 0:s]
  c = (s - 1) / 2
  full = np.stack([np.ones((s, s)), (xs - c) / s, (ys - c) / s], -1)  # [S, S, 3]
  return flow - (full @ coef).astype(np.float32)


def cell_mask(params: SpotParams) -> np.ndarray:
  """[grid, grid] bool: the cells used (False: the cell's centre lies in the eye band, or the cell is in one of the
  ``edge_columns`` outer columns or the ``top_rows`` top rows)."""
  g = params.grid
  centres = (np.arange(g) + 0.5) / g
  rows = ~((centres >= params.eye_band[0]) & (centres <= params.eye_band[1]))
  rows[: params.top_rows] = False
  cols = np.zeros(g, bool)
  cols[params.edge_columns : g - params.edge_columns] = True
  return rows[:, None] & cols[None, :]


def frame_value(residual: np.ndarray, params: SpotParams, mask: np.ndarray) -> float:
  """[S, S, 2] residual flow -> mean of the ``top_cells`` largest cell values (masked cells left out).

  A cell's value is the length of its mean flow vector (``cell_stat='vector'``: noise averages out, a region
  moving together keeps its motion) or its mean flow length (``'magnitude'``).
  """
  s, g = residual.shape[0], params.grid
  edges = np.linspace(0, s, g + 1).round().astype(int)
  r = residual.astype(np.float64)
  if params.cell_stat == "vector":
    cells = np.array(
      [
        [np.linalg.norm(r[edges[i] : edges[i + 1], edges[j] : edges[j + 1]].mean((0, 1))) for j in range(g)]
        for i in range(g)
      ]
    )
  else:
    mag = np.sqrt((r**2).sum(-1))
    cells = np.array(
      [[mag[edges[i] : edges[i + 1], edges[j] : edges[j + 1]].mean() for j in range(g)] for i in range(g)]
    )
  v = cells[mask] if mask.any() else cells.ravel()
  top = min(params.top_cells, v.size)
  return float(np.sort(v)[-top:].mean())


def _histogram(g: np.ndarray) -> np.ndarray:
  """[h, w] uint8 -> [32, 1] float32 normalised grey histogram of the frame shrunk to 160 px wide."""
  h, w = g.shape
  if w > 160:
    g = cv2.resize(g, (160, max(1, int(round(h * 160 / w)))), interpolation=cv2.INTER_AREA)
  hist = cv2.calcHist([g], [0], None, [32], [0, 256])
  return hist / max(float(hist.sum()), 1.0)


def shot_change(prev_hist: np.ndarray, hist: np.ndarray) -> float:
  """Bhattacharyya distance (0 same, 1 disjoint) of two :func:`_histogram` outputs: head motion, blinks and
  expressions change a frame's grey histogram by ~0.01-0.1, a cut to another scene by ~0.5-1."""
  return float(cv2.compareHist(prev_hist, hist, cv2.HISTCMP_BHATTACHARYYA))


def motion_signal(
  frames: Iterable[np.ndarray],
  fps: float,
  params: SpotParams = SpotParams(),
  *,
  num_frames: Optional[int] = None,
  progress: Optional[Callable[[int, Optional[int]], None]] = None,
  name: str = "video",
) -> MotionSignal:
  """The per-frame motion signal of a video, streamed (constant memory).

  Face tracking: the face is detected every ``detect_seconds`` (every 0.1 s while it is missing); the box is the
  median of the last 3 detections. A face missing at every detection for ``absent_seconds`` has left: from the
  first missed detection until the next hit the frames have no face. A shot cut (:func:`shot_change` above
  ``cut_threshold``) ends the track: the face is detected afresh in the new shot and no flow pair spans the
  cut. Frames without a face, and the first ``k`` frames of each stretch with one (no flow pair yet), are not
  ``valid``: their signal is 0 and nothing is spotted there.

  Args:
    frames: an iterable of frames [H, W, C] or [H, W] (uint8, or float in [0, 1]), in order.
    fps: the video's frame rate.
    params: :class:`SpotParams`.
    num_frames: the number of frames if known (only for ``progress``).
    progress: called as ``progress(frames done, num_frames)`` after every frame.
    name: how error messages name the video (its file or folder).
  Returns:
    :class:`MotionSignal` with ``signal`` [T], ``frame_diff`` [T], ``valid`` [T], ``face`` [T] and ``cuts``.
  """
  params.validate()
  if not (fps and fps > 0 and math.isfinite(fps)):
    raise ConfigError(f"frame rate {fps!r} must be a positive number")
  k, step = k_frames(fps, params), flow_step(fps, params)
  detect_every = max(1, int(round(params.detect_seconds * fps)))
  recheck_every = max(1, int(round(0.1 * fps)))
  absent_after = max(1, int(round(params.absent_seconds * fps)))
  flow = _flow_fn(params.flow)
  design = _design(params.flow_size)
  mask = cell_mask(params)
  hold_lag = max(k + 1, int(round(params.hold_seconds * fps)))
  hold_every = max(step, int(round(0.1 * fps)))
  # the grey frames of the current shot and face track, enough for both signals (flow lags k and hold_lag)
  buf: collections.deque = collections.deque(maxlen=hold_lag + step)
  hold_t, hold_v, hold_ok = [], [], []
  dets: collections.deque = collections.deque(maxlen=3)
  box = None
  found = False
  boxes, cuts = [], []
  sig_t, sig_v, diff = [], [], []
  has_face: list[bool] = []
  pair: list[bool] = []  # a flow pair of this shot and face track ends at the frame
  next_check, miss_start = 0, None

  def pair_value(frames_now: list, lag: int) -> float:
    """The frame value of the residual flow from the frame ``lag`` before the newest to the newest, both cropped
    with the current box; at high fps each end is the mean of ``step`` frames (less sensor noise)."""
    cur = _crop(_mean_u8(frames_now[-step:]), box, params.flow_size, params.inner)
    n = len(frames_now)
    prev = _crop(_mean_u8(frames_now[max(0, n - lag - step) : n - lag]), box, params.flow_size, params.inner)
    if params.register:
      prev = register(prev, cur)
    return frame_value(residual_flow(flow(prev, cur), design), params, mask)

  prev_hist = None
  shape = None
  scale = 1.0
  for t, frame in enumerate(frames):
    g = _grey_small(np.asarray(frame), params.work_side)
    if shape is not None and shape != g.shape:
      raise DataError(
        f"{name}: frame {t + 1} has size {g.shape[1]}x{g.shape[0]} (working resolution), the previous "
        f"{shape[1]}x{shape[0]}; all frames of a video must have the same size"
      )
    if shape is None:
      scale = g.shape[1] / max(1, np.asarray(frame).shape[1])
    shape = g.shape
    hist = _histogram(g)
    if prev_hist is not None and shot_change(prev_hist, hist) > params.cut_threshold:
      cuts.append(t + 1)
      buf.clear()
      dets.clear()
      box, next_check, miss_start = None, t, None
    prev_hist = hist
    if t >= next_check:
      hits = face.detect_faces(g)
      if len(hits):
        found = True
        dets.append(face.square_box(hits[0], g.shape, face.DEFAULT_MARGIN))
        boxes.append((t + 1,) + tuple(int(v) for v in dets[-1]))
        b = np.median(np.array(dets), 0)
        size = int(round(b[2]))
        box = (int(round(min(max(b[0], 0), g.shape[1] - size))), int(round(min(max(b[1], 0), g.shape[0] - size))), size)
        miss_start, next_check = None, t + detect_every
      else:
        miss_start = t if miss_start is None else miss_start
        next_check = t + recheck_every
        if box is not None and t - miss_start + 1 >= absent_after:
          # the face has been gone since the first missed detection
          for i in range(miss_start, t):
            has_face[i] = pair[i] = hold_ok[i] = False
            diff[i] = 0.0
          box = None  # (the buffer is emptied just below)
          dets.clear()
    if box is None:
      has_face.append(False)
      pair.append(False)
      hold_ok.append(False)
      diff.append(0.0)
      buf.clear()
    else:
      buf.append(g)
      hold_ok.append(len(buf) >= hold_lag + 1)
      if len(buf) >= hold_lag + 1 and t % hold_every == 0:
        # the held-expression check's signal: the face now against the face hold_lag frames ago
        hold_t.append(t)
        hold_v.append(pair_value(list(buf), hold_lag))
      has_face.append(True)
      cur1 = _crop(g, box, params.flow_size, params.inner)
      diff.append(
        float(np.abs(cur1.astype(np.int16) - _crop(buf[-2], box, params.flow_size, params.inner)).mean())
        if len(buf) >= 2
        else 0.0
      )
      pair.append(len(buf) >= k + 1)
      if len(buf) >= k + 1 and t % step == 0:
        sig_t.append(t)
        sig_v.append(pair_value(list(buf), k))
    if progress is not None:
      progress(t + 1, num_frames)
  signal, valid = _per_frame(sig_t, sig_v, np.asarray(pair, bool))
  signal[~valid] = 0.0
  hold, hold_valid = _per_frame(hold_t, hold_v, np.asarray(hold_ok, bool))
  hold[~hold_valid] = np.nan
  return MotionSignal(
    signal=signal,
    frame_diff=np.asarray(diff, np.float32),
    fps=float(fps),
    k=k,
    step=step,
    face_found=found,
    boxes=boxes,
    valid=valid,
    face=np.asarray(has_face, bool),
    cuts=cuts,
    hold=hold,
    hold_lag=hold_lag,
    scale=scale,
  )


def _per_frame(ts: list, values: list, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Samples ``values`` taken at frames ``ts`` (every ``step``-th frame) -> ([T] float32 interpolated to every
  frame, [T] bool: ``ok`` and at or after the first sample kept). Samples at frames not ``ok`` (later found to
  have no face) are left out.
  """
  n = ok.size
  keep = [(t, v) for t, v in zip(ts, values) if ok[t]]
  if not keep:
    return np.zeros(n, np.float32), np.zeros(n, bool)
  kt, kv = (np.array(a) for a in zip(*keep))
  return np.interp(np.arange(n), kt, kv).astype(np.float32), ok & (np.arange(n) >= kt[0])


def spotter(frames: np.ndarray, fps: float, params: SpotParams = SpotParams()) -> np.ndarray:
  """The motion signal of an in-memory clip.

  Args:
    frames: [T, H, W, C] (or [T, H, W]) uint8 or float in [0, 1].
    fps: frame rate.
    params: :class:`SpotParams`.
  Returns:
    [T] float32 motion signal (:func:`motion_signal`).
  """
  return motion_signal(iter(frames), fps, params, num_frames=len(frames)).signal


@dataclasses.dataclass(frozen=True)
class SpottedInterval:
  """One spotted interval: 1-based inclusive frames."""

  onset: int
  apex: int
  offset: int
  type: str  # 'micro' | 'macro'
  score: float

  def as_dict(self, video: str, fps: float) -> dict:
    sec = lambda f: round((f - 1) / fps, 4)  # noqa: E731
    return {
      "video": video,
      "onset": self.onset,
      "apex": self.apex,
      "offset": self.offset,
      "onset_s": sec(self.onset),
      "apex_s": sec(self.apex),
      "offset_s": sec(self.offset),
      "type": self.type,
      "score": round(float(self.score), 4),
    }


def noise_z(
  signal: np.ndarray,
  fps: float,
  params: SpotParams,
  smooth_seconds: Optional[float] = None,
  valid: Optional[np.ndarray] = None,
) -> np.ndarray:
  """[T] signal -> [T] smoothed signal on the per-video noise scale (median 0, 1.4826 MAD = 1).

  ``smooth_seconds`` (default ``params.smooth_seconds``) is the moving-average length. ``valid`` [T] bool (default
  all): frames outside it are filled with the median of the valid ones before smoothing, left out of the median
  and MAD, and get z = -inf (never above a threshold).
  """
  s = np.asarray(signal, np.float64)
  v = np.ones(s.shape, bool) if valid is None else np.asarray(valid, bool)
  if v.shape != s.shape:
    raise ValueError(f"valid has shape {v.shape}, the signal {s.shape}")
  if not v.any():
    return np.full(s.shape, -np.inf)
  if not v.all():
    s = np.where(v, s, np.median(s[v]))
  smooth = params.smooth_seconds if smooth_seconds is None else smooth_seconds
  w = max(1, int(round(smooth * fps)))
  if w > 1 and s.size:
    s = np.convolve(np.pad(s, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, mode="valid")
  med = np.median(s[v])
  mad = 1.4826 * np.median(np.abs(s[v] - med))
  scale = max(mad, 1e-3 * max(abs(med), 1e-6), 1e-9)
  z = (s - med) / scale
  z[~v] = -np.inf
  return z


def runs(above: np.ndarray) -> list[tuple[int, int]]:
  """[T] bool -> [(start, end)] 0-based inclusive runs of True."""
  a = np.concatenate([[False], np.asarray(above, bool), [False]])
  d = np.diff(a.astype(np.int8))
  return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist()))


def _scale_intervals(
  z: np.ndarray, fps: float, k: int, threshold: float, merge_seconds: float, params: SpotParams
) -> list[SpottedInterval]:
  """Runs of ``z > threshold`` (merged, shifted, typed by duration) -> intervals.

  Runs are not merged across frames of z = -inf (no face, a cut), the onset is not padded into them, and a run
  that touches them is dropped (the motion runs into a cut or the face's absence, so its extent is unknown).
  """
  merge = int(round(merge_seconds * fps))
  merged: list[list[int]] = []
  for s, e in runs(z > threshold):
    if merged and s - merged[-1][1] - 1 <= merge and np.isfinite(z[merged[-1][1] + 1 : s]).all():
      merged[-1][1] = e
    else:
      merged.append([s, e])
  out = []
  min_len = int(round(params.min_seconds * fps))
  lag = int(round(params.lag_fraction * k))
  pad = int(round(params.pad_seconds * fps))
  for s, e in merged:
    if (s > 0 and not np.isfinite(z[s - 1])) or (e + 1 < z.size and not np.isfinite(z[e + 1])):
      continue  # the motion runs into a cut or the face's absence: its extent is unknown
    off = max(s, e - lag)
    on = max(0, s - pad)
    gone = np.flatnonzero(~np.isfinite(z[on:s]))
    if gone.size:
      on += int(gone[-1]) + 1
    if off - on + 1 < min_len:
      continue
    peak = s + int(np.argmax(z[s : e + 1]))
    apex = min(max(peak - k // 2, on), off)
    dur = (off - on + 1) / fps
    out.append(
      SpottedInterval(
        onset=on + 1,
        apex=apex + 1,
        offset=off + 1,
        type="micro" if dur <= params.micro_max_seconds + 1e-9 else "macro",
        score=float(z[s : e + 1].max()),
      )
    )
  return out


def extract_intervals(
  signal: np.ndarray,
  fps: float,
  params: SpotParams = SpotParams(),
  *,
  k: Optional[int] = None,
  valid: Optional[np.ndarray] = None,
  hold: Optional[np.ndarray] = None,
  hold_lag: int = 0,
) -> list[SpottedInterval]:
  """Intervals of a motion signal (module docstring), at two time scales.

  Micro-expressions come from the signal smoothed over ``smooth_seconds`` and thresholded at ``threshold``
  (runs merged over ``merge_seconds``; only runs of at most ``micro_max_seconds`` are kept); macro-expressions
  from the signal smoothed over ``macro_smooth_seconds`` and thresholded at ``macro_threshold`` (merged over
  ``macro_merge_seconds``; only runs longer than ``micro_max_seconds``). A micro interval overlapping a macro one
  is dropped (the rise or fall of the macro-expression). A run longer than ``micro_max_seconds`` at the micro
  scale that the macro scale misses is kept as a macro interval where it overlaps no other interval (the higher
  score first); micro-length runs of the macro scale are not used (the micro threshold alone decides what is a
  micro-expression). Intervals shorter than ``min_seconds`` are dropped.

  Held-expression check (with ``hold``): a micro-expression returns to neutral; a micro candidate whose face,
  ``hold_lag`` frames after the frame before its onset (past its offset), still differs from that frame by more
  than ``hold_ratio`` times the candidate's peak motion is the onset of a held expression (a smile that rises in
  0.2 s and stays) and is dropped. ``hold_ratio = 0`` turns the check off.

  Args:
    signal: [T] motion signal of :func:`motion_signal` (index i = frame i + 1).
    fps: frame rate.
    params: :class:`SpotParams`.
    k: the flow offset the signal was computed with (default: from ``params`` at ``fps``).
    valid: [T] bool, the frames where the signal means something (``MotionSignal.valid``: a tracked face and a
      flow pair inside one shot); default all. No interval reaches outside them.
    hold: [T] ``MotionSignal.hold`` (NaN where not measured); None: no held-expression check.
    hold_lag: the lag ``hold`` was measured with, frames.
  Returns:
    Intervals sorted by onset, 1-based inclusive frames.
  """
  k = k_frames(fps, params) if k is None else k
  at_micro = _scale_intervals(
    noise_z(signal, fps, params, valid=valid), fps, k, params.threshold, params.merge_seconds, params
  )
  at_macro = _scale_intervals(
    noise_z(signal, fps, params, params.macro_smooth_seconds, valid=valid),
    fps,
    k,
    params.macro_threshold,
    params.macro_merge_seconds,
    params,
  )
  overlaps = lambda i, others: any(i.onset <= m.offset and m.onset <= i.offset for m in others)  # noqa: E731
  macro = [i for i in at_macro if i.type == "macro"]
  micro = [i for i in at_micro if i.type == "micro" and not overlaps(i, macro)]
  if hold is not None and params.hold_ratio > 0:
    micro = [i for i in micro if not _held(i, signal, hold, hold_lag, k, params.hold_ratio)]
  # A motion longer than micro_max_seconds that the micro scale sees but the macro scale does not (its threshold
  # and smoothing are the macro-expression's) is kept as a macro-expression where no other interval overlaps it.
  for i in sorted((i for i in at_micro if i.type == "macro"), key=lambda i: -i.score):
    if not overlaps(i, macro + micro):
      macro.append(i)
  return sorted(micro + macro, key=lambda i: (i.onset, i.offset))


def _held(iv: SpottedInterval, signal: np.ndarray, hold: np.ndarray, hold_lag: int, k: int, ratio: float) -> bool:
  """Whether the face ``hold_lag`` frames after the frame before ``iv``'s onset is still far from that frame
  (``hold`` there above ``ratio`` x the interval's peak motion); False where it cannot be told (the check frame
  falls before the offset, past the end, or where ``hold`` was not measured)."""
  ref = iv.onset - 1 - k  # 0-based: k frames before the onset (a threshold starts a run late in the rise)
  check = ref + hold_lag  # hold[check] compares frame check with frame ref
  if ref < 0 or check <= iv.offset - 1 or check >= len(hold) or not np.isfinite(hold[check]):
    return False
  peak = float(np.max(signal[iv.onset - 1 : min(len(signal), iv.offset + k)]))
  return bool(hold[check] > ratio * peak)


def intervals_of(ms: "MotionSignal", params: SpotParams = SpotParams()) -> list[SpottedInterval]:
  """:func:`extract_intervals` of a :class:`MotionSignal` (its signal, k, valid frames and held-expression
  signal)."""
  return extract_intervals(ms.signal, ms.fps, params, k=ms.k, valid=ms.valid, hold=ms.hold, hold_lag=ms.hold_lag)


def frame_difference_intervals(
  frame_diff: np.ndarray, fps: float, *, micro_frames: int, macro_frames: int, n_micro: int, n_macro: int
) -> list[SpottedInterval]:
  """The baseline: fixed-length windows centred at the largest frame differences.

  Args:
    frame_diff: [T] mean |grey(t) - grey(t-1)| (:class:`MotionSignal`).
    fps: frame rate (unused but for symmetry with :func:`extract_intervals`).
    micro_frames / macro_frames: window lengths.
    n_micro / n_macro: how many windows of each type (at the highest peaks, non-overlapping per type).
  Returns:
    Intervals (1-based inclusive), micro windows then macro windows.
  """
  del fps
  d = np.asarray(frame_diff, np.float64)
  T = d.size
  out = []
  for typ, length, n in (("micro", micro_frames, n_micro), ("macro", macro_frames, n_macro)):
    length = max(1, min(int(length), T))
    taken = np.zeros(T, bool)
    for i in np.argsort(-d, kind="stable"):
      if n <= 0:
        break
      s = int(min(max(i - length // 2, 0), T - length))
      if taken[s : s + length].any():
        continue
      taken[s : s + length] = True
      n -= 1
      out.append(SpottedInterval(onset=s + 1, apex=int(i) + 1, offset=s + length, type=typ, score=float(d[i])))
  return out


def iter_intervals(intervals: Sequence[SpottedInterval], video: str, fps: float) -> list[dict]:
  """The JSON records of a video's intervals (``SpottedInterval.as_dict``)."""
  return [iv.as_dict(video, fps) for iv in intervals]
