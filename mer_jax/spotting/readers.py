"""Readers for the two long-video spotting layouts: CAS(ME)^2 (long videos) and SAMM Long Videos.

Each reader returns a :class:`LongReadResult`: one :class:`LongVideo` per annotated video (subject,
video id, fps, the frame folder and its numbering rule, the annotated :class:`Interval` s), how many
annotation rows were read, which rows were skipped and why, and how many times each known quirk of
the release was repaired (:data:`REPAIRS`).

Frame numbers are the annotation's own: 1-based, onset..offset inclusive. A frame number ``n`` is the
image in the video's folder whose name ends in the number ``n`` (``img001.jpg`` and ``img1.jpg`` are both
frame 1), the rule of :mod:`mer_jax.data.readers`.

Layouts relied on (docs/spotting.md gives the sources):

* CAS(ME)^2, 30 fps: ``CAS(ME)^2code_final.xlsx``. The first sheet has no header; its columns are
  subject index, expression name (``anger1_1``: video ``anger1``, expression 1), onset, apex, offset,
  action units, emotion (negative / positive / surprise / others), type (``macro-expression`` /
  ``micro-expression``), self-report. Two more sheets ("naming rule1", "naming rule2") map the subject
  index to the subject folder (``s15``) and the video name to its numeric code (``anger1`` ->
  ``0401``). Frames: ``rawpic/s15/15_0401<stimulus>/img001.jpg``. Video id: ``15_0401``.
  Quirk: offset 0 (44 macro rows of the release) -> offset := apex.
* SAMM Long Videos, 200 fps: ``SAMM_LongVideos_V*_Release.xlsx``, sheet ``FACS_Movement_Only``, header
  row below description rows (row 10 of the release): Subject, Filename (``006_1_3``: video ``006_1``,
  movement 3), Inducement Code, Onset, Apex, Offset, Duration, Type (``Macro`` / ``Micro - 1/2``),
  Action Units, Notes. No emotion. Frames: ``SAMM_longvideos/006_1/006_1_00001.jpg`` (folder and file
  names are not verified against the release: any image whose name ends in the frame number is used).
  Quirks: apex -1 (not coded) -> apex None; onset 0 -> onset := 1 (the first frame).

Failure policy (that of :mod:`mer_jax.data.readers`): a missing folder, annotation file, sheet or column
raises :class:`~mer_jax.errors.DataError` naming the file and the fix; a bad row (unknown type or emotion,
a frame number that is not a number, offset before onset, a frame folder or frame that is missing) raises
a DataError naming the row, or with ``skip_bad=True`` is recorded in ``skipped`` and left out.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import glob
import os
import re
from typing import Optional

from mer_jax.data.readers import SKIP_HINT, _as_int, _Bad, _check_image, _frames_by_number, _norm_col
from mer_jax.errors import DataError

CAS_LONG = "cas_long"
SAMM_LV = "samm_lv"
DATASETS = (CAS_LONG, SAMM_LV)
DISPLAY_NAMES = {CAS_LONG: "CAS(ME)^2", SAMM_LV: "SAMM-LV"}
FPS = {CAS_LONG: 30.0, SAMM_LV: 200.0}
TYPES = ("micro", "macro")
CAS_EMOTIONS = ("negative", "positive", "surprise", "others")

CAS_XLSX = "CAS(ME)^2code_final.xlsx"
CAS_FRAME_DIRS = ("rawpic", "CAS(ME)^2/rawpic", "CAS(ME)2/rawpic", "rawpic_aligned")
SAMM_XLSX_GLOB = "SAMM_LongVideos_V*_Release.xlsx"
SAMM_SHEET = "FACS_Movement_Only"
SAMM_FRAME_DIRS = ("SAMM_longvideos", "SAMM_LongVideos", "rawpic", ".")
SAMM_COLUMNS = {
  "subject": ("Subject",),
  "filename": ("Filename",),
  "onset": ("Onset", "Onset Frame"),
  "apex": ("Apex", "Apex Frame"),
  "offset": ("Offset", "Offset Frame"),
  "type": ("Type",),
  "aus": ("Action Units",),
}

# Quirks repaired by the readers (key -> what was done); LongReadResult.repairs counts them.
REPAIRS = {
  "offset_0_set_to_apex": "CAS(ME)^2: offset 0 (not coded) replaced by the apex frame",
  "apex_not_coded": "apex -1 / empty / '/' read as not annotated (apex None)",
  "onset_0_set_to_1": "SAMM-LV: onset 0 replaced by 1, the first frame",
  "apex_outside_interval": "apex outside onset..offset: kept as annotated",
  "duplicate_row": "a row repeating another row's video, type, onset and offset: kept",
}

DOWNLOAD = {
  CAS_LONG: (
    "CAS(ME)^2 is licensed by the Institute of Psychology, Chinese Academy of Sciences "
    "(http://casme.psych.ac.cn, request form). Point at the folder holding "
    f"{CAS_XLSX} and rawpic/ (e.g. <dir>/rawpic/s15/15_0101disgustingteeth/img001.jpg)."
  ),
  SAMM_LV: (
    "SAMM Long Videos are licensed by Manchester Metropolitan University (licence agreement). "
    "Point at the folder holding SAMM_LongVideos_V2_Release.xlsx (sheet FACS_Movement_Only) and "
    "the video folders (e.g. <dir>/SAMM_longvideos/006_1/)."
  ),
}


@dataclasses.dataclass(frozen=True)
class Interval:
  """One annotated expression: 1-based inclusive frame numbers of its video."""

  onset: int
  offset: int
  apex: Optional[int]  # None: not coded
  type: str  # 'micro' | 'macro'
  emotion: Optional[str] = None  # CAS(ME)^2: negative / positive / surprise / others; SAMM-LV: None
  aus: str = ""
  name: str = ""  # the annotation's own id: 'anger1_1', '006_1_3'
  source_row: str = ""  # 'CAS(ME)^2code_final.xlsx row 12'
  repairs: tuple[str, ...] = ()  # keys of REPAIRS applied to this row

  @property
  def length(self) -> int:
    return self.offset - self.onset + 1


@dataclasses.dataclass(frozen=True)
class LongVideo:
  """One long video and its annotated intervals (sorted by onset, then offset)."""

  dataset: str  # CAS_LONG | SAMM_LV
  subject: str  # 's15', '006'
  video: str  # '15_0401', '006_1' (unique within the dataset)
  fps: float
  intervals: tuple[Interval, ...]
  name: str = ""  # CAS(ME)^2: the video's name ('anger1'); SAMM-LV: the video id
  frame_dir: Optional[str] = None  # absolute; None when only the annotation file was read
  num_frames: Optional[int] = None  # highest frame number in frame_dir

  @property
  def aliases(self) -> tuple[str, ...]:
    """Other spellings a prediction file may use for this video."""
    out = [f"{self.subject}/{self.video}"]
    if self.name and self.name != self.video:
      out.append(f"{self.subject}_{self.name}")
    if self.frame_dir:
      base = os.path.basename(self.frame_dir)
      out += [base, f"{self.subject}/{base}"]
    return tuple(dict.fromkeys(a for a in out if a != self.video))

  def frame_paths(self) -> dict[int, str]:
    """Frame number (1-based) -> image path; the numbering rule of the module docstring."""
    if self.frame_dir is None:
      raise DataError(
        f"video {self.video}: no frame folder was read (read the dataset folder, not only the annotation file)"
      )
    return _frames_by_number(self.frame_dir)


@dataclasses.dataclass
class LongReadResult:
  """What a long-video reader found."""

  dataset: str
  annotation_file: str
  videos: list[LongVideo]
  read: int  # annotation rows read
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  repairs: dict[str, int] = dataclasses.field(default_factory=dict)

  def intervals(self, type_: Optional[str] = None) -> list[tuple[LongVideo, Interval]]:
    return [(v, i) for v in self.videos for i in v.intervals if type_ is None or i.type == type_]

  def counts(self) -> dict:
    """{'videos', 'subjects', 'micro', 'macro', 'read', 'skipped'} for summaries."""
    return {
      "videos": len(self.videos),
      "subjects": len({v.subject for v in self.videos}),
      "micro": len(self.intervals("micro")),
      "macro": len(self.intervals("macro")),
      "read": self.read,
      "skipped": len(self.skipped),
    }


# ---------------------------------------------------------------------------- helpers


def _load_workbook_rows(path: str) -> dict[str, list[tuple]]:
  """{sheet name: rows (tuples of cell values)} of an .xlsx file, in sheet order."""
  import openpyxl  # local: only the xlsx readers need it

  if not os.path.isfile(path):
    raise DataError(f"annotation file {path} does not exist; give the dataset's .xlsx annotation file")
  try:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException ...
    raise DataError(
      f"cannot read {path} as an .xlsx workbook ({type(e).__name__}: {e}); "
      "re-extract the annotation file from the dataset release"
    ) from None
  try:
    return {ws.title: [tuple(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets}
  finally:
    wb.close()


def _blank(row) -> bool:
  return row is None or all(c is None or str(c).strip() == "" for c in row)


def _cell(row: tuple, j: int):
  return row[j] if j < len(row) else None


def _text(v) -> str:
  return "" if v is None else str(v).strip()


class _Acc:
  """Collects intervals per video, skips and repair counts."""

  def __init__(self, skip_bad: bool):
    self.skip_bad = skip_bad
    self.read = 0
    self.skipped: list[tuple[str, str]] = []
    self.repairs: collections.Counter = collections.Counter()
    self.videos: dict[str, dict] = {}
    self._keys: set = set()

  def bad(self, item: str, reason: str) -> None:
    if not self.skip_bad:
      raise DataError(f"{item}: {reason}; {SKIP_HINT}")
    self.skipped.append((item, reason))

  def add(self, subject: str, video: str, name: str, iv: Interval) -> None:
    key = (video, iv.type, iv.onset, iv.offset)
    if key in self._keys:
      iv = dataclasses.replace(iv, repairs=iv.repairs + ("duplicate_row",))
    self._keys.add(key)
    for r in iv.repairs:
      self.repairs[r] += 1
    v = self.videos.setdefault(video, {"subject": subject, "name": name, "intervals": []})
    v["intervals"].append(iv)


def _frame_numbers(
  onset_v, apex_v, offset_v, *, offset_0_is_apex: bool, onset_0_is_1: bool
) -> tuple[int, Optional[int], int, tuple[str, ...]]:
  """Parses and repairs onset / apex / offset cells; raises _Bad on a bad row."""
  repairs = []
  onset = _as_int(onset_v, "onset")
  offset = _as_int(offset_v, "offset")
  apex: Optional[int]
  if apex_v is None or (isinstance(apex_v, str) and apex_v.strip() in ("", "/", "-")):
    apex = None
  else:
    apex = _as_int(apex_v, "apex")
  if apex is not None and apex < 0:
    apex = None
  if apex is None:
    repairs.append("apex_not_coded")
  if offset == 0 and offset_0_is_apex:
    if apex is None or apex < onset:
      raise _Bad(f"offset is 0 and the apex ({apex}) cannot replace it")
    offset = apex
    repairs.append("offset_0_set_to_apex")
  if onset == 0 and onset_0_is_1:
    onset = 1
    repairs.append("onset_0_set_to_1")
  if onset < 1:
    raise _Bad(f"onset {onset} is not a frame number (frames are numbered from 1)")
  if offset < onset:
    raise _Bad(f"offset {offset} is before onset {onset}")
  if apex is not None and not onset <= apex <= offset:
    repairs.append("apex_outside_interval")
  return onset, apex, offset, tuple(repairs)


def _attach_frames(acc: _Acc, dataset: str, frames_root: Optional[str], folder_of) -> list[LongVideo]:
  """Builds LongVideo records; with ``frames_root`` finds each video's folder (``folder_of(video, info)``
  -> path or None) and checks that every interval's frames exist (key frames decoded)."""
  out = []
  for vid in sorted(acc.videos):
    info = acc.videos[vid]
    ivs = tuple(sorted(info["intervals"], key=lambda i: (i.onset, i.offset, i.type)))
    frame_dir, n = None, None
    if frames_root is not None:
      item = f"video {vid} ({len(ivs)} intervals: {', '.join(i.source_row for i in ivs[:3])}" + (
        ", ...)" if len(ivs) > 3 else ")"
      )
      try:
        frame_dir = folder_of(vid, info)
        if frame_dir is None:
          raise _Bad(f"its frame folder is missing under {frames_root}")
        frames = _frames_by_number(frame_dir)
        if not frames:
          raise _Bad(f"no frames (*.jpg/*.png/*.bmp) in {frame_dir}")
        n = max(frames)
        for iv in ivs:
          for f in range(iv.onset, iv.offset + 1):
            if f not in frames:
              raise _Bad(
                f"frame {f} of {iv.source_row} (onset..offset {iv.onset}..{iv.offset}) is missing in {frame_dir}"
              )
          for f in {iv.onset, iv.offset} | ({iv.apex} if iv.apex in frames else set()):
            _check_image(frames[f], decode=True)
      except _Bad as e:
        acc.bad(item, str(e))
        continue
    out.append(
      LongVideo(
        dataset=dataset,
        subject=info["subject"],
        video=vid,
        fps=FPS[dataset],
        intervals=ivs,
        name=info["name"],
        frame_dir=frame_dir,
        num_frames=n,
      )
    )
  return out


