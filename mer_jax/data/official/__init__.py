"""Official evaluation lists shipped as data (see README.md beside this file).

:func:`megc2019_composite` returns the MEGC 2019 composite (CDE) ground truth, 442 clips::

    rows = official.megc2019_composite()
    rows[0]   # OfficialClip(dataset='casme2', subject='sub01', clip='EP02_01f', label=1)

:func:`megc_key` turns a reader's (dataset, subject, clip id) into the list's spelling, so that a copy of the
datasets, a results file or anyone's predictions can be matched to the list clip for clip.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import re
from typing import Iterable, Optional

from mer_jax.data import mappings
from mer_jax.data.mappings import THREE_CLASSES
from mer_jax.data.types import DISPLAY_NAMES
from mer_jax.errors import DataError

MEGC2019_FILE = "megc2019_composite_3class.csv"
MEGC2019_DATASETS = ("casme2", "samm", "smic")
NOT_LISTED = "not in the MEGC 2019 list"


@dataclasses.dataclass(frozen=True)
class OfficialClip:
  """One row of an official list: the key as the list spells it and the class index (THREE_CLASSES order)."""

  dataset: str
  subject: str
  clip: str
  label: int

  @property
  def key(self) -> tuple[str, str, str]:
    return (self.dataset, self.subject, self.clip)

  @property
  def label_name(self) -> str:
    return THREE_CLASSES[self.label]


def megc_key(dataset: str, subject: str, clip: str) -> tuple[str, str, str]:
  """(dataset, subject, clip) in the MEGC 2019 list's spelling.

  CASME II: unchanged (``sub01``, ``EP02_01f``). SAMM: the subject without leading zeros (``006`` -> ``6``),
  clip unchanged (``006_1_2``). SMIC-HS: two-digit subject numbers (``s1`` -> ``s01``, ``s1_ne_01`` ->
  ``s01_ne_01``). Accepts names already in the list's spelling (idempotent).
  """
  dataset, subject, clip = str(dataset).strip().lower(), str(subject).strip(), str(clip).strip()
  if dataset == "samm":
    subject = str(int(subject)) if subject.isdigit() else subject
  elif dataset == "smic":
    m = re.fullmatch(r"[sS](\d+)", subject)
    if m:
      subject = f"s{int(m.group(1)):02d}"
    m = re.fullmatch(r"[sS](\d+)(_.*)", clip)
    if m:
      clip = f"s{int(m.group(1)):02d}{m.group(2)}"
  return (dataset, subject, clip)


def read_list(path: str) -> tuple[OfficialClip, ...]:
  """A ground-truth CSV ``dataset,subject,clip,label`` (no header; label 0/1/2 or a class name) -> rows.

  Raises DataError naming the file and row for a malformed row, an unknown label or a repeated key.
  """
  rows, seen = [], {}
  try:
    fh = open(path, newline="")
  except OSError as e:
    raise DataError(f"cannot read the ground-truth list {path}: {e.strerror}") from e
  with fh:
    for n, row in enumerate(csv.reader(fh), start=1):
      if not row or all(not c.strip() for c in row):
        continue
      if n == 1 and [c.strip().lower() for c in row[:4]] == ["dataset", "subject", "clip", "label"]:
        continue  # a header row
      if len(row) != 4:
        raise DataError(f"{path}, row {n}: expected 4 columns dataset,subject,clip,label, got {len(row)}: {row}")
      label = _label_index(row[3], f"{path}, row {n}")
      clip = OfficialClip(*megc_key(row[0], row[1], row[2]), label=label)
      if clip.key in seen:
        raise DataError(f"{path}, row {n}: {'/'.join(clip.key)} repeats row {seen[clip.key]}")
      seen[clip.key] = n
      rows.append(clip)
  if not rows:
    raise DataError(f"the ground-truth list {path} has no rows")
  return tuple(rows)


def _label_index(value: str, where: str) -> int:
  v = str(value).strip().lower()
  if v in THREE_CLASSES:
    return THREE_CLASSES.index(v)
  if v.isdigit() and int(v) < len(THREE_CLASSES):
    return int(v)
  raise DataError(f"{where}: unknown label {value!r}; expected 0/1/2 or one of {', '.join(THREE_CLASSES)}")


@functools.cache
def megc2019_composite() -> tuple[OfficialClip, ...]:
  """The official MEGC 2019 composite list shipped with mer_jax (442 clips, 68 subjects)."""
  path = importlib.resources.files(__name__).joinpath(MEGC2019_FILE)
  with importlib.resources.as_file(path) as p:
    return read_list(str(p))


def applies(dataset: str, task: str, protocol: str) -> bool:
  """True where the MEGC 2019 list defines the samples: protocol "megc2019", 3 classes, a composite dataset."""
  return protocol == "megc2019" and task == "3class" and dataset in MEGC2019_DATASETS


@functools.cache
def _megc2019_labels(dataset: str) -> dict[tuple[str, str, str], int]:
  return {c.key: c.label for c in megc2019_composite() if c.dataset == dataset}


def sample_class(sample, task: str, protocol: str) -> tuple[Optional[int], str]:
  """The class index of a reader's sample under (task, protocol), and why it is excluded or relabelled.

  Outside the MEGC 2019 list's scope (see :func:`applies`) this is :func:`mappings.map_label`. Under
  protocol "megc2019" the list decides: a clip not in it is excluded (:data:`NOT_LISTED`), a clip
  in it gets the list's label; where the label mapping gives another class (a coding sheet that differs from
  the one the list was made from) the reason says so and the list's label is used.

  Returns:
    (index or None, reason): reason is "" for a clean mapping, else a short text for the build summary.
  """
  mapped = mappings.map_label(sample.dataset, sample.label, task, protocol)  # DataError for foreign labels
  if not applies(sample.dataset, task, protocol):
    return mapped, ("" if mapped is not None else "excluded by the mapping")
  official = _megc2019_labels(sample.dataset).get(megc_key(sample.dataset, sample.subject, sample.clip_id))
  if official is None:
    return None, (NOT_LISTED if mapped is not None else "excluded by the mapping")
  if mapped != official:
    was = "excluded" if mapped is None else THREE_CLASSES[mapped]
    return official, (f"relabelled: {sample.label!r} maps to {was}, the MEGC 2019 list says {THREE_CLASSES[official]}")
  return official, ""


@dataclasses.dataclass
class Comparison:
  """How a copy of one dataset compares with the MEGC 2019 list (names in the list's spelling)."""

  dataset: str
  listed: int  # clips of this dataset in the list
  found: int  # of those, present in the copy
  missing: list[str]  # in the list, not in the copy (or skipped as unreadable)
  extra: list[str]  # kept by the label mapping, not in the list (left out)
  relabelled: list[str]  # in both, the mapping gives another class (list's label used)

  @property
  def comparable(self) -> bool:
    """True when the copy gives exactly the list (clip for clip, label for label)."""
    return self.found == self.listed and not self.missing and not self.relabelled

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "comparable": self.comparable}

  def line(self) -> str:
    """One line for the data summaries."""
    head = f"MEGC 2019 list: {self.found}/{self.listed} {DISPLAY_NAMES[self.dataset]} clips found"
    parts = []
    if self.missing:
      parts.append(f"{len(self.missing)} missing ({_some(self.missing)})")
    if self.relabelled:
      parts.append(f"{len(self.relabelled)} labelled differently, the list's label used ({_some(self.relabelled)})")
    if self.extra:
      parts.append(f"{len(self.extra)} mapped clips not in the list left out ({_some(self.extra)})")
    verdict = (
      "comparable with published MEGC 2019 composite results"
      if self.comparable
      else "NOT the official composite: numbers are not directly comparable with published ones"
    )
    return "; ".join([head] + parts) + f" -> {verdict}"


