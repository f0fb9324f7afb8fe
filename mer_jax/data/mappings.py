"""Label mappings from each dataset's own emotion labels to the class sets used in training.

The tables below are data, one per (task, protocol). Every dataset lists its full
label vocabulary in :data:`DATASET_LABELS` (the names the readers emit, lower
case); a label outside it is a :class:`~mer_jax.errors.DataError` (a misspelt or
foreign label file), while a label the table leaves out maps to ``None``
(excluded, counted by the summary).

3class, protocol "paper" -- the paper's Table 2 (Section 4.1.1):

  =========  ==================================  ==========  ========  ======================
  dataset    negative                            positive    surprise  excluded
  =========  ==================================  ==========  ========  ======================
  CK+        anger, contempt, disgust, fear,     happy       surprise  (neutral: never in the
             sadness                                                   Emotion/*.txt files)
  RAF-DB     fear, disgust, sadness, anger       happiness   surprise  neutral
  FER-2013   angry, fear, disgust, sad           happy       surprise  neutral
  CASME II   disgust, repression                 happiness   surprise  others, fear, sadness
  SAMM       anger, fear, disgust, contempt      happiness   surprise  other, sadness
  SMIC-HS    negative                            positive    surprise  -
  =========  ==================================  ==========  ========  ======================

Notes on reading Table 2 literally:

* CASME II's "excluded" cell says "Others Fear Anger"; CASME II has no anger label
  but has sadness (7 clips), which Table 2 lists nowhere. We read "Anger" as the
  sadness clips and exclude them (the MEGC 2019 composite does the same).
* SAMM's sadness (6 clips) is listed nowhere in Table 2; under "paper" it is
  excluded. This is the one place where the protocols give different data.

3class, protocol "megc2019" -- the MEGC 2019 composite database evaluation (CDE),
See et al., "MEGC 2019 - The Second Facial Micro-Expressions Grand Challenge",
FG 2019: CASME II negative = disgust, repression; SAMM negative = anger,
contempt, disgust, fear, sadness; SMIC-HS as is; positive = happiness,
surprise = surprise. Real counts: CASME II 88/32/25, SAMM 92/26/15, SMIC 70/51/43.
Under "paper" SAMM's negative has 86 clips (no sadness). MEGC 2019 says
nothing about the macro sets; for them "megc2019" is the same as "paper".

5class (SDE, Tables 7-8), the usual 5-class protocol for each set:
CASME II: disgust, happiness, repression, surprise, others (fear, sadness
excluded; 246 clips); SAMM: anger, contempt, happiness, surprise, others (SAMM's
"Other"; disgust, fear, sadness excluded; 136 clips). Class order is
as listed (alphabetic, "others" last). No other dataset has a 5-class task.
"""

from __future__ import annotations

from typing import Mapping, Optional

from mer_jax.errors import ConfigError, DataError

TASKS = ("3class", "5class")
PROTOCOLS = ("paper", "megc2019")
THREE_CLASSES = ("negative", "positive", "surprise")

# The label names each reader emits (lower case), i.e. each dataset's full vocabulary.
DATASET_LABELS: Mapping[str, tuple[str, ...]] = {
  # CASME II 'Estimated Emotion' column (CASME2-coding-*.xlsx).
  "casme2": ("happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"),
  # SAMM 'Estimated Emotion' column (SAMM_Micro_FACS_Codes_v2.xlsx); the file writes "Other".
  "samm": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"),
  # SMIC-HS folder names HS/sN/micro/{negative,positive,surprise}.
  "smic": ("negative", "positive", "surprise"),
  # CK+ Emotion codes 0-7 (Lucey et al. 2010 README): 0 neutral .. 7 surprise.
  "ck": ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"),
  # RAF-DB basic labels 1-7: surprise, fear, disgust, happiness, sadness, anger, neutral.
  "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
  # FER-2013 emotion 0-6: angry, disgust, fear, happy, sad, surprise, neutral.
  "fer2013": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
}

# Numeric codes of the image sets, code -> label name (readers use these).
CK_CODES = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
RAFDB_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
FER2013_CODES = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}