# ---------------------------------------------------------------------------- CAS(ME)^2


def _naming_rules(path: str, sheets: dict[str, list[tuple]]) -> tuple[dict[int, str], dict[str, str]]:
  """Subject index -> 's15' and video name -> '0401' from the two naming-rule sheets.

  The sheets are found by name ('rule1' / 'rule2' in it) or else as the 2nd and 3rd sheet; within a
  row the cells are recognised by content (an ``s<digits>`` cell and an integer cell; a 4-digit code
  and a name like ``anger1``), so the column order does not matter.
  """
  names = list(sheets)

  def find(tag: str, pos: int) -> str:
    for n in names:
      if tag in _norm_col(n):
        return n
    if len(names) > pos:
      return names[pos]
    raise DataError(
      f"{path}: no sheet 'naming {tag}' (sheets: {', '.join(names)}); it maps "
      "subject indices and video names to the rawpic/ folder names. Use the release's "
      f"{CAS_XLSX}"
    )

  rule1, rule2 = find("rule1", 1), find("rule2", 2)
  subj: dict[int, str] = {}
  for row in sheets[rule1]:
    folder = next((_text(c) for c in row if re.fullmatch(r"s\d+", _text(c))), None)
    idx = next((int(float(_text(c))) for c in row if re.fullmatch(r"\d+(\.0+)?", _text(c))), None)
    if folder is not None and idx is not None:
      subj[idx] = folder
  codes: dict[str, str] = {}
  for row in sheets[rule2]:
    code = next((_text(c).split(".")[0].zfill(4) for c in row if re.fullmatch(r"\d{1,4}(\.0+)?", _text(c))), None)
    name = next((_text(c) for c in row if re.fullmatch(r"[A-Za-z]+\d*", _text(c))), None)
    if code is not None and name is not None:
      codes[name.lower()] = code
  if not subj:
    raise DataError(f"{path}: sheet {rule1!r} holds no 'index, s15' rows; use the release's {CAS_XLSX}")
  if not codes:
    raise DataError(f"{path}: sheet {rule2!r} holds no '0401, anger1' rows; use the release's {CAS_XLSX}")
  return subj, codes


