"""protocol=megc2019 gives the official MEGC 2019 composite list exactly; the summary reports how a copy
differs from it; protocol=paper keeps Table 2 (counts documented in docs/data.md)."""

import collections
import csv
import json

import pytest

import official_layout
from mer_jax.data import official, readers, summary
from mer_jax.errors import DataError

DATASETS = ("casme2", "samm", "smic")


@pytest.fixture(scope="module")
def copy_roots(tmp_path_factory):
  return official_layout.write(str(tmp_path_factory.mktemp("official")))


@pytest.fixture(scope="module")
def read(copy_roots):
  return {d: readers.read_dataset(d, copy_roots[d]) for d in DATASETS}


def selected(result, protocol="megc2019"):
  out = {}
  for s in result.samples:
    idx, _ = official.sample_class(s, "3class", protocol)
    if idx is not None:
      out[official.megc_key(s.dataset, s.subject, s.clip_id)] = idx
  return out


def test_shipped_list_is_the_official_one():
  rows = official.megc2019_composite()
  assert len(rows) == 442 and len({r.key for r in rows}) == 442
  counts = collections.Counter((r.dataset, r.label) for r in rows)
  assert [counts[("casme2", k)] for k in range(3)] == [88, 32, 25]
  assert [counts[("samm", k)] for k in range(3)] == [92, 26, 15]
  assert [counts[("smic", k)] for k in range(3)] == [70, 51, 43]
  subjects = {d: len({r.subject for r in rows if r.dataset == d}) for d in DATASETS}
  assert subjects == {"casme2": 24, "samm": 28, "smic": 16}
  keys = {r.key for r in rows}
  assert ("casme2", "sub04", "EP12_01f") not in keys and ("casme2", "sub05", "EP09_05f") not in keys
  with open(official_layout.GT, newline="") as fh:  # the package data, read independently
    assert [tuple(r) for r in csv.reader(fh)] == [(r.dataset, r.subject, r.clip, str(r.label)) for r in rows]


@pytest.mark.parametrize("dataset", DATASETS)
def test_megc2019_protocol_gives_the_list_clip_for_clip_and_label_for_label(read, dataset):
  want = {(d, s, c): lab for d, s, c, lab in official_layout.official_rows() if d == dataset}
  assert selected(read[dataset]) == want
  cmp = official.compare(dataset, read[dataset].samples)
  assert cmp.comparable and cmp.found == cmp.listed == len(want) and not cmp.missing and not cmp.relabelled
  expected_extra = {"casme2": ["sub04/EP12_01f", "sub05/EP09_05f"], "samm": [], "smic": []}[dataset]
  assert sorted(cmp.extra) == expected_extra


def test_paper_protocol_counts(read):
  """Table 2 on a correct copy: CASME II keeps the two disgust clips the list leaves out, SAMM drops sadness."""

  def per_class(d):
    c = collections.Counter(selected(read[d], "paper").values())
    return [c[k] for k in range(3)]

  assert per_class("casme2") == [90, 32, 25]
  assert per_class("samm") == [86, 26, 15]
  assert per_class("smic") == [70, 51, 43]