# Table 2 of the paper: dataset -> class -> own labels. Labels not listed are excluded.
TABLE2_3CLASS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
  "ck": {
    "negative": ("anger", "contempt", "disgust", "fear", "sadness"),
    "positive": ("happy",),
    "surprise": ("surprise",),
  },
  "rafdb": {"negative": ("fear", "disgust", "sadness", "anger"), "positive": ("happiness",), "surprise": ("surprise",)},
  "fer2013": {"negative": ("angry", "fear", "disgust", "sad"), "positive": ("happy",), "surprise": ("surprise",)},
  "casme2": {"negative": ("disgust", "repression"), "positive": ("happiness",), "surprise": ("surprise",)},
  "samm": {"negative": ("anger", "fear", "disgust", "contempt"), "positive": ("happiness",), "surprise": ("surprise",)},
  "smic": {"negative": ("negative",), "positive": ("positive",), "surprise": ("surprise",)},
}

# MEGC 2019 CDE: differs from Table 2 only in SAMM's negative class (adds sadness).
MEGC2019_3CLASS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
  **TABLE2_3CLASS,
  "casme2": {"negative": ("disgust", "repression"), "positive": ("happiness",), "surprise": ("surprise",)},
  "samm": {
    "negative": ("anger", "contempt", "disgust", "fear", "sadness"),
    "positive": ("happiness",),
    "surprise": ("surprise",),
  },
  "smic": {"negative": ("negative",), "positive": ("positive",), "surprise": ("surprise",)},
}

# SDE 5-class sets: class name -> own labels (class order = key order).
SDE_5CLASS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
  "casme2": {
    "disgust": ("disgust",),
    "happiness": ("happiness",),
    "repression": ("repression",),
    "surprise": ("surprise",),
    "others": ("others",),
  },
  "samm": {
    "anger": ("anger",),
    "contempt": ("contempt",),
    "happiness": ("happiness",),
    "surprise": ("surprise",),
    "others": ("other",),
  },
}


def _check(task: str, dataset: str, protocol: str) -> None:
  if dataset not in DATASET_LABELS:
    raise ConfigError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_LABELS)}")
  if task not in TASKS:
    raise ConfigError(f"unknown task {task!r}; expected one of {TASKS} (config data.task)")
  if protocol not in PROTOCOLS:
    raise ConfigError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} (config data.protocol)")
  if task == "5class" and dataset not in SDE_5CLASS:
    raise ConfigError(
      f"task '5class' is defined for {sorted(SDE_5CLASS)} only, not {dataset!r}; "
      "use data.task='3class' for this dataset"
    )


def table(task: str, dataset: str, protocol: str = "paper") -> Mapping[str, tuple[str, ...]]:
  """The mapping table for one dataset: class name -> the dataset's own labels in it."""
  _check(task, dataset, protocol)
  if task == "5class":
    return SDE_5CLASS[dataset]
  return (TABLE2_3CLASS if protocol == "paper" else MEGC2019_3CLASS)[dataset]


def class_names(task: str, dataset: str, protocol: str = "paper") -> tuple[str, ...]:
  """Class names, index-aligned with :func:`map_label`'s output."""
  return tuple(table(task, dataset, protocol).keys())


def excluded_labels(task: str, dataset: str, protocol: str = "paper") -> tuple[str, ...]:
  """The dataset's own labels that the mapping leaves out (mapped to ``None``)."""
  mapped = {lab for labels in table(task, dataset, protocol).values() for lab in labels}
  return tuple(lab for lab in DATASET_LABELS[dataset] if lab not in mapped)


def normalize_label(label: str) -> str:
  return str(label).strip().lower()


def map_label(dataset: str, label: str, task: str, protocol: str = "paper") -> Optional[int]:
  """The class index of ``label`` (the dataset's own label), or ``None`` if the mapping excludes it.

  Raises DataError for a label the dataset never has (e.g. "happy" in CASME II).
  """
  tab = table(task, dataset, protocol)
  lab = normalize_label(label)
  if lab not in DATASET_LABELS[dataset]:
    raise DataError(
      f"label {label!r} is not a {dataset} label (known: {', '.join(DATASET_LABELS[dataset])}); "
      "check the label file or that the folder belongs to this dataset"
    )
  for i, labels in enumerate(tab.values()):
    if lab in labels:
      return i
  return None