def read_cas_long_annotations(
  xlsx: str, *, skip_bad: bool = False, frames_root: Optional[str] = None
) -> LongReadResult:
  """CAS(ME)^2 long videos from ``CAS(ME)^2code_final.xlsx`` (layout in the module docstring).

  Args:
    xlsx: the annotation file.
    skip_bad: record bad rows in ``skipped`` instead of raising.
    frames_root: the ``rawpic`` folder; None reads the annotation only (``frame_dir`` None).
  Returns:
    LongReadResult with one LongVideo per (subject, video name), ids ``15_0401``.
  """
  sheets = _load_workbook_rows(xlsx)
  names = list(sheets)
  rows = sheets[names[0]]
  width = max((len(r) for r in rows if not _blank(r)), default=0)
  if width < 8:
    raise DataError(
      f"{xlsx}: the first sheet {names[0]!r} has {width} columns, expected 9 without a header "
      "(subject index, name, onset, apex, offset, AUs, emotion, type, self-report); "
      f"use the release's {CAS_XLSX}"
    )
  subj_map, code_map = _naming_rules(xlsx, sheets)
  acc = _Acc(skip_bad)
  base = os.path.basename(xlsx)
  for r, row in enumerate(rows, 1):
    if _blank(row):
      continue
    if r == 1 and "onset" in _norm_col(_cell(row, 2)):  # a header row some copies add
      continue
    acc.read += 1
    item = f"{base} row {r}"
    try:
      idx_s, name = _text(_cell(row, 0)), _text(_cell(row, 1))
      if not re.fullmatch(r"\d+(\.0+)?", idx_s):
        raise _Bad(f"subject index {_cell(row, 0)!r} is not a number")
      m = re.fullmatch(r"([A-Za-z]+\d*)_(\d+)", name)
      if not m:
        raise _Bad(f"expression name {name!r} is not '<video>_<n>' like 'anger1_1'")
      item = f"{item} ({name})"
      idx = int(float(idx_s))
      if idx not in subj_map:
        raise _Bad(f"subject index {idx} is not in the naming rule1 sheet")
      vname = m.group(1).lower()
      if vname not in code_map:
        raise _Bad(f"video name {m.group(1)!r} is not in the naming rule2 sheet")
      kind = _norm_col(_cell(row, 7))
      if kind not in ("microexpression", "macroexpression"):
        raise _Bad(f"type {_cell(row, 7)!r} is neither 'micro-expression' nor 'macro-expression'")
      emotion = _text(_cell(row, 6)).lower()
      if emotion not in CAS_EMOTIONS:
        raise _Bad(f"emotion {_cell(row, 6)!r} is not one of {', '.join(CAS_EMOTIONS)}")
      onset, apex, offset, rep = _frame_numbers(
        _cell(row, 2), _cell(row, 3), _cell(row, 4), offset_0_is_apex=True, onset_0_is_1=False
      )
    except _Bad as e:
      acc.bad(item, str(e))
      continue
    subject = subj_map[idx]
    video = f"{int(subject[1:])}_{code_map[vname]}"
    acc.add(
      subject,
      video,
      vname,
      Interval(
        onset=onset,
        offset=offset,
        apex=apex,
        type=kind[:5],
        emotion=emotion,
        aus=_text(_cell(row, 5)),
        name=name,
        source_row=f"{base} row {r}",
        repairs=rep,
      ),
    )

  def folder_of(video: str, info: dict) -> Optional[str]:
    d = os.path.join(frames_root, info["subject"])
    if not os.path.isdir(d):
      return None
    hits = sorted(
      n for n in os.listdir(d) if re.match(re.escape(video) + r"(?!\d)", n) and os.path.isdir(os.path.join(d, n))
    )
    return os.path.join(d, hits[0]) if hits else None

  videos = _attach_frames(acc, CAS_LONG, frames_root, folder_of)
  return LongReadResult(CAS_LONG, xlsx, videos, acc.read, acc.skipped, dict(acc.repairs))