def _some(names: list[str], n: int = 5) -> str:
  return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")


def compare(dataset: str, samples, skipped_names: Iterable[str] = ()) -> Comparison:
  """Compares a reader's samples of ``dataset`` with the MEGC 2019 list.

  Args:
    dataset: casme2 | samm | smic.
    samples: the reader's :class:`~mer_jax.data.types.Sample` list (before mapping).
    skipped_names: "dataset/subject/clip" names of samples that were read but could not be used (they count as
      missing).
  Returns:
    a :class:`Comparison`.
  """
  if dataset not in MEGC2019_DATASETS:
    raise ValueError(f"the MEGC 2019 list has no {dataset!r} clips")
  labels = _megc2019_labels(dataset)
  skipped = set(skipped_names)
  seen, extra, relabelled = set(), [], []
  for s in samples:
    key = megc_key(dataset, s.subject, s.clip_id)
    name = "/".join(key[1:])
    if "/".join([s.dataset, s.subject, s.clip_id]) in skipped:
      continue
    idx, why = sample_class(s, "3class", "megc2019")
    if key in labels:
      seen.add(key)
      if why.startswith("relabelled"):
        relabelled.append(name)
    elif mappings.map_label(dataset, s.label, "3class", "megc2019") is not None:
      extra.append(name)
  missing = ["/".join(k[1:]) for k in labels if k not in seen]
  return Comparison(
    dataset=dataset, listed=len(labels), found=len(seen), missing=missing, extra=extra, relabelled=relabelled
  )
