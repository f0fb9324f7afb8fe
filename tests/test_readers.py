"""Readers on SynthME output (counts vs the generator's manifest), the summary (in process; its command line
is tested in test_bad_inputs.py), and the bad-input messages."""

import collections
import glob
import json
import os
import re
import shutil

import cv2
import numpy as np
import openpyxl
import pytest

from mer_jax.data import readers, summary, synth
from mer_jax.errors import DataError

KW = dict(seed=3, subjects=2, clips_per_subject=5, clip_frames=12, frame_size=96, images=21)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  return synth.generate_all(str(tmp_path_factory.mktemp("synthme")), **KW)


def manifest(root):
  with open(os.path.join(root, synth.MANIFEST)) as f:
    return json.load(f)


def copy(roots, name, tmp_path):
  dst = str(tmp_path / name)
  shutil.copytree(roots[name], dst)
  return dst


@pytest.mark.parametrize("name", synth.LAYOUTS)
def test_counts_match_manifest(roots, name):
  res = readers.read_dataset(name, roots[name])
  man = manifest(roots[name])
  assert res.skipped == []
  assert res.read == len(res.samples) == man["n_samples"]
  assert dict(collections.Counter(s.label for s in res.samples)) == man["per_label"]
  assert dict(collections.Counter(s.subject for s in res.samples)) == man["per_subject"]
  by_id = {(s.subject, s.clip_id): s for s in res.samples}
  for m in man["samples"]:
    s = by_id[(m["subject"], m["clip_id"])]
    assert s.label == m["label"] and s.dataset == name
    for p in s.frame_paths:
      assert os.path.isabs(p) and os.path.exists(p)


@pytest.mark.parametrize("name", ["casme2", "samm", "smic"])
def test_micro_clip_indices(roots, name):
  res = readers.read_dataset(name, roots[name])
  man = {(m["subject"], m["clip_id"]): m for m in manifest(roots[name])["samples"]}
  fps = {"casme2": 200.0, "samm": 200.0, "smic": 100.0}[name]
  for s in res.samples:
    m = man[(s.subject, s.clip_id)]
    assert s.fps == fps
    assert len(s.frame_paths) == m["n_frames"] == 12
    assert s.onset == 0 and s.offset == len(s.frame_paths) - 1
    nums = [int(re.search(r"(\d+)\.\w+$", p).group(1)) for p in s.frame_paths]
    assert nums == list(range(m["onset_frame"], m["offset_frame"] + 1))
    if name == "smic" or m["apex_frame"] is None:
      assert s.apex is None
    else:
      assert s.apex == m["apex_frame"] - m["onset_frame"] == m["true_apex_index"]


def test_casme2_slash_apex_row_is_kept(roots):
  man = manifest(roots["casme2"])
  slash = [m for m in man["samples"] if m["apex_frame"] is None]
  assert slash, "SynthME CASME II must have a row with apex '/'"
  wb = openpyxl.load_workbook(os.path.join(roots["casme2"], "CASME2-coding-20140508.xlsx"))
  apex_col = [c.value for c in wb.active[1]].index("ApexFrame")
  assert "/" in [r[apex_col] for r in wb.active.iter_rows(min_row=2, values_only=True)]
  res = readers.read_dataset("casme2", roots["casme2"])
  kept = [s for s in res.samples if s.clip_id == slash[0]["clip_id"] and s.subject == slash[0]["subject"]]
  assert len(kept) == 1 and kept[0].apex is None


def test_samm_subject_format_and_grey(roots):
  res = readers.read_dataset("samm", roots["samm"])
  assert {s.subject for s in res.samples} == {"006", "007"}
  assert all(s.clip_id.startswith(s.subject + "_") for s in res.samples)
  assert cv2.imread(res.samples[0].frame_paths[0], cv2.IMREAD_UNCHANGED).ndim == 2


def test_ck_peak_is_last_and_unlabelled_skipped(roots):
  res = readers.read_dataset("ck", roots["ck"])
  seq_dirs = {os.path.dirname(p) for p in glob.glob(os.path.join(roots["ck"], "cohn-kanade-images", "*", "*", "*.png"))}
  assert len(seq_dirs) > len(res.samples)  # unlabelled sequences exist and are not read
  for s in res.samples:
    (peak,) = s.frame_paths
    assert peak == sorted(os.path.join(os.path.dirname(peak), f) for f in os.listdir(os.path.dirname(peak)))[-1]