# ---------------------------------------------------------------------------- SAMM-LV


def _find_header(
  path: str, sheet: str, rows: list[tuple], required: dict, max_row: int = 40
) -> tuple[int, dict[str, int]]:
  wanted = {k: {_norm_col(a) for a in v} for k, v in required.items()}
  best: Optional[list] = None
  for r, row in enumerate(rows[:max_row]):
    norm = [_norm_col(c) for c in row]
    found = {k: next((j for j, c in enumerate(norm) if c in sp), None) for k, sp in wanted.items()}
    missing = [k for k, j in found.items() if j is None]
    if not missing:
      return r, found
    if len(missing) < len(required) and (best is None or len(missing) < len(best)):
      best = missing
  miss = best or list(required)
  raise DataError(
    f"{path}: sheet {sheet!r} has no header row with the column(s) "
    f"{', '.join(repr(required[k][0]) for k in miss)} (looked at the first {max_row} rows); "
    "is this the release's SAMM_LongVideos_V*_Release.xlsx?"
  )


def read_samm_lv_annotations(xlsx: str, *, skip_bad: bool = False, frames_root: Optional[str] = None) -> LongReadResult:
  """SAMM Long Videos from ``SAMM_LongVideos_V*_Release.xlsx`` (layout in the module docstring).

  Args:
    xlsx: the annotation file.
    skip_bad: record bad rows in ``skipped`` instead of raising.
    frames_root: the folder holding the video folders (``006_1/``); None reads the annotation only.
  Returns:
    LongReadResult with one LongVideo per video ``006_1`` (subject ``006``).
  """
  sheets = _load_workbook_rows(xlsx)
  if SAMM_SHEET not in sheets:
    raise DataError(
      f"{xlsx} has no sheet {SAMM_SHEET!r} (sheets: {', '.join(sheets)}); use the release's "
      "SAMM_LongVideos_V*_Release.xlsx"
    )
  rows = sheets[SAMM_SHEET]
  h, col = _find_header(xlsx, SAMM_SHEET, rows, SAMM_COLUMNS)
  acc = _Acc(skip_bad)
  base = os.path.basename(xlsx)
  for r in range(h + 1, len(rows)):
    row = rows[r]
    if _blank(row):
      continue
    acc.read += 1
    item = f"{base} row {r + 1}"
    get = lambda k, row=row: _cell(row, col[k])  # noqa: E731
    try:
      s = _text(get("subject"))
      if not re.fullmatch(r"\d+(\.0+)?", s):
        raise _Bad(f"Subject {get('subject')!r} is not a number")
      subject = f"{int(float(s)):03d}"
      name = _text(get("filename"))
      m = re.fullmatch(r"(\d+)_(\w+?)_(\d+)", name)
      if not m:
        raise _Bad(f"Filename {name!r} is not '<subject>_<video>_<n>' like '006_1_3'")
      item = f"{item} ({name})"
      if int(m.group(1)) != int(subject):
        raise _Bad(f"Filename {name!r} does not start with the Subject {subject}")
      t = _norm_col(get("type"))
      if t.startswith("micro"):
        kind = "micro"
      elif t.startswith("macro"):
        kind = "macro"
      else:
        raise _Bad(f"Type {get('type')!r} is neither 'Macro' nor 'Micro - 1/2'")
      onset, apex, offset, rep = _frame_numbers(
        get("onset"), get("apex"), get("offset"), offset_0_is_apex=False, onset_0_is_1=True
      )
    except _Bad as e:
      acc.bad(item, str(e))
      continue
    video = f"{m.group(1)}_{m.group(2)}"
    acc.add(
      subject,
      video,
      video,
      Interval(
        onset=onset,
        offset=offset,
        apex=apex,
        type=kind,
        emotion=None,
        aus=_text(get("aus")),
        name=name,
        source_row=f"{base} row {r + 1}",
        repairs=rep,
      ),
    )

  def folder_of(video: str, info: dict) -> Optional[str]:
    for d in (os.path.join(frames_root, video), os.path.join(frames_root, info["subject"], video)):
      if os.path.isdir(d):
        return d
    return None

  videos = _attach_frames(acc, SAMM_LV, frames_root, folder_of)
  return LongReadResult(SAMM_LV, xlsx, videos, acc.read, acc.skipped, dict(acc.repairs))


