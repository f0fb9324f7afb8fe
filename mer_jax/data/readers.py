"""Readers for the official distributions of the six datasets.

Each reader takes the folder the user unpacked and returns a :class:`ReadResult`:
:class:`~mer_jax.data.types.Sample` records (frame paths / pixels, onset / apex /
offset indices, the dataset's own lower-case label, fps), how many label rows or
items were read, and which were skipped and why.

Failure policy. A missing folder, a missing label file, or a label file without
the expected columns always raises :class:`~mer_jax.errors.DataError` (nothing
sensible can be read). A bad row or item (a label outside the dataset's
vocabulary, unparsable frame numbers, a frame listed but missing, an image that
is not a JPEG/PNG/BMP or does not decode) raises a DataError naming the file and
row, or, with ``skip_bad=True`` (config ``data.skip_bad_samples``), is recorded in
``ReadResult.skipped`` as ``(item, reason)`` so the summary can report it.

Image checks. Every listed frame must exist and start with a JPEG/PNG/BMP
signature; the key frames (onset, apex, offset and middle for clips; every image
for the image sets) are decoded with OpenCV. Reading stays fast on real data
(tens of thousands of frames) while a corrupt file is still caught by name.

Layouts (what each reader relied on is cited in its docstring):

* CASME II  ``CASME2-coding-*.xlsx`` + ``CASME2_RAW_selected/sub01/EP02_01f/img46.jpg``
  (or the cropped release ``Cropped/sub01/EP02_01f/reg_img46.jpg``), 200 fps.
* SAMM      ``SAMM_Micro_FACS_Codes_v2.xlsx`` (description rows above the table) +
  ``SAMM/006/006_1_2/006_05562.jpg``, grey, 200 fps.
* SMIC-HS   ``HS/s1/micro/negative/s1_ne_01/*.bmp``, 100 fps, no apex annotation.
* CK+       ``cohn-kanade-images/S005/001/S005_001_00000011.png`` +
  ``Emotion/S005/001/S005_001_00000011_emotion.txt`` (codes 0-7, peak = last frame).
* RAF-DB    ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/train_00001_aligned.jpg``.
* FER-2013  ``fer2013.csv`` with columns emotion, pixels, Usage.

Index conventions: clips hold the onset..offset frames (inclusive) in temporal
order, so ``onset == 0`` and ``offset == len(frame_paths) - 1``; ``apex`` indexes the
same tuple, ``None`` where not annotated (SMIC-HS) or missing ('/' in CASME II).
Image samples hold one frame (CK+: the peak frame, RAF-DB: the aligned image) or
``pixels`` (FER-2013 ``[48, 48]`` uint8) and no onset/apex/offset.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import warnings
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np

from mer_jax.data import mappings
from mer_jax.data.types import Sample
from mer_jax.errors import DataError

SKIP_HINT = "fix or remove it, or set data.skip_bad_samples=True to skip and count it"

MANUAL_DOWNLOAD_INSTRUCTIONS: dict[str, str] = {
  "casme2": (
    "CASME II is licensed by the Institute of Psychology, Chinese Academy of Sciences "
    "(http://casme.psych.ac.cn/casme/e2, request form). Unpack it and point data.roots.casme2 "
    "(the TFDS manual_dir) at the folder holding CASME2-coding-*.xlsx and CASME2_RAW_selected/ "
    "(or Cropped/), e.g. <dir>/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg."
  ),
  "samm": (
    "SAMM is licensed by Manchester Metropolitan University "
    "(http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php, licence agreement). Point "
    "data.roots.samm at the folder holding SAMM_Micro_FACS_Codes_v2.xlsx and SAMM/ "
    "(e.g. <dir>/SAMM/006/006_1_2/006_05562.jpg)."
  ),
  "smic": (
    "SMIC is licensed by the University of Oulu (https://www.oulu.fi/cmvs/node/41319, "
    "licence agreement). Point data.roots.smic at the folder holding HS/ "
    "(e.g. <dir>/HS/s1/micro/negative/s1_ne_01/image069015.bmp); only HS is read."
  ),
  "ck": (
    "CK+ is distributed by the University of Pittsburgh / CMU "
    "(https://www.jeffcohn.net/Resources/, agreement). Unpack extended-cohn-kanade-images and "
    "Emotion_labels and point data.roots.ck at the folder holding cohn-kanade-images/ and "
    "Emotion/ (nesting as in the zips is accepted)."
  ),
  "rafdb": (
    "RAF-DB is licensed by BUPT (http://www.whdeng.cn/RAF/model1.html, request by e-mail). "
    "Point data.roots.rafdb at the 'basic' folder holding EmoLabel/list_patition_label.txt "
    "and Image/aligned/."
  ),
  "fer2013": (
    "FER-2013 is distributed through Kaggle (challenges-in-representation-learning-facial-"
    "expression-recognition-challenge, fer2013.tar.gz). Point data.roots.fer2013 at the folder "
    "holding fer2013.csv (columns emotion, pixels, Usage)."
  ),
}


@dataclasses.dataclass
class ReadResult:
  """What a reader found: the samples, how many rows/items it read, and what it skipped."""

  samples: list[Sample]
  read: int
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class _Bad(Exception):
  """A bad row/item: becomes a DataError or a recorded skip."""


class _Collector:
  def __init__(self, skip_bad: bool):
    self.skip_bad = skip_bad
    self.samples: list[Sample] = []
    self.skipped: list[tuple[str, str]] = []
    self.read = 0
    self._seen: dict[tuple[str, str], int] = {}

  def bad(self, item: str, reason: str) -> None:
    if not self.skip_bad:
      raise DataError(f"{item}: {reason}; {SKIP_HINT}")
    self.skipped.append((item, reason))

  def add(self, sample: Sample) -> None:
    """Appends ``sample``; a repeated (subject, clip id) gets a '#2', '#3' ... suffix so clip ids
    stay unique keys (the frames and row are unchanged; ``source_row`` tells them apart)."""
    key = (sample.subject, sample.clip_id)
    n = self._seen.get(key, 0) + 1
    self._seen[key] = n
    if n > 1:
      sample = dataclasses.replace(sample, clip_id=f"{sample.clip_id}#{n}")
    self.samples.append(sample)

  def result(self) -> ReadResult:
    return ReadResult(samples=self.samples, read=self.read, skipped=self.skipped)


# ---------------------------------------------------------------------------- helpers

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"BM": "BMP"}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def _need_dir(path: str, what: str, dataset: str) -> str:
  if not os.path.isdir(path):
    why = "is not a folder" if os.path.exists(path) else "does not exist"
    raise DataError(f"{what} folder {path} {why}; {MANUAL_DOWNLOAD_INSTRUCTIONS[dataset]}")
  return path


def _first_existing(root: str, candidates: Sequence[str]) -> Optional[str]:
  for c in candidates:
    p = os.path.join(root, c)
    if os.path.exists(p):
      return p
  return None


def _check_image(path: str, decode: bool) -> None:
  """Raises _Bad when ``path`` is missing, not an image, or (decode=True) does not decode."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except FileNotFoundError:
    raise _Bad(f"frame {path} is listed but missing") from None
  except OSError as e:
    raise _Bad(f"cannot open image {path} ({e.strerror})") from None
  if not any(head.startswith(m) for m in _MAGIC):
    raise _Bad(f"image {path} is corrupt or not a JPEG/PNG/BMP file")
  if decode:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
      raise _Bad(f"image {path} is corrupt: OpenCV cannot decode it")


