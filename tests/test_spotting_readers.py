"""Long-video readers on SynthME long videos: they read back exactly what the generator wrote (from the
annotation files only), repair and count the releases' quirks, find the frames, and fail on bad input
with a DataError naming the file / row and the fix (or skip and count with skip_bad)."""

from __future__ import annotations

import collections
import json
import os
import shutil

import cv2
import numpy as np
import openpyxl
import pytest

from mer_jax.errors import DataError
from mer_jax.spotting import readers, synth_long
from mer_jax.spotting.readers import CAS_LONG, SAMM_LV

ANN = {CAS_LONG: readers.CAS_XLSX, SAMM_LV: synth_long.SAMM_XLSX}


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
  """Annotation files only (no frames): 3 subjects x 3 videos per layout."""
  root = tmp_path_factory.mktemp("long_ann")
  return {
    lay: synth_long.generate_long(lay, str(root / lay), seed=2, subjects=3, videos_per_subject=3, frames=False)
    for lay in synth_long.LAYOUTS
  }


@pytest.fixture(scope="module")
def with_frames(tmp_path_factory):
  """Small videos with frames: CAS(ME)^2 1 subject x 1 video of 8 s, SAMM-LV 1 x 1 of 3 s, 64 px, no noise."""
  root = tmp_path_factory.mktemp("long_frames")
  kw = dict(
    seed=4,
    subjects=1,
    videos_per_subject=1,
    micro_per_video=2,
    macro_per_video=1,
    blinks_per_video=1,
    head_moves_per_video=1,
    frame_size=64,
    noise_scale=0.0,
  )
  return {
    CAS_LONG: synth_long.generate_long(CAS_LONG, str(root / "cas"), seconds=8, **kw),
    SAMM_LV: synth_long.generate_long(SAMM_LV, str(root / "samm"), seconds=3.5, **kw),
  }


def manifest(root):
  with open(os.path.join(root, synth_long.MANIFEST)) as f:
    return json.load(f)


def expected_read(w: dict) -> tuple:
  """The documented repairs applied to the written (onset, apex, offset): offset 0 -> apex, apex -1 -> None,
  onset 0 -> 1."""
  apex = None if w["apex"] == -1 else w["apex"]
  return (1 if w["onset"] == 0 else w["onset"], apex, apex if w["offset"] == 0 else w["offset"])


@pytest.mark.parametrize("layout", synth_long.LAYOUTS)
def test_reader_reads_back_what_the_generator_wrote(annotations, layout):
  root = annotations[layout]
  man = manifest(root)
  res = readers.read_long(os.path.join(root, ANN[layout]))  # the annotation file only
  assert res.dataset == layout and res.skipped == []
  assert {v.video for v in res.videos} == {v["video"] for v in man["videos"]}
  by_video = {v.video: v for v in res.videos}
  n_written = 0
  for mv in man["videos"]:
    v = by_video[mv["video"]]
    assert v.subject == mv["subject"] and v.fps == man["fps"] and v.frame_dir is None
    assert len(v.intervals) == len(mv["intervals"])
    got = {i.name: i for i in v.intervals}
    for mi in mv["intervals"]:
      i = got[mi["name"]]
      assert (i.onset, i.apex, i.offset) == expected_read(mi["written"]), mi
      assert i.type == mi["type"] and i.aus == mi["aus"]
      assert i.emotion == (mi["emotion"] if layout == CAS_LONG else None)
      n_written += 1
      if mi["written"]["offset"] != 0:  # every other row reads back the true frames
        assert (i.onset, i.offset) == (mi["onset"], mi["offset"])
  assert res.read == n_written
  c = res.counts()
  assert (c["micro"], c["macro"]) == (man["n_intervals"]["micro"], man["n_intervals"]["macro"])
  assert c["subjects"] == 3 and c["videos"] == 9


@pytest.mark.parametrize("layout", synth_long.LAYOUTS)
def test_quirks_are_written_and_counted(annotations, layout):
  man = manifest(annotations[layout])
  written = [i["written"] for v in man["videos"] for i in v["intervals"]]
  res = readers.read_long(annotations[layout], annotations_only=True)
  expect = collections.Counter()
  expect["offset_0_set_to_apex"] = sum(w["offset"] == 0 for w in written)
  expect["apex_not_coded"] = sum(w["apex"] == -1 for w in written)
  expect["onset_0_set_to_1"] = sum(w["onset"] == 0 for w in written)
  want = {k: n for k, n in expect.items() if n}
  assert res.repairs == want
  if layout == CAS_LONG:
    assert want.get("offset_0_set_to_apex", 0) >= 1
  else:
    assert want["apex_not_coded"] == 1 and want["onset_0_set_to_1"] == 1


@pytest.mark.parametrize("layout", synth_long.LAYOUTS)
def test_generated_events_follow_the_plan(annotations, layout):
  """Durations in the releases' ranges, inside the video, and no two events (expressions, blinks, head
  moves) overlapping."""
  man = manifest(annotations[layout])
  lo, hi = synth_long.MICRO_FRAMES[layout]
  for v in man["videos"]:
    spans = [(i["onset"], i["offset"]) for i in v["intervals"]]
    spans += [(b["start"], b["end"]) for b in v["blinks"] + v["head_moves"]]
    spans.sort()
    assert spans[0][0] >= 1 and spans[-1][1] <= v["num_frames"]
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans
    for i in v["intervals"]:
      n = i["offset"] - i["onset"] + 1
      assert (lo <= n <= hi) if i["type"] == "micro" else n > hi
      assert i["onset"] <= i["apex"] <= i["offset"]
    assert len(v["blinks"]) == 3 and len(v["head_moves"]) == 2