def test_summary_reports_a_copy_that_differs_from_the_list(tmp_path, capsys):
  drop = {("samm", "6", "006_1_2"), ("smic", "s01", "s01_ne_01")}
  relabel = {("casme2", "sub01", "EP02_01f"): "others"}  # the list says positive
  assert ("samm", "6", "006_1_2") in {r.key for r in official.megc2019_composite()}
  roots = official_layout.write(str(tmp_path), relabel=relabel, drop=drop)
  res = {d: readers.read_dataset(d, roots[d]) for d in DATASETS}

  s = summary.summarize(res["casme2"], "casme2", "3class", "megc2019")
  assert s["official_list"]["relabelled"] == ["sub01/EP02_01f"] and not s["official_list"]["comparable"]
  assert s["per_class"] == {"negative": 88, "positive": 32, "surprise": 25}  # the list's label is used
  assert s["not_in_official_list"] == 2
  s = summary.summarize(res["samm"], "samm", "3class", "megc2019")
  assert s["official_list"]["missing"] == ["6/006_1_2"] and s["official_list"]["found"] == 132
  text = summary.format_text(s)
  assert "MEGC 2019 list: 132/133 SAMM clips found; 1 missing (6/006_1_2)" in text
  assert "NOT the official composite" in text

  assert summary.main(["--dataset", "smic", "--root", roots["smic"], "--protocol", "megc2019", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["official_list"]["missing"] == ["s01/s01_ne_01"] and out["mapped"] == 163
  assert summary.main(["--dataset", "smic", "--root", roots["smic"], "--protocol", "paper", "--json"]) == 0
  assert "official_list" not in json.loads(capsys.readouterr().out)


def test_summary_text_on_a_correct_copy(copy_roots, capsys):
  assert summary.main(["--dataset", "casme2", "--root", copy_roots["casme2"], "--protocol", "megc2019"]) == 0
  text = capsys.readouterr().out
  assert (
    "MEGC 2019 list: 145/145 CASME II clips found; 2 mapped clips not in the list left out "
    "(sub04/EP12_01f, sub05/EP09_05f) -> comparable with published MEGC 2019 composite results"
  ) in text
  assert "not in the MEGC 2019 list 2" in text


@pytest.mark.parametrize(
  "reader_name, list_name",
  [
    (("samm", "006", "006_1_2"), ("samm", "6", "006_1_2")),
    (("smic", "s1", "s1_ne_01"), ("smic", "s01", "s01_ne_01")),
    (("smic", "s12", "s12_sur_03"), ("smic", "s12", "s12_sur_03")),
    (("casme2", "sub01", "EP02_01f"), ("casme2", "sub01", "EP02_01f")),
    (("SAMM", "6", "006_1_2"), ("samm", "6", "006_1_2")),
  ],
)
def test_megc_key(reader_name, list_name):
  assert official.megc_key(*reader_name) == list_name
  assert official.megc_key(*list_name) == list_name


@pytest.mark.parametrize(
  "text, message",
  [
    ("casme2,sub01,EP02_01f,1\ncasme2,sub01,EP02_01f,0\n", "row 2: casme2/sub01/EP02_01f repeats row 1"),
    ("casme2,sub01,EP02_01f,happy\n", "row 1: unknown label 'happy'"),
    ("casme2,sub01,1\n", "row 1: expected 4 columns"),
    ("smic,s1,s1_ne_01,0\nsmic,s01,s01_ne_01,0\n", "row 2: smic/s01/s01_ne_01 repeats row 1"),
    ("", "has no rows"),
  ],
)
def test_read_list_errors(tmp_path, text, message):
  p = tmp_path / "gt.csv"
  p.write_text(text)
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    official.read_list(str(p))
  assert str(p) in str(e.value)


def test_read_list_accepts_a_header_and_names(tmp_path):
  p = tmp_path / "gt.csv"
  p.write_text("dataset,subject,clip,label\nsmic,s1,s1_ne_01,negative\nsamm,006,006_1_2,2\n")
  rows = official.read_list(str(p))
  assert [(r.key, r.label) for r in rows] == [(("smic", "s01", "s01_ne_01"), 0), (("samm", "6", "006_1_2"), 2)]


def test_cache_build_under_megc2019_selects_the_list_and_says_how_the_copy_differs(tmp_path):
  """The TFDS build (what training reads) applies the same selection and prints the comparison."""
  from mer_jax import config_defaults
  from mer_jax.data import pipeline

  relabel = {("smic", "s02", "s02_po_01"): "negative"}  # the list says positive
  assert ("smic", "s02", "s02_po_01") in {r.key for r in official.megc2019_composite()}
  roots = official_layout.write(str(tmp_path / "copy"), relabel=relabel, drop={("smic", "s01", "s01_ne_01")})
  c = config_defaults.get_base_config()
  c.image_size, c.evm.enabled, c.data.face_crop, c.data.protocol = 8, False, False, "megc2019"
  c.data.micro = ("smic",)
  c.data.roots.smic = roots["smic"]
  logs = []
  data = pipeline.load_arrays(c, str(tmp_path / "run"), "micro", log=logs.append)
  want = {(s, cl): lab for d, s, cl, lab in official_layout.official_rows() if d == "smic" and cl != "s01_ne_01"}
  got = {
    official.megc_key("smic", sub.split("/")[1], cl)[1:]: int(lab)
    for sub, cl, lab in zip(data.subjects, data.clip_ids, data.labels)
  }
  assert got == want
  text = "\n".join(logs)
  assert "MEGC 2019 list: 163/164 SMIC-HS clips found; 1 missing (s01/s01_ne_01); 1 labelled differently" in text
  assert "smic/s2/s2_po_01: relabelled: 'negative' maps to negative, the MEGC 2019 list says positive" in text


def test_megc2019_with_synthme_is_a_clear_config_error(tmp_path):
  from mer_jax import config_defaults
  from mer_jax.data import pipeline
  from mer_jax.errors import ConfigError

  c = config_defaults.get_base_config()
  c.data.synthetic, c.data.protocol = True, "megc2019"
  with pytest.raises(ConfigError, match="SynthME's SAMM clips are not on it; use data.protocol=paper"):
    pipeline.resolve_root(c, str(tmp_path), "samm")
  assert not (tmp_path / "synthme").exists()
  c.data.protocol = "paper"
  c.data.task = "5class"  # the list is 3-class only: other tasks are not restricted
  assert official.applies("samm", "3class", "megc2019") and not official.applies("samm", "5class", "megc2019")
  assert not official.applies("ck", "3class", "megc2019")