# ---------------------------------------------------------------------------- dispatch


def detect(path: str) -> str:
  """CAS_LONG or SAMM_LV for an annotation file or a dataset folder (by file names; a file named neither
  ``SAMM*`` nor ``CAS*``: SAMM_LV when it has a FACS_Movement_Only sheet)."""
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, CAS_XLSX)):
      return CAS_LONG
    if glob.glob(os.path.join(path, SAMM_XLSX_GLOB)):
      return SAMM_LV
    raise DataError(
      f"{path} holds neither {CAS_XLSX} nor {SAMM_XLSX_GLOB}; point at the CAS(ME)^2 or SAMM "
      "Long Videos folder, or at its annotation file"
    )
  if not os.path.isfile(path):
    raise DataError(f"annotation file or folder {path} does not exist")
  if not path.lower().endswith(".xlsx"):
    raise DataError(
      f"{path} is not an .xlsx annotation file; give {CAS_XLSX}, SAMM_LongVideos_V*_Release.xlsx or the dataset folder"
    )
  name = os.path.basename(path)
  if fnmatch.fnmatch(name, SAMM_XLSX_GLOB) or name.lower().startswith("samm"):
    return SAMM_LV
  if name == CAS_XLSX or name.lower().startswith("cas"):
    return CAS_LONG
  return SAMM_LV if SAMM_SHEET in _load_workbook_rows(path) else CAS_LONG