def _check_clip(paths: Sequence[str], key_indices: Iterable[Optional[int]]) -> None:
  keys = {i for i in key_indices if i is not None}
  keys.add(len(paths) // 2)
  for i, p in enumerate(paths):
    _check_image(p, decode=i in keys)


def _frames_by_number(folder: str) -> dict[int, str]:
  """Image files in ``folder`` keyed by the last number in their name (img46.jpg -> 46)."""
  out: dict[int, str] = {}
  for name in os.listdir(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in _IMAGE_EXT:
      continue
    m = re.search(r"(\d+)$", stem)
    if m:
      out[int(m.group(1))] = os.path.join(folder, name)
  return out


def _norm_col(name) -> str:
  return re.sub(r"[\s_\-]+", "", str(name or "")).lower()


def _read_xlsx_table(
  path: str, required: dict[str, tuple[str, ...]], max_header_row: int = 60
) -> tuple[list[tuple[int, dict[str, object]]], str]:
  """Rows of the first sheet whose header row holds every required column.

  ``required`` maps a key to accepted header spellings (compared without case, spaces,
  underscores). The header row is the first one (within ``max_header_row``) that has them
  all, so description rows above the table (SAMM) are skipped. Returns ``([(excel_row,
  {key: value})], sheet_name)``; rows whose cells are all empty are dropped.
  """
  import openpyxl  # local: only the xlsx readers need it

  try:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException ...
    raise DataError(
      f"cannot read {path} as an .xlsx workbook ({type(e).__name__}: {e}); "
      "re-extract the label file from the dataset release"
    ) from None
  try:
    ws = wb.worksheets[0]
    rows = list(ws.iter_rows(values_only=True))
  finally:
    wb.close()
  wanted = {k: {_norm_col(a) for a in v} for k, v in required.items()}
  best_missing, header_idx, colmap = None, None, {}
  for r, row in enumerate(rows[:max_header_row]):
    norm = [_norm_col(c) for c in row]
    found = {}
    for key, spellings in wanted.items():
      for j, c in enumerate(norm):
        if c in spellings:
          found[key] = j
          break
    missing = [k for k in required if k not in found]
    if not missing:
      header_idx, colmap = r, found
      break
    if found and (best_missing is None or len(missing) < len(best_missing)):
      best_missing = missing
  if header_idx is None:
    miss = best_missing or list(required)
    names = ", ".join(repr(required[k][0]) for k in miss)
    raise DataError(
      f"{path}: no header row with the columns {names} (looked at the first {max_header_row} "
      f"rows of sheet {ws.title!r}); is this the dataset's original coding file?"
    )
  out = []
  for r in range(header_idx + 1, len(rows)):
    row = rows[r]
    if row is None or all(c is None or str(c).strip() == "" for c in row):
      continue
    out.append((r + 1, {k: (row[j] if j < len(row) else None) for k, j in colmap.items()}))
  return out, ws.title


def _as_int(value, what: str) -> int:
  if isinstance(value, bool) or value is None:
    raise _Bad(f"{what} is empty or not a frame number ({value!r})")
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, float) and value.is_integer():
    return int(value)
  s = str(value).strip()
  if re.fullmatch(r"-?\d+(\.0+)?", s):
    return int(float(s))
  raise _Bad(f"{what} is not a frame number ({value!r})")


def _as_apex(value) -> Optional[int]:
  """Apex frame number; '/' (CASME II), '-1' (SAMM) or an empty cell mean not annotated."""
  if value is None or (isinstance(value, str) and value.strip() in ("", "/", "-")):
    return None
  a = _as_int(value, "ApexFrame")
  return None if a < 0 else a


def _label(dataset: str, raw, item: str) -> str:
  lab = mappings.normalize_label("" if raw is None else raw)
  if lab not in mappings.DATASET_LABELS[dataset]:
    raise _Bad(f"label {raw!r} is not a {dataset} label (known: {', '.join(mappings.DATASET_LABELS[dataset])})")
  return lab


def _clip_from_numbers(
  folder: str, onset: int, apex: Optional[int], offset: int
) -> tuple[tuple[str, ...], Optional[int]]:
  """Frame paths onset..offset (by the number in the file name) and apex as an index.

  An annotated apex outside onset..offset is kept as it is (an index < 0 or past the last
  frame): ``data.apex='annotated'`` then spots the apex and the build summary reports it
  (mer_jax.data.apex.choose_apex), rather than dropping the clip.
  """
  if not os.path.isdir(folder):
    raise _Bad(f"frame folder {folder} is missing")
  if offset < onset:
    raise _Bad(f"offset frame {offset} is before onset frame {onset}")
  frames = _frames_by_number(folder)
  paths = []
  for n in range(onset, offset + 1):
    if n not in frames:
      raise _Bad(f"frame {n} (onset..offset {onset}..{offset}) is listed but missing in {folder}")
    paths.append(frames[n])
  apex_i = None if apex is None else apex - onset
  _check_clip(paths, (0, apex_i, len(paths) - 1))
  return tuple(paths), apex_i


# ---------------------------------------------------------------------------- CASME II

CASME2_FRAME_DIRS = (
  "CASME2_RAW_selected",
  "CASME2-RAW-selected",
  "CASME2_RAW_selected/CASME2_RAW_selected",
  "Cropped",
  "CASME2_Cropped",
  "CASME2_Cropped/Cropped",
  "CASME2-Cropped/Cropped",
)
CASME2_COLUMNS = {
  "subject": ("Subject",),
  "filename": ("Filename",),
  "onset": ("OnsetFrame", "Onset Frame", "Onset"),
  "apex": ("ApexFrame", "Apex Frame", "Apex"),
  "offset": ("OffsetFrame", "Offset Frame", "Offset"),
  "emotion": ("Estimated Emotion", "Emotion"),
}


def read_casme2(root: str, *, skip_bad: bool = False) -> ReadResult:
  """CASME II (Yan et al., PLoS ONE 2014), 200 fps.

  Relied on: the release's coding sheet ``CASME2-coding-20140508.xlsx`` (first sheet, header
  row ``Subject, Filename, (blank), OnsetFrame, ApexFrame, OffsetFrame, (blank), Action Units,
  Estimated Emotion``; Subject as a number 1..26 or 'sub01'; ApexFrame '/' where the coders
  gave none) and the frame folders ``CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`` where the
  number is the frame number used in the sheet; the cropped release names them
  ``Cropped/sub01/EP02_01f/reg_img46.jpg``. Any ``CASME2-coding-*.xlsx`` in ``root`` is used.
  Samples: subject 'sub01', clip 'EP02_01f', frames onset..offset.
  """
  _need_dir(root, "CASME II", "casme2")
  sheets = sorted(glob.glob(os.path.join(root, "CASME2-coding-*.xlsx")))
  if not sheets:
    raise DataError(f"no CASME2-coding-*.xlsx label file in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['casme2']}")
  xlsx = sheets[-1]
  frames_root = _first_existing(root, CASME2_FRAME_DIRS)
  if frames_root is None:
    raise DataError(
      f"no frame folder ({' or '.join(CASME2_FRAME_DIRS[:4])}) in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['casme2']}"
    )
  return _read_coding_sheet(
    "casme2",
    xlsx,
    CASME2_COLUMNS,
    frames_root,
    subject_format="sub{:02d}",
    column_names=("OnsetFrame", "OffsetFrame"),
    fps=200.0,
    skip_bad=skip_bad,
  )


def _read_coding_sheet(
  dataset: str,
  xlsx: str,
  columns: dict,
  frames_root: str,
  *,
  subject_format: str,
  column_names: tuple[str, str],
  fps: float,
  skip_bad: bool,
) -> ReadResult:
  """Rows of a CASME II / SAMM coding sheet -> clip samples (frames onset..offset by frame number).

  ``subject_format`` turns a numeric Subject cell into the folder name (6 -> 'sub06' or '006');
  ``column_names`` are the onset/offset column names used in messages.
  """
  rows, _ = _read_xlsx_table(xlsx, columns)
  col = _Collector(skip_bad)
  for excel_row, v in rows:
    col.read += 1
    item = f"{os.path.basename(xlsx)} row {excel_row}"
    try:
      subj = v["subject"]
      if subj is None or str(subj).strip() == "":
        raise _Bad("Subject is empty")
      s = str(subj).strip()
      if re.fullmatch(r"\d+(\.0+)?", s):
        s = subject_format.format(int(float(s)))
      clip = str(v["filename"] or "").strip()
      if not clip:
        raise _Bad("Filename is empty")
      item = f"{item} ({s}/{clip})"
      label = _label(dataset, v["emotion"], item)
      onset = _as_int(v["onset"], column_names[0])
      offset = _as_int(v["offset"], column_names[1])
      apex = _as_apex(v["apex"])
      paths, apex_i = _clip_from_numbers(os.path.join(frames_root, s, clip), onset, apex, offset)
    except _Bad as e:
      col.bad(item, str(e))
      continue
    col.add(
      Sample(
        dataset=dataset,
        subject=s,
        clip_id=clip,
        label=label,
        frame_paths=paths,
        onset=0,
        apex=apex_i,
        offset=len(paths) - 1,
        fps=fps,
        source_row=item,
      )
    )
  return col.result()


# ---------------------------------------------------------------------------- SAMM

SAMM_COLUMNS = {
  "subject": ("Subject",),
  "filename": ("Filename",),
  "onset": ("Onset Frame", "OnsetFrame", "Onset"),
  "apex": ("Apex Frame", "ApexFrame", "Apex"),
  "offset": ("Offset Frame", "OffsetFrame", "Offset"),
  "emotion": ("Estimated Emotion", "Emotion"),
}


def read_samm(root: str, *, skip_bad: bool = False) -> ReadResult:
  """SAMM (Davison et al., IEEE TAC 2018), grey, 200 fps.

  Relied on: ``SAMM_Micro_FACS_Codes_v2.xlsx`` whose first sheet has description rows above
  the table (the header is on row 14 of the release: ``Subject, Filename, Inducement Code,
  Onset Frame, Apex Frame, Offset Frame, Duration, Type, Action Units, Notes, Estimated
  Emotion, Objective Classes``; we locate the header row by its column names), Subject as a
  number (6 -> '006'), Filename '006_1_2', and frames ``SAMM/006/006_1_2/006_05562.jpg`` whose
  trailing number is the frame number used in the sheet. The emotion 'Other' is kept as
  'other'. ``root`` may also be the ``SAMM`` frame folder itself.
  """
  _need_dir(root, "SAMM", "samm")
  sheets = sorted(glob.glob(os.path.join(root, "SAMM_Micro_FACS_Codes*.xlsx")))
  if not sheets:
    raise DataError(f"no SAMM_Micro_FACS_Codes_v2.xlsx label file in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['samm']}")
  xlsx = sheets[-1]
  frames_root = os.path.join(root, "SAMM") if os.path.isdir(os.path.join(root, "SAMM")) else root
  return _read_coding_sheet(
    "samm",
    xlsx,
    SAMM_COLUMNS,
    frames_root,
    subject_format="{:03d}",
    column_names=("Onset Frame", "Offset Frame"),
    fps=200.0,
    skip_bad=skip_bad,
  )


# ---------------------------------------------------------------------------- SMIC-HS


def read_smic(root: str, *, skip_bad: bool = False) -> ReadResult:
  """SMIC-HS (Li et al., FG 2013), 100 fps, no apex annotation.

  Relied on: the release's folder layout ``HS/s1/micro/{negative,positive,surprise}/s1_ne_01/``
  holding one image per frame (``image069015.bmp``; the cropped release ``reg_image*.bmp``),
  the label being the emotion folder; the folders hold the onset..offset frames. Subjects
  without a ``micro`` folder (SMIC-HS has recordings of 20 people, micro-expressions of 16)
  contribute nothing. ``root`` may be the folder holding ``HS`` or ``HS`` itself.
  """
  _need_dir(root, "SMIC", "smic")
  hs = os.path.join(root, "HS") if os.path.isdir(os.path.join(root, "HS")) else root
  subjects = sorted(
    (d for d in os.listdir(hs) if re.fullmatch(r"s\d+", d) and os.path.isdir(os.path.join(hs, d))),
    key=lambda d: int(d[1:]),
  )
  if not subjects:
    raise DataError(f"no subject folders HS/s1, HS/s2, ... in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['smic']}")
  col = _Collector(skip_bad)
  for s in subjects:
    micro = os.path.join(hs, s, "micro")
    if not os.path.isdir(micro):
      continue
    for emo in sorted(os.listdir(micro)):
      emo_dir = os.path.join(micro, emo)
      if not os.path.isdir(emo_dir):
        continue
      for clip in sorted(os.listdir(emo_dir)):
        clip_dir = os.path.join(emo_dir, clip)
        if not os.path.isdir(clip_dir):
          continue
        col.read += 1
        item = f"HS/{s}/micro/{emo}/{clip}"
        try:
          label = _label("smic", emo, item)
          frames = _frames_by_number(clip_dir)
          if not frames:
            raise _Bad(f"no frames (*.bmp/*.jpg/*.png) in {clip_dir}")
          paths = tuple(frames[k] for k in sorted(frames))
          _check_clip(paths, (0, len(paths) - 1))
        except _Bad as e:
          col.bad(item, str(e))
          continue
        col.add(
          Sample(
            dataset="smic",
            subject=s,
            clip_id=clip,
            label=label,
            frame_paths=paths,
            onset=0,
            apex=None,
            offset=len(paths) - 1,
            fps=100.0,
            source_row=item,
          )
        )
  return col.result()


# ---------------------------------------------------------------------------- CK+

CK_IMAGE_DIRS = ("cohn-kanade-images", "extended-cohn-kanade-images/cohn-kanade-images", "CK+/cohn-kanade-images")
CK_EMOTION_DIRS = ("Emotion", "Emotion_labels/Emotion", "CK+/Emotion")


def read_ck(root: str, *, skip_bad: bool = False) -> ReadResult:
  """CK+ (Lucey et al., CVPR-W 2010).

  Relied on: ``cohn-kanade-images/S005/001/S005_001_00000011.png`` (one folder per sequence,
  neutral first, peak last) and ``Emotion/S005/001/S005_001_00000011_emotion.txt`` holding one
  code as a float in text (``   3.0000000e+00``): 0 neutral, 1 anger, 2 contempt, 3 disgust,
  4 fear, 5 happy, 6 sadness, 7 surprise. Only the 327 sequences with an Emotion file are
  labelled and read; the frame named by the emotion file (the last, the peak) is the sample.
  """
  _need_dir(root, "CK+", "ck")
  img_root = _first_existing(root, CK_IMAGE_DIRS)
  emo_root = _first_existing(root, CK_EMOTION_DIRS)
  if img_root is None:
    raise DataError(f"no cohn-kanade-images/ folder in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['ck']}")
  if emo_root is None:
    raise DataError(f"no Emotion/ label folder in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['ck']}")
  files = sorted(glob.glob(os.path.join(emo_root, "*", "*", "*_emotion.txt")))
  if not files:
    raise DataError(f"no Emotion/S*/NNN/*_emotion.txt label files in {emo_root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['ck']}")
  col = _Collector(skip_bad)
  for f in files:
    col.read += 1
    rel = os.path.relpath(f, root)
    try:
      with open(f) as fh:
        text = fh.read().strip()
      try:
        code_f = float(text.split()[0])
      except (ValueError, IndexError):
        raise _Bad(f"does not hold an emotion code 0-7 (found {text[:40]!r})") from None
      if not code_f.is_integer() or int(code_f) not in mappings.CK_CODES:
        raise _Bad(f"emotion code {text!r} is outside 0-7")
      label = mappings.CK_CODES[int(code_f)]
      subj = os.path.basename(os.path.dirname(os.path.dirname(f)))
      seq = os.path.basename(os.path.dirname(f))
      stem = os.path.basename(f)[: -len("_emotion.txt")]
      seq_dir = os.path.join(img_root, subj, seq)
      if not os.path.isdir(seq_dir):
        raise _Bad(f"image sequence folder {seq_dir} is missing")
      peak = os.path.join(seq_dir, stem + ".png")
      _check_image(peak, decode=True)
    except _Bad as e:
      col.bad(rel, str(e))
      continue
    col.add(
      Sample(dataset="ck", subject=subj, clip_id=f"{subj}_{seq}", label=label, frame_paths=(peak,), source_row=rel)
    )
  return col.result()


# ---------------------------------------------------------------------------- RAF-DB


def read_rafdb(root: str, *, skip_bad: bool = False) -> ReadResult:
  """RAF-DB basic (Li & Deng, CVPR 2017 / TIP 2019).

  Relied on: ``EmoLabel/list_patition_label.txt`` (the release's spelling) with lines
  ``train_00001.jpg 5`` (labels 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness,
  6 anger, 7 neutral; 12271 train + 3068 test), and the aligned 100x100 faces
  ``Image/aligned/train_00001_aligned.jpg``. The split is the name prefix. ``root`` may be
  the 'basic' folder or its parent.
  """
  _need_dir(root, "RAF-DB", "rafdb")
  base = os.path.join(root, "basic") if os.path.isdir(os.path.join(root, "basic")) else root
  label_file = os.path.join(base, "EmoLabel", "list_patition_label.txt")
  if not os.path.isfile(label_file):
    raise DataError(f"label file {label_file} is missing; {MANUAL_DOWNLOAD_INSTRUCTIONS['rafdb']}")
  img_dir = _need_dir(os.path.join(base, "Image", "aligned"), "RAF-DB aligned image", "rafdb")
  col = _Collector(skip_bad)
  with open(label_file) as fh:
    lines = fh.read().splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    col.read += 1
    item = f"list_patition_label.txt line {n}"
    try:
      parts = line.split()
      if len(parts) != 2 or not parts[1].isdigit():
        raise _Bad(f"expected '<name>.jpg <label 1-7>', found {line.strip()[:60]!r}")
      name, code = parts[0], int(parts[1])
      item = f"{item} ({name})"
      if code not in mappings.RAFDB_CODES:
        raise _Bad(f"label {code} is outside 1-7")
      stem = os.path.splitext(name)[0]
      path = os.path.join(img_dir, stem + "_aligned.jpg")
      _check_image(path, decode=True)
    except _Bad as e:
      col.bad(item, str(e))
      continue
    split = "train" if stem.startswith("train") else "test" if stem.startswith("test") else ""
    col.add(
      Sample(
        dataset="rafdb",
        subject="",
        clip_id=stem,
        label=mappings.RAFDB_CODES[code],
        frame_paths=(path,),
        split=split,
        source_row=item,
      )
    )
  return col.result()


# ---------------------------------------------------------------------------- FER-2013


def read_fer2013(root: str, *, skip_bad: bool = False) -> ReadResult:
  """FER-2013 (Goodfellow et al., ICONIP 2013; Kaggle release).

  Relied on: ``fer2013.csv`` with header ``emotion,pixels,Usage``; emotion 0 angry, 1 disgust,
  2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral; pixels = 2304 space-separated 0-255 values
  (48x48 grey, row-major); Usage Training / PublicTest / PrivateTest (kept as ``split``).
  Clip ids are ``fer2013_00001`` .. by data row. ``root`` may be the csv's folder or
  contain ``fer2013/fer2013.csv``.
  """
  _need_dir(root, "FER-2013", "fer2013")
  csv_path = _first_existing(root, ("fer2013.csv", "fer2013/fer2013.csv"))
  if csv_path is None:
    raise DataError(f"label file fer2013.csv is missing in {root}; {MANUAL_DOWNLOAD_INSTRUCTIONS['fer2013']}")
  col = _Collector(skip_bad)
  with open(csv_path, newline="") as fh:
    reader = csv.DictReader(fh)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in ("emotion", "pixels", "Usage") if c not in fields]
    if missing:
      raise DataError(
        f"{csv_path}: missing column(s) {', '.join(missing)} (found {fields}); "
        "expected the Kaggle header 'emotion,pixels,Usage'"
      )
    reader.fieldnames = fields
    for n, row in enumerate(reader, 1):
      col.read += 1
      item = f"fer2013.csv data row {n}"
      try:
        code_s = (row.get("emotion") or "").strip()
        if not code_s.isdigit() or int(code_s) not in mappings.FER2013_CODES:
          raise _Bad(f"emotion {code_s!r} is not a code 0-6")
        text = (row.get("pixels") or "").strip()
        with warnings.catch_warnings():
          warnings.simplefilter("error")
          try:  # ~6x faster than int() per value on the 35,887-row release
            arr = np.fromstring(text, dtype=np.int64, sep=" ") if text else np.zeros(0, np.int64)
          except (ValueError, DeprecationWarning):
            raise _Bad("pixels holds a value that is not an integer") from None
        if arr.size != 48 * 48:
          raise _Bad(f"pixels holds {arr.size} values, expected 2304 (48x48)")
        if arr.min() < 0 or arr.max() > 255:
          raise _Bad("pixels holds a value outside 0-255")
      except _Bad as e:
        col.bad(item, str(e))
        continue
      col.add(
        Sample(
          dataset="fer2013",
          subject="",
          clip_id=f"fer2013_{n:05d}",
          label=mappings.FER2013_CODES[int(code_s)],
          pixels=arr.astype(np.uint8).reshape(48, 48),
          split=(row.get("Usage") or "").strip(),
          source_row=item,
        )
      )
  return col.result()


# ---------------------------------------------------------------------------- registry

READERS: dict[str, Callable[..., ReadResult]] = {
  "casme2": read_casme2,
  "samm": read_samm,
  "smic": read_smic,
  "ck": read_ck,
  "rafdb": read_rafdb,
  "fer2013": read_fer2013,
}


def read_dataset(name: str, root: str, *, skip_bad: bool = False) -> ReadResult:
  """Reads dataset ``name`` (casme2 | samm | smic | ck | rafdb | fer2013) from ``root``."""
  if name not in READERS:
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)}")
  if not root:
    raise DataError(f"no folder given for {name} (config data.roots.{name}); {MANUAL_DOWNLOAD_INSTRUCTIONS[name]}")
  return READERS[name](os.path.abspath(os.path.expanduser(root)), skip_bad=skip_bad)
