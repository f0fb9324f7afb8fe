"""Typed records that flow from the readers to preprocessing and training.

Data flow: ``readers`` (official layouts) -> :class:`Sample` list ->
``preprocess`` (face crop, EVM, apex, resize) -> TFDS cache -> :class:`ArrayDataset`
-> training.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

MICRO_DATASETS = ("casme2", "samm", "smic")
MACRO_DATASETS = ("ck", "rafdb", "fer2013")
DISPLAY_NAMES = {
  "casme2": "CASME II",
  "samm": "SAMM",
  "smic": "SMIC-HS",
  "ck": "CK+",
  "rafdb": "RAF-DB",
  "fer2013": "FER-2013",
}


@dataclasses.dataclass(frozen=True)
class Sample:
  """One labelled sample as a reader finds it, before any preprocessing.

  Micro-expression clips carry ``frame_paths`` (onset..offset are indices into
  it, 0-based); image datasets carry either ``frame_paths`` with one entry or
  ``pixels`` (FER-2013, ``[48, 48]`` uint8).
  """

  dataset: str  # one of MICRO_DATASETS + MACRO_DATASETS
  subject: str  # e.g. "sub01", "006", "s1"; "" where unknown (RAF-DB, FER-2013)
  clip_id: str  # e.g. "EP02_01f", "006_1_2", "s1_ne_01", "S005_001", "train_00001"
  label: str  # the dataset's own emotion label (lower case), before mapping
  frame_paths: tuple[str, ...] = ()  # absolute paths, in temporal order
  onset: Optional[int] = None  # index into frame_paths
  apex: Optional[int] = None  # None: not annotated (SMIC-HS) or missing ('/' in CASME II)
  offset: Optional[int] = None
  fps: Optional[float] = None  # 200 CASME II / SAMM, 100 SMIC-HS, None for images
  pixels: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)
  split: str = ""  # dataset's own split where it has one ("train"/"test", FER "Training"...)
  source_row: str = ""  # where in the label file this came from (for messages)


@dataclasses.dataclass
class ArrayDataset:
  """Preprocessed samples as arrays, ready for training.

  images:   [N, H, W, C] float32 in [0, 1]
  labels:   [N] int32, class index after mapping
  subjects: [N] str, subject ids prefixed with the dataset ("casme2/sub01")
  sources:  [N] str, source dataset name ("casme2", ...)
  clip_ids: [N] str
  class_names: the label names, index-aligned with ``labels``
  """

  images: np.ndarray
  labels: np.ndarray
  subjects: np.ndarray
  sources: np.ndarray
  clip_ids: np.ndarray
  class_names: Sequence[str]

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def subset(self, mask_or_index: np.ndarray) -> "ArrayDataset":
    return ArrayDataset(
      images=self.images[mask_or_index],
      labels=self.labels[mask_or_index],
      subjects=self.subjects[mask_or_index],
      sources=self.sources[mask_or_index],
      clip_ids=self.clip_ids[mask_or_index],
      class_names=self.class_names,
    )