def test_generator_is_deterministic(tmp_path):
  a = synth_long.generate_long(SAMM_LV, str(tmp_path / "a"), seed=9, subjects=1, videos_per_subject=1, frames=False)
  b = synth_long.generate_long(SAMM_LV, str(tmp_path / "b"), seed=9, subjects=1, videos_per_subject=1, frames=False)
  for name in (synth_long.SAMM_XLSX, synth_long.MANIFEST):
    with open(os.path.join(a, name), "rb") as f, open(os.path.join(b, name), "rb") as g:
      assert f.read() == g.read()


@pytest.mark.parametrize("layout", synth_long.LAYOUTS)
def test_frames_are_found_and_show_the_expressions(with_frames, layout):
  root = with_frames[layout]
  (mv,) = manifest(root)["videos"]
  res = readers.read_long(root)
  (v,) = res.videos
  assert v.frame_dir == os.path.join(root, mv["folder"]) and v.num_frames == mv["num_frames"]
  frames = v.frame_paths()
  assert sorted(frames) == list(range(1, mv["num_frames"] + 1))
  assert any(a in (f"{v.subject}/{os.path.basename(v.frame_dir)}",) for a in v.aliases)
  img = lambda n: cv2.imread(frames[n], cv2.IMREAD_GRAYSCALE).astype(np.float32)  # noqa: E731
  (macro,) = [i for i in mv["intervals"] if i["type"] == "macro"]
  # noiseless frames: the macro apex differs from the frame before onset far more than two neutral
  # neighbours differ (sway only)
  base = macro["onset"] - 1 if macro["onset"] > 2 else macro["offset"] + 1
  moved = np.abs(img(macro["apex"]) - img(base)).max()
  still = np.abs(img(base) - img(base - 1 if base > 1 else base + 1)).max()
  assert moved > 20 and moved > 3 * still, (moved, still)


# ---------------------------------------------------------------------------- bad input


def copy(root, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(root, dst)
  return dst


def edit(path, fn):
  wb = openpyxl.load_workbook(path)
  fn(wb)
  wb.save(path)


def test_samm_missing_sheet_and_column(annotations, tmp_path):
  root = copy(annotations[SAMM_LV], tmp_path)
  x = os.path.join(root, synth_long.SAMM_XLSX)
  edit(x, lambda wb: wb["FACS_Movement_Only"].cell(row=10, column=8, value="Kind"))
  with pytest.raises(
    DataError,
    match=r"SAMM_LongVideos_V2_Release.xlsx: sheet 'FACS_Movement_Only' has no header "
    r"row with the column\(s\) 'Type'",
  ):
    readers.read_long(x)
  edit(x, lambda wb: setattr(wb["FACS_Movement_Only"], "title", "Sheet1"))
  with pytest.raises(DataError, match=r"has no sheet 'FACS_Movement_Only' \(sheets: Sheet1\)"):
    readers.read_long(x)


def test_cas_missing_naming_rules_and_columns(annotations, tmp_path):
  root = copy(annotations[CAS_LONG], tmp_path)
  x = os.path.join(root, readers.CAS_XLSX)
  edit(x, lambda wb: (wb.remove(wb["naming rule1"]), wb.remove(wb["naming rule2"])))
  with pytest.raises(DataError, match=r"no sheet 'naming rule1'"):
    readers.read_long(x)
  wb = openpyxl.Workbook()
  wb.active.append([1, "anger1_1", 10, 12, 15])
  wb.save(x)
  with pytest.raises(DataError, match=r"has 5 columns, expected 9 without a header"):
    readers.read_long(x)


def test_bad_rows_raise_or_are_skipped_and_counted(annotations, tmp_path):
  root = copy(annotations[CAS_LONG], tmp_path)
  x = os.path.join(root, readers.CAS_XLSX)
  good = readers.read_long(x)

  def damage(wb):
    ws = wb.worksheets[0]
    ws.cell(row=2, column=8, value="mega-expression")
    ws.cell(row=3, column=3, value=500)
    ws.cell(row=3, column=5, value=400)

  edit(x, damage)
  with pytest.raises(
    DataError,
    match=r"CAS\(ME\)\^2code_final.xlsx row 2 \(\w+_\d+\): type 'mega-expression' is "
    r"neither.*skip_bad_samples",
  ):
    readers.read_long(x)
  res = readers.read_long(x, skip_bad=True)
  assert res.read == good.read and len(res.skipped) == 2
  assert "offset 400 is before onset 500" in res.skipped[1][1]
  assert sum(len(v.intervals) for v in res.videos) == sum(len(v.intervals) for v in good.videos) - 2


def test_missing_frames_are_reported_by_video(with_frames, tmp_path):
  root = copy(with_frames[SAMM_LV], tmp_path)
  (mv,) = manifest(root)["videos"]
  i = mv["intervals"][-1]
  os.remove(os.path.join(root, mv["folder"], f"{mv['video']}_{i['onset']:05d}.jpg"))
  with pytest.raises(DataError, match=rf"video {mv['video']} .*frame {i['onset']} of .*is missing"):
    readers.read_long(root)
  res = readers.read_long(root, skip_bad=True)
  assert res.videos == [] and len(res.skipped) == 1
  assert len(readers.read_long(root, annotations_only=True).videos) == 1
  shutil.rmtree(os.path.join(root, mv["folder"]))
  with pytest.raises(DataError, match=r"its frame folder is missing"):
    readers.read_long(root)


def test_folder_without_annotation(tmp_path):
  with pytest.raises(DataError, match=r"holds neither CAS\(ME\)\^2code_final.xlsx nor SAMM_LongVideos_V\*"):
    readers.read_long(str(tmp_path))
