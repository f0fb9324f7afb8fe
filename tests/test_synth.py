"""SynthME: determinism, official layout details, Haar-detectable faces, sub-pixel AU motion."""

import csv
import glob
import hashlib
import json
import os
import re

import cv2
import numpy as np
import openpyxl
import pytest

from mer_jax.data import synth
from mer_jax.errors import ConfigError

SMALL = dict(subjects=2, clips_per_subject=4, clip_frames=10, images=14)


def tree_hash(root):
  h = hashlib.sha256()
  for dirpath, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for f in sorted(files):
      p = os.path.join(dirpath, f)
      h.update(os.path.relpath(p, root).encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  return synth.generate_all(str(tmp_path_factory.mktemp("synth")), seed=1, **SMALL)


def test_deterministic_bytes(tmp_path):
  a = synth.generate("casme2", str(tmp_path / "a"), seed=5, subjects=1, clips_per_subject=2, clip_frames=8)
  b = synth.generate("casme2", str(tmp_path / "b"), seed=5, subjects=1, clips_per_subject=2, clip_frames=8)
  c = synth.generate("casme2", str(tmp_path / "c"), seed=6, subjects=1, clips_per_subject=2, clip_frames=8)
  assert tree_hash(a) == tree_hash(b)  # includes the xlsx (zip times, doc dates pinned)
  assert tree_hash(a) != tree_hash(c)
  s1 = synth.generate("samm", str(tmp_path / "s1"), seed=5, subjects=1, clips_per_subject=2, clip_frames=8)
  s2 = synth.generate("samm", str(tmp_path / "s2"), seed=5, subjects=1, clips_per_subject=2, clip_frames=8)
  assert tree_hash(s1) == tree_hash(s2)


def test_subjects_differ(sets):
  imgs = [
    cv2.imread(sorted(glob.glob(os.path.join(sets["casme2"], "CASME2_RAW_selected", s, "*", "*.jpg")))[0])
    for s in ("sub01", "sub02")
  ]
  assert np.abs(imgs[0].astype(int) - imgs[1].astype(int)).mean() > 10


def test_micro_layout_paths(sets):
  rel = lambda p, r: os.path.relpath(p, r).replace(os.sep, "/")  # noqa: E731
  c = [rel(p, sets["casme2"]) for p in glob.glob(os.path.join(sets["casme2"], "CASME2_RAW_selected", "*", "*", "*"))]
  assert c and all(re.fullmatch(r"CASME2_RAW_selected/sub\d\d/EP\d\d_\d\df?/img\d+\.jpg", p) for p in c)
  s = [rel(p, sets["samm"]) for p in glob.glob(os.path.join(sets["samm"], "SAMM", "*", "*", "*"))]
  assert s and all(re.fullmatch(r"SAMM/(\d{3})/\1_\d_\d/\1_\d{5}\.jpg", p) for p in s)
  m = [rel(p, sets["smic"]) for p in glob.glob(os.path.join(sets["smic"], "HS", "*", "micro", "*", "*", "*"))]
  assert m and all(
    re.fullmatch(r"HS/(s\d+)/micro/(negative|positive|surprise)/\1_(ne|po|sur)_\d\d/image\d{6}\.bmp", p) for p in m
  )
  for p in m:
    emo, clip = p.split("/")[3:5]
    assert clip.split("_")[1] == {"negative": "ne", "positive": "po", "surprise": "sur"}[emo]
  assert cv2.imread(os.path.join(sets["samm"], s[0]), cv2.IMREAD_UNCHANGED).ndim == 2  # SAMM grey
  assert cv2.imread(os.path.join(sets["casme2"], c[0]), cv2.IMREAD_UNCHANGED).ndim == 3


def test_xlsx_layouts(sets):
  ws = openpyxl.load_workbook(os.path.join(sets["casme2"], "CASME2-coding-20140508.xlsx")).active
  assert [c.value for c in ws[1]] == [
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
  ]
  rows = list(ws.iter_rows(min_row=2, values_only=True))
  assert all(isinstance(r[0], int) for r in rows) and any(r[4] == "/" for r in rows)
  ws = openpyxl.load_workbook(os.path.join(sets["samm"], "SAMM_Micro_FACS_Codes_v2.xlsx")).active
  header = [c.value for c in ws[14]]
  assert header[:6] == ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame"]
  assert "Estimated Emotion" in header and ws.cell(row=1, column=1).value  # description rows above
  assert ws.cell(row=15, column=1).number_format == "000"


def test_macro_layouts(sets):
  emo = glob.glob(os.path.join(sets["ck"], "Emotion", "S*", "*", "*_emotion.txt"))
  assert len(emo) == 14
  for f in emo:
    text = open(f).read()
    assert re.fullmatch(r"   [1-7]\.0000000e\+00\n", text)
    subj, seq = f.split(os.sep)[-3:-1]
    frames = sorted(os.listdir(os.path.join(sets["ck"], "cohn-kanade-images", subj, seq)))
    assert frames[-1] == os.path.basename(f).replace("_emotion.txt", ".png")  # peak last
    assert all(re.fullmatch(rf"{subj}_{seq}_\d{{8}}\.png", x) for x in frames)
  lines = open(os.path.join(sets["rafdb"], "EmoLabel", "list_patition_label.txt")).read().splitlines()
  assert len(lines) == 14 and all(re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg [1-7]", ln) for ln in lines)
  for ln in lines:
    img = cv2.imread(os.path.join(sets["rafdb"], "Image", "aligned", ln.split()[0].replace(".jpg", "_aligned.jpg")))
    assert img.shape == (100, 100, 3)
  with open(os.path.join(sets["fer2013"], "fer2013.csv")) as f:
    assert f.readline() == "emotion,pixels,Usage\n"
    rows = list(csv.reader(f))
  assert len(rows) == 14
  for e, px, usage in rows:
    assert 0 <= int(e) <= 6 and usage in ("Training", "PublicTest", "PrivateTest")
    v = [int(x) for x in px.split(" ")]
    assert len(v) == 2304 and 0 <= min(v) and max(v) <= 255


# The code tables as each dataset's documentation gives them (CK+ README, RAF-DB EmoLabel, FER-2013 csv), and
# the micro sets' label vocabularies; SynthME must write its labels with these meanings.
CK_DOC = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
RAFDB_DOC = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
FER2013_DOC = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
MICRO_DOC = {
  "casme2": {"happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"},
  "samm": {"anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"},
  "smic": {"negative", "positive", "surprise"},
}
# One action unit each expression must show (FACS prototypes); neutral shows none.
KEY_AU = {
  "happy": "AU12",
  "happiness": "AU12",
  "sadness": "AU15",
  "sad": "AU15",
  "surprise": "AU26",
  "fear": "AU20",
  "anger": "AU7",
  "angry": "AU7",
  "disgust": "AU9",
  "contempt": "R14",
}


def test_code_tables_are_the_documented_ones():
  assert synth.CK_CODES == {k: v for k, v in CK_DOC.items() if k}  # labelled CK+ sequences never carry 0
  assert synth.RAFDB_CODES == RAFDB_DOC
  assert synth.FER_CODES == FER2013_DOC
  for name, cycle in synth.MICRO_CYCLES.items():
    assert set(cycle) <= MICRO_DOC[name], name


def test_written_codes_mean_the_drawn_expressions(sets):
  """The code in each label file, read with the documented table, names the expression that was drawn."""
  written = {}
  for f in glob.glob(os.path.join(sets["ck"], "Emotion", "S*", "*", "*_emotion.txt")):
    subj, seq = f.split(os.sep)[-3:-1]
    written[("ck", f"{subj}_{seq}")] = CK_DOC[int(float(open(f).read()))]
  for line in open(os.path.join(sets["rafdb"], "EmoLabel", "list_patition_label.txt")).read().splitlines():
    name, code = line.split()
    written[("rafdb", name[:-4])] = RAFDB_DOC[int(code)]
  with open(os.path.join(sets["fer2013"], "fer2013.csv")) as f:
    for n, row in enumerate(csv.DictReader(f)):
      written[("fer2013", f"fer2013_{n + 1:05d}")] = FER2013_DOC[int(row["emotion"])]
  seen = set()
  for name in ("ck", "rafdb", "fer2013"):
    for m in json.load(open(os.path.join(sets[name], synth.MANIFEST)))["samples"]:
      label = written[(name, m["clip_id"])]
      assert m["label"] == label, (name, m["clip_id"])
      assert (KEY_AU[label] in m["aus"]) if label != "neutral" else m["aus"] == {}, (name, label, m["aus"])
      seen.add(label)
  assert {"happy", "happiness", "sadness", "sad", "neutral"} <= seen


def test_haar_detects_faces(sets):
  casc = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
  found = lambda g: len(casc.detectMultiScale(g, 1.1, 5, minSize=(20, 20))) > 0  # noqa: E731
  rates = {}
  for name in ("casme2", "samm", "smic"):
    man = json.load(open(os.path.join(sets[name], synth.MANIFEST)))
    hits = []
    for m in man["samples"]:
      d = os.path.join(sets[name], m["folder"])
      first = sorted(os.listdir(d), key=lambda n: int(re.search(r"(\d+)\.\w+$", n).group(1)))[0]
      hits.append(found(cv2.imread(os.path.join(d, first), cv2.IMREAD_GRAYSCALE)))
    rates[name] = np.mean(hits)
  ck_frames = glob.glob(os.path.join(sets["ck"], "cohn-kanade-images", "*", "*", "*.png"))
  rates["ck"] = np.mean([found(cv2.imread(p, 0)) for p in ck_frames])
  rafdb_images = glob.glob(os.path.join(sets["rafdb"], "Image", "aligned", "*.jpg"))
  rates["rafdb"] = np.mean([found(cv2.imread(p, 0)) for p in rafdb_images])
  with open(os.path.join(sets["fer2013"], "fer2013.csv")) as f:
    fer = [np.array(r["pixels"].split(), np.uint8).reshape(48, 48) for r in csv.DictReader(f)]
  rates["fer2013"] = np.mean([len(casc.detectMultiScale(g, 1.1, 3)) > 0 for g in fer])
  assert all(rates[n] >= 0.9 for n in ("casme2", "samm", "smic", "ck", "rafdb")), rates
  assert rates["fer2013"] >= 0.7, rates


def _clip(label, amplitude, n=21, apex=10, grey=False):
  ident = synth.make_identity(np.random.default_rng(0), grey=grey)
  aus = synth.expression_aus(label, np.random.default_rng(1))
  spec = synth.ClipSpec(
    subject="x",
    clip_id="x",
    label=label,
    n_frames=n,
    apex=apex,
    amplitude=amplitude,
    aus=aus,
    blink_at=None,
    drift=(0.0, 0.0),
  )
  frames = synth.render_clip(ident, spec, frame_size=140, rng=np.random.default_rng(2), noise_scale=0.0)
  return [f.astype(np.float64) for f in frames]


def _change(frames, apex=10):
  d = np.abs(frames[apex] - frames[0]).sum(axis=-1)
  h = d.shape[0]
  return d[: int(h * 0.48)].sum(), d[int(h * 0.58) :].sum()  # above the eyes-nose line, below the nose


def test_au_motion_where_expected():
  up, low = _change(_clip("happiness", 1.0))
  assert low > 5 * up  # lip corners move, brows do not
  up, low = _change(_clip("negative", 1.0))
  assert up > 0 and low > 0  # brows down and together, lip corners down
  up, low = _change(_clip("surprise", 1.0))
  assert up > 0 and low > up  # brows up and mouth opens
  f = _clip("happiness", 1.0)
  np.testing.assert_allclose(f[0], f[-1], atol=1e-9)  # back to neutral at the offset


def test_subpixel_motion_scales_with_amplitude():
  small = sum(_change(_clip("happiness", 0.5)))
  big = sum(_change(_clip("happiness", 1.0)))
  assert small > 0
  assert 1.5 < big / small < 2.6  # sub-pixel rendering: change ~ proportional to displacement


def test_displacement_peak_and_profile():
  d = synth.displacements(synth.EXPRESSIONS["surprise"], 1.25)
  assert max(np.hypot(*v) for v in d.values()) == pytest.approx(1.25)
  p = synth.intensity_profile(30, 12)
  assert p[0] == 0 and p[12] == pytest.approx(1) and p[-1] == pytest.approx(0, abs=1e-12)
  assert np.all(np.diff(p[:13]) > 0) and np.all(np.diff(p[12:]) < 0)


def test_clip_length_and_fps(sets):
  for name, fps in synth.MICRO_FPS.items():
    man = json.load(open(os.path.join(sets[name], synth.MANIFEST)))
    assert man["fps"] == fps and all(m["n_frames"] == 10 for m in man["samples"])
  with pytest.raises(ConfigError, match="not empty"):
    synth.generate("fer2013", sets["fer2013"], images=3)


def test_cli(tmp_path, capsys):
  out = str(tmp_path / "fer")
  assert synth.main(["--layout", "fer2013", "--out", out, "--images", "9", "--quiet"]) == 0
  assert capsys.readouterr().out.strip() == f"fer2013: {out}"
  with open(os.path.join(out, "fer2013.csv")) as f:
    assert len(f.read().splitlines()) == 10
  with pytest.raises(SystemExit):
    synth.main(["--layout", "casme3", "--out", out])
  with pytest.raises(ConfigError, match="images must be >= 1"):
    synth.generate("rafdb", str(tmp_path / "r"), images=0)