def test_rafdb_and_fer_splits_and_pixels(roots):
  raf = readers.read_dataset("rafdb", roots["rafdb"]).samples
  man = manifest(roots["rafdb"])
  assert collections.Counter(s.split for s in raf) == collections.Counter(m["split"] for m in man["samples"])
  assert all(p.endswith("_aligned.jpg") for s in raf for p in s.frame_paths)
  fer = readers.read_dataset("fer2013", roots["fer2013"]).samples
  assert {s.split for s in fer} == {"Training", "PublicTest", "PrivateTest"}
  with open(os.path.join(roots["fer2013"], "fer2013.csv")) as f:
    f.readline()
    first = f.readline().strip().split(",")
  assert fer[0].pixels.shape == (48, 48) and fer[0].pixels.dtype == np.uint8
  np.testing.assert_array_equal(fer[0].pixels.reshape(-1), np.array(first[1].split(), np.uint8))


# ------------------------------------------------------------------ summary


def test_summary_json(roots, capsys):
  assert summary.main(["--dataset", "casme2", "--root", roots["casme2"], "--task", "3class", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  for k in ("per_class", "per_subject", "read", "excluded", "skipped"):
    assert k in out
  man = manifest(roots["casme2"])["per_label"]
  neg = man.get("disgust", 0) + man.get("repression", 0)
  assert out["per_class"] == {"negative": neg, "positive": man.get("happiness", 0), "surprise": man.get("surprise", 0)}
  excl = sum(man.get(k, 0) for k in ("others", "fear", "sadness"))
  assert out["excluded"] == excl and out["read"] == sum(man.values())
  assert sum(out["per_subject"].values()) == sum(out["per_class"].values()) == out["read"] - excl
  assert out["skipped"] == []


def test_summary_text_and_5class(roots, capsys):
  assert summary.main(["--dataset", "samm", "--root", roots["samm"], "--task", "5class"]) == 0
  text = capsys.readouterr().out
  man = manifest(roots["samm"])["per_label"]
  assert re.search(rf"others\s+{man.get('other', 0)}\b", text)
  assert f"read {sum(man.values())}" in text


# ------------------------------------------------------------------ bad inputs


def test_missing_folder(tmp_path):
  with pytest.raises(DataError, match=r"CASME II folder .*missing_dir does not exist"):
    readers.read_dataset("casme2", str(tmp_path / "missing_dir"))
  with pytest.raises(DataError, match="data.roots.samm"):
    readers.read_dataset("samm", "")


@pytest.mark.parametrize(
  "name,label_file,pattern",
  [
    ("casme2", "CASME2-coding-20140508.xlsx", "CASME2-coding"),
    ("samm", "SAMM_Micro_FACS_Codes_v2.xlsx", "SAMM_Micro_FACS_Codes_v2.xlsx"),
    ("rafdb", "EmoLabel/list_patition_label.txt", "list_patition_label.txt is missing"),
    ("fer2013", "fer2013.csv", "fer2013.csv is missing"),
  ],
)
def test_missing_label_file(roots, tmp_path, name, label_file, pattern):
  root = copy(roots, name, tmp_path)
  os.remove(os.path.join(root, label_file))
  with pytest.raises(DataError, match=pattern):
    readers.read_dataset(name, root, skip_bad=True)


def test_ck_missing_emotion_folder(roots, tmp_path):
  root = copy(roots, "ck", tmp_path)
  shutil.rmtree(os.path.join(root, "Emotion"))
  with pytest.raises(DataError, match="no Emotion/ label folder"):
    readers.read_dataset("ck", root)


def _edit_xlsx(path, edit):
  wb = openpyxl.load_workbook(path)
  edit(wb.active)
  wb.save(path)


def test_xlsx_without_column(roots, tmp_path):
  root = copy(roots, "casme2", tmp_path)
  xlsx = os.path.join(root, "CASME2-coding-20140508.xlsx")

  def drop(ws):
    for c in ws[1]:
      if c.value == "Estimated Emotion":
        c.value = "Emotion guess"

  _edit_xlsx(xlsx, drop)
  with pytest.raises(
    DataError, match=r"CASME2-coding-20140508.xlsx: no header row with the columns 'Estimated Emotion'"
  ):
    readers.read_dataset("casme2", root)


def test_samm_header_found_below_description_rows(roots, tmp_path):
  root = copy(roots, "samm", tmp_path)
  xlsx = os.path.join(root, "SAMM_Micro_FACS_Codes_v2.xlsx")
  wb = openpyxl.load_workbook(xlsx)
  assert [c.value for c in wb.active[14]][:6] == [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
  ]

  def drop(ws):
    ws.cell(row=14, column=4).value = "Start"

  _edit_xlsx(xlsx, drop)
  with pytest.raises(DataError, match="'Onset Frame'"):
    readers.read_dataset("samm", root)


def test_label_outside_mapping(roots, tmp_path):
  root = copy(roots, "casme2", tmp_path)
  xlsx = os.path.join(root, "CASME2-coding-20140508.xlsx")

  def bad(ws):
    ws.cell(row=3, column=9).value = "joy"

  _edit_xlsx(xlsx, bad)
  with pytest.raises(DataError, match=r"CASME2-coding-20140508.xlsx row 3 .*'joy' is not a casme2 label"):
    readers.read_dataset("casme2", root)
  res = readers.read_dataset("casme2", root, skip_bad=True)
  n = manifest(root)["n_samples"]
  assert res.read == n and len(res.samples) == n - 1
  assert len(res.skipped) == 1 and "row 3" in res.skipped[0][0] and "joy" in res.skipped[0][1]


def test_smic_unknown_emotion_folder(roots, tmp_path):
  root = copy(roots, "smic", tmp_path)
  src = os.path.join(root, "HS", "s1", "micro", "positive")
  os.rename(src, os.path.join(root, "HS", "s1", "micro", "happy"))
  with pytest.raises(DataError, match=r"HS/s1/micro/happy/.*'happy' is not a smic label"):
    readers.read_dataset("smic", root)


def test_frame_listed_but_missing(roots, tmp_path):
  root = copy(roots, "samm", tmp_path)
  m = manifest(root)["samples"][2]
  frame_no = m["onset_frame"] + 3
  os.remove(os.path.join(root, m["folder"], f"{m['subject']}_{frame_no:05d}.jpg"))
  with pytest.raises(
    DataError,
    match=rf"SAMM_Micro_FACS_Codes_v2.xlsx row \d+ \({m['subject']}/{m['clip_id']}\): "
    rf"frame {frame_no} .* is listed but missing",
  ):
    readers.read_dataset("samm", root)
  res = readers.read_dataset("samm", root, skip_bad=True)
  assert len(res.samples) == manifest(root)["n_samples"] - 1
  assert "is listed but missing" in res.skipped[0][1] and m["clip_id"] in res.skipped[0][0]


def test_corrupt_image(roots, tmp_path):
  root = copy(roots, "casme2", tmp_path)
  m = manifest(root)["samples"][0]
  path = os.path.join(root, m["folder"], f"img{m['onset_frame'] + 5}.jpg")
  with open(path, "wb") as f:
    f.write(b"this is not a jpeg")
  with pytest.raises(DataError, match=re.escape(path) + " is corrupt"):
    readers.read_dataset("casme2", root)


def test_truncated_key_frame_does_not_decode(roots, tmp_path):
  root = copy(roots, "rafdb", tmp_path)
  path = os.path.join(root, "Image", "aligned", "train_00002_aligned.jpg")
  with open(path, "r+b") as f:
    f.truncate(40)  # JPEG signature kept, data gone
  with pytest.raises(DataError, match=r"line 2 \(train_00002.jpg\): image .*train_00002_aligned.jpg is corrupt"):
    readers.read_dataset("rafdb", root)


def test_ck_bad_code_and_fer_bad_row(roots, tmp_path):
  root = copy(roots, "ck", tmp_path)
  f = sorted(glob.glob(os.path.join(root, "Emotion", "*", "*", "*_emotion.txt")))[0]
  with open(f, "w") as fh:
    fh.write("   9.0000000e+00\n")
  with pytest.raises(DataError, match=re.escape(os.path.relpath(f, root)) + ".*outside 0-7"):
    readers.read_dataset("ck", root)
  root = copy(roots, "fer2013", tmp_path)
  csv_path = os.path.join(root, "fer2013.csv")
  lines = open(csv_path).read().splitlines()
  lines[4] = "3,1 2 3,Training"
  open(csv_path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match="fer2013.csv data row 4: pixels holds 3 values"):
    readers.read_dataset("fer2013", root)
  lines[4] = "3," + " ".join(["7"] * 2303 + ["x"]) + ",Training"
  open(csv_path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match="fer2013.csv data row 4: pixels holds a value that is not an integer"):
    readers.read_dataset("fer2013", root)
  lines[4] = "3," + " ".join(["7"] * 2303 + ["256"]) + ",Training"
  open(csv_path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match="data row 4: pixels holds a value outside 0-255"):
    readers.read_dataset("fer2013", root)
  lines[0] = "emotion,pixel,Usage"
  open(csv_path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(DataError, match="missing column.*pixels"):
    readers.read_dataset("fer2013", root)


def test_registry():
  assert set(readers.READERS) == set(readers.MANUAL_DOWNLOAD_INSTRUCTIONS) == set(synth.LAYOUTS)
  with pytest.raises(DataError, match="unknown dataset"):
    readers.read_dataset("casme3", "/tmp")


def test_repeated_row_gets_unique_clip_id(roots, tmp_path):
  root = copy(roots, "casme2", tmp_path)
  xlsx = os.path.join(root, "CASME2-coding-20140508.xlsx")
  _edit_xlsx(xlsx, lambda ws: ws.append([c.value for c in ws[2]]))
  res = readers.read_dataset("casme2", root)
  ids = [(s.subject, s.clip_id) for s in res.samples]
  assert len(ids) == len(set(ids)) == manifest(root)["n_samples"] + 1
  dup = [s for s in res.samples if s.clip_id.endswith("#2")]
  assert len(dup) == 1 and dup[0].frame_paths == res.samples[0].frame_paths


def test_root_is_a_file(tmp_path):
  f = tmp_path / "fer2013.csv"
  f.write_text("emotion,pixels,Usage\n")
  with pytest.raises(DataError, match="is not a folder"):
    readers.read_dataset("fer2013", str(f))


def test_casme2_cropped_release(roots, tmp_path):
  root = copy(roots, "casme2", tmp_path)
  os.rename(os.path.join(root, "CASME2_RAW_selected"), os.path.join(root, "Cropped"))
  for p in glob.glob(os.path.join(root, "Cropped", "*", "*", "img*.jpg")):
    os.rename(p, os.path.join(os.path.dirname(p), "reg_" + os.path.basename(p)))
  want = readers.read_dataset("casme2", roots["casme2"]).samples
  got = readers.read_dataset("casme2", root).samples
  key = lambda s: (s.clip_id, s.apex, len(s.frame_paths))
  assert [key(s) for s in got] == [key(s) for s in want]
  assert all("/Cropped/" in p and os.path.basename(p).startswith("reg_img") for s in got for p in s.frame_paths)


def test_apex_outside_onset_offset_keeps_the_clip_and_is_spotted(roots, tmp_path):
  """A coding-sheet apex outside onset..offset is an annotation error: the clip is kept, and the
  'annotated' apex rule spots the apex and says why (never a silently wrong frame)."""
  from mer_jax.data import apex as apex_lib

  root = copy(roots, "casme2", tmp_path)
  xlsx = os.path.join(root, "CASME2-coding-20140508.xlsx")
  header = [c.value for c in openpyxl.load_workbook(xlsx).active[1]]
  apex_col, offset_col = header.index("ApexFrame") + 1, header.index("OffsetFrame") + 1

  def push_apex_past_offset(ws):
    ws.cell(row=2, column=apex_col).value = int(ws.cell(row=2, column=offset_col).value) + 5

  _edit_xlsx(xlsx, push_apex_past_offset)
  before = readers.read_dataset("casme2", roots["casme2"])
  after = readers.read_dataset("casme2", root)
  assert len(after.samples) == len(before.samples) and not after.skipped
  s = after.samples[0]
  assert s.apex == len(s.frame_paths) - 1 + 5
  frames = np.zeros((len(s.frame_paths), 16, 16, 3), np.float32)
  idx, how = apex_lib.choose_apex("annotated", onset=s.onset, offset=s.offset, annotated=s.apex, frames=frames)
  assert how.startswith("spot (annotation") and "outside onset..offset" in how
  assert s.onset <= idx <= s.offset