def read_long(path: str, *, skip_bad: bool = False, annotations_only: bool = False) -> LongReadResult:
  """Reads CAS(ME)^2 or SAMM-LV from a dataset folder or from its annotation file.

  Args:
    path: the dataset folder (annotation file + frame folders) or the .xlsx annotation file itself
      (then only the annotation is read).
    skip_bad: record bad rows / videos in ``skipped`` instead of raising.
    annotations_only: with a folder, read the annotation file only (no frame checks).
  Returns:
    LongReadResult.
  """
  path = os.path.abspath(os.path.expanduser(path))
  dataset = detect(path)
  if not os.path.isdir(path):
    reader = read_cas_long_annotations if dataset == CAS_LONG else read_samm_lv_annotations
    return reader(path, skip_bad=skip_bad)
  if dataset == CAS_LONG:
    xlsx = os.path.join(path, CAS_XLSX)
    frames = None
    if not annotations_only:
      frames = next((os.path.join(path, d) for d in CAS_FRAME_DIRS if os.path.isdir(os.path.join(path, d))), None)
      if frames is None:
        raise DataError(f"no frame folder rawpic/ in {path}; {DOWNLOAD[CAS_LONG]}")
    return read_cas_long_annotations(xlsx, skip_bad=skip_bad, frames_root=frames)
  xlsx = sorted(glob.glob(os.path.join(path, SAMM_XLSX_GLOB)))[-1]
  frames = None
  if not annotations_only:
    frames = next(
      os.path.normpath(os.path.join(path, d)) for d in SAMM_FRAME_DIRS if os.path.isdir(os.path.join(path, d))
    )
  return read_samm_lv_annotations(xlsx, skip_bad=skip_bad, frames_root=frames)
