"""Label mappings vs the paper's Table 2, MEGC 2019 and the SDE 5-class sets, written out here
independently of mer_jax.data.mappings."""

import pytest

from mer_jax.data import mappings
from mer_jax.errors import ConfigError, DataError

N, P, S, X = "negative", "positive", "surprise", None

# Table 2 (Section 4.1.1), one row per own label; X = excluded.
TABLE2 = {
  "ck": {"anger": N, "contempt": N, "disgust": N, "fear": N, "sadness": N, "happy": P, "surprise": S, "neutral": X},
  "rafdb": {"fear": N, "disgust": N, "sadness": N, "anger": N, "happiness": P, "surprise": S, "neutral": X},
  "fer2013": {"angry": N, "fear": N, "disgust": N, "sad": N, "happy": P, "surprise": S, "neutral": X},
  "casme2": {"disgust": N, "repression": N, "happiness": P, "surprise": S, "others": X, "fear": X, "sadness": X},
  "samm": {"anger": N, "fear": N, "disgust": N, "contempt": N, "happiness": P, "surprise": S, "other": X, "sadness": X},
  "smic": {"negative": N, "positive": P, "surprise": S},
}

FIVE = {
  "casme2": (
    ("disgust", "happiness", "repression", "surprise", "others"),
    {"disgust": 0, "happiness": 1, "repression": 2, "surprise": 3, "others": 4, "fear": X, "sadness": X},
  ),
  "samm": (
    ("anger", "contempt", "happiness", "surprise", "others"),
    {"anger": 0, "contempt": 1, "happiness": 2, "surprise": 3, "other": 4, "disgust": X, "fear": X, "sadness": X},
  ),
}


@pytest.mark.parametrize("dataset", sorted(TABLE2))
def test_table2_paper_protocol(dataset):
  names = mappings.class_names("3class", dataset)
  assert names == (N, P, S)
  assert set(mappings.DATASET_LABELS[dataset]) == set(TABLE2[dataset])
  for label, want in TABLE2[dataset].items():
    got = mappings.map_label(dataset, label, "3class", "paper")
    assert (None if got is None else names[got]) == want, (dataset, label)


@pytest.mark.parametrize("dataset", sorted(TABLE2))
def test_megc2019_differs_only_in_samm_sadness(dataset):
  for label, want in TABLE2[dataset].items():
    got = mappings.map_label(dataset, label, "3class", "megc2019")
    if (dataset, label) == ("samm", "sadness"):
      assert got == 0  # MEGC 2019 CDE: SAMM negative = anger, contempt, disgust, fear, sadness
    else:
      assert (None if got is None else (N, P, S)[got]) == want, (dataset, label)


def test_real_sample_counts():
  # Published label counts -> the class sizes the protocols are known for.
  samm = {
    "anger": 57,
    "contempt": 12,
    "disgust": 9,
    "fear": 8,
    "sadness": 6,
    "happiness": 26,
    "surprise": 15,
    "other": 26,
  }
  casme2 = {"happiness": 32, "disgust": 63, "repression": 27, "surprise": 25, "others": 99, "fear": 2, "sadness": 7}

  def count(ds, counts, task, protocol):
    out = {}
    for lab, n in counts.items():
      i = mappings.map_label(ds, lab, task, protocol)
      if i is not None:
        out[i] = out.get(i, 0) + n
    return [out.get(i, 0) for i in range(len(mappings.class_names(task, ds, protocol)))]

  assert count("samm", samm, "3class", "megc2019") == [92, 26, 15]  # MEGC 2019 CDE
  assert count("samm", samm, "3class", "paper") == [86, 26, 15]
  assert sum(count("samm", samm, "5class", "paper")) == 136
  assert sum(count("casme2", casme2, "5class", "paper")) == 246


@pytest.mark.parametrize("dataset", sorted(FIVE))
def test_sde_five_class(dataset):
  names, rows = FIVE[dataset]
  for protocol in mappings.PROTOCOLS:
    assert mappings.class_names("5class", dataset, protocol) == names
    for label, want in rows.items():
      assert mappings.map_label(dataset, label, "5class", protocol) == want, (label, protocol)


def test_label_case_and_space_insensitive():
  assert mappings.map_label("samm", " Other ", "5class") == 4
  assert mappings.map_label("casme2", "Happiness", "3class") == 1


def test_label_the_dataset_never_has_is_an_error():
  with pytest.raises(DataError, match=r"'happy' is not a casme2 label"):
    mappings.map_label("casme2", "happy", "3class")
  with pytest.raises(DataError, match="joy"):
    mappings.map_label("rafdb", "joy", "3class")


def test_bad_task_protocol_dataset():
  with pytest.raises(ConfigError, match="5class"):
    mappings.class_names("5class", "smic")
  with pytest.raises(ConfigError, match="protocol"):
    mappings.class_names("3class", "casme2", "megc2018")
  with pytest.raises(ConfigError, match="task"):
    mappings.class_names("4class", "casme2")
  with pytest.raises(ConfigError, match="dataset"):
    mappings.class_names("3class", "casme3")


# The numeric code tables as each dataset's own documentation gives them: CK+ Emotion/*.txt (Lucey et al. 2010
# README), RAF-DB basic emotions (EmoLabel/list_patition_label.txt), FER-2013 fer2013.csv 'emotion' column.
CK_DOC = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
RAFDB_DOC = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
FER2013_DOC = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
# The micro sets' label vocabularies: CASME II / SAMM 'Estimated Emotion' columns, SMIC-HS folder names.
MICRO_DOC = {
  "casme2": {"happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"},
  "samm": {"anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"},
  "smic": {"negative", "positive", "surprise"},
}


def test_excluded_labels():
  assert mappings.excluded_labels("3class", "casme2") == ("others", "fear", "sadness")
  assert mappings.excluded_labels("3class", "samm", "megc2019") == ("other",)


@pytest.mark.parametrize(
  "dataset, table, doc",
  [("ck", "CK_CODES", CK_DOC), ("rafdb", "RAFDB_CODES", RAFDB_DOC), ("fer2013", "FER2013_CODES", FER2013_DOC)],
)
def test_code_tables_are_the_documented_ones(dataset, table, doc):
  assert dict(getattr(mappings, table)) == doc
  assert set(mappings.DATASET_LABELS[dataset]) == set(doc.values())


def test_micro_vocabularies_are_the_documented_ones():
  for dataset, doc in MICRO_DOC.items():
    assert set(mappings.DATASET_LABELS[dataset]) == doc, dataset
