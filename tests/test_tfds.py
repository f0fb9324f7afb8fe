"""TFDS builders and the array pipeline (mer_jax.data.tfds_builders / pipeline) on tiny SynthME sets."""

import os
import shutil

import cv2
import numpy as np
import pytest

from mer_jax import config_defaults
from mer_jax.data import face as face_lib
from mer_jax.data import mappings, pipeline, preprocess, readers, synth
from mer_jax.data import tfds_builders as tb
from mer_jax.errors import ConfigError, DataError, EVMError

CLIP_FRAMES = 16  # at 200 fps: FFT bins every 12.5 Hz


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp("synthme")
  return {
    "casme2": synth.generate(
      "casme2", str(base / "casme2"), seed=1, subjects=2, clips_per_subject=3, clip_frames=CLIP_FRAMES
    ),
    "ck": synth.generate("ck", str(base / "ck"), seed=1, subjects=2, images=4),
  }


def cfg(roots, size=48, evm=False, **data):
  c = config_defaults.get_base_config()
  c.image_size = size
  c.evm.enabled = evm
  c.evm.freq_band = (10.0, 40.0)  # holds bins of a 16-frame clip at 200 fps
  for k, v in roots.items():
    c.data.roots[k] = v
  for k, v in data.items():
    c.data[k] = v
  return c


def direct(root, name, config):
  """What preprocessing gives without TFDS: {clip_id: (label, float image)} for the mapped samples."""
  out = {}
  for s in readers.read_dataset(name, root).samples:
    lab = mappings.map_label(name, s.label, config.data.task, config.data.protocol)
    if lab is not None:
      out[s.clip_id] = (lab, preprocess.preprocess_sample(s, config), s.subject)
  return out


def test_builder_builds_from_manual_dir_and_reads_back_direct_preprocessing(roots, tmp_path):
  c = cfg(roots)
  b = tb.get_builder("casme2", c, str(tmp_path))
  assert b.name == "mer_casme2" and b.builder_config.name == "noevm_48"
  tb.prepare(b, roots["casme2"])
  got = tb.read_cache(b)
  want = direct(roots["casme2"], "casme2", c)
  assert sorted(got["clip_id"]) == sorted(want) and len(want) >= 4
  for i, cid in enumerate(got["clip_id"]):
    lab, img, subj = want[cid]
    assert got["label"][i] == lab and got["subject"][i] == subj and got["source"][i] == "casme2"
    np.testing.assert_array_equal(got["image"][i], tb.quantize(img))
    assert np.abs(got["image"][i] / 255.0 - img).max() <= 0.5 / 255 + 1e-6
  assert b.info.features["label"].names == ["negative", "positive", "surprise"]
  assert b.info.file_format.value == "array_record"
  # random access into the cache
  src = b.as_data_source(split="train")
  assert len(src) == len(want) and src[len(src) - 1]["image"].shape == (48, 48, 3)
  meta = b.info.metadata
  assert meta["build_stats"]["written"] == len(want)
  assert meta["read"] == len(want) + meta["build_stats"]["excluded"]


def test_pipeline_evm_arrays_match_direct_preprocessing(roots, tmp_path):
  c = cfg({"casme2": roots["casme2"]}, evm=True)
  c.data.micro = ("casme2",)
  logs = []
  data = pipeline.load_arrays(c, str(tmp_path), "micro", log=logs.append)
  want = direct(roots["casme2"], "casme2", c)
  assert data.images.dtype == np.float32 and data.images.shape == (len(want), 48, 48, 3)
  assert 0.0 <= data.images.min() and data.images.max() <= 1.0
  assert data.class_names == ("negative", "positive", "surprise")
  for i, cid in enumerate(data.clip_ids):
    lab, img, subj = want[cid]
    assert data.labels[i] == lab and data.subjects[i] == f"casme2/{subj}" and data.sources[i] == "casme2"
    assert np.abs(data.images[i] - img).max() <= 0.5 / 255 + 1e-6
  assert any("building the CASME II cache 'evm_48_" in m for m in logs)
  assert any(m.startswith("[data] casme2: 6 read") for m in logs)
  # EVM really ran: the same clips without it differ
  plain = direct(roots["casme2"], "casme2", cfg(roots))
  assert max(np.abs(plain[k][1] - want[k][1]).max() for k in want) > 0.05


def test_cache_is_reused_and_rebuilt_when_the_folder_changes(roots, tmp_path):
  c = cfg({"ck": roots["ck"]})
  c.data.macro = ("ck",)
  logs = []
  first = pipeline.load_arrays(c, str(tmp_path), "macro", log=logs.append)
  assert first.images.shape[1:] == (48, 48, 3) and set(first.sources) == {"ck"}
  assert all(s.startswith("ck/S") for s in first.subjects)
  n_build = sum("building" in m for m in logs)
  again = pipeline.load_arrays(c, str(tmp_path), "macro", log=logs.append)
  assert sum("building" in m for m in logs) == n_build == 1
  np.testing.assert_array_equal(first.images, again.images)
  other = synth.generate("ck", str(tmp_path / "ck2"), seed=7, subjects=2, images=3)
  c.data.roots.ck = other
  third = pipeline.load_arrays(c, str(tmp_path), "macro", log=logs.append)
  assert any("rebuilding" in m for m in logs)
  assert len(third) == 3


def test_missing_manual_dir_gives_the_download_instructions(roots, tmp_path):
  c = cfg({"casme2": str(tmp_path / "nowhere")})
  c.data.micro = ("casme2",)
  with pytest.raises(DataError, match=r"nowhere does not exist or is empty.*CASME II is licensed"):
    pipeline.load_arrays(c, str(tmp_path), "micro")
  c.data.roots.casme2 = ""
  with pytest.raises(DataError, match=r"data.roots.casme2 is empty.*CASME2-coding.*data.synthetic=True"):
    pipeline.load_arrays(c, str(tmp_path), "micro")
  b = tb.get_builder("samm", c, str(tmp_path / "tfds"))
  assert "SAMM is licensed" in b.MANUAL_DOWNLOAD_INSTRUCTIONS
  with pytest.raises(DataError, match=r"SAMM: the folder .*empty_dir does not exist or is empty.*SAMM is licensed"):
    os.makedirs(tmp_path / "empty_dir")
    tb.prepare(b, str(tmp_path / "empty_dir"))


def test_config_names_separate_every_setting():
  base = config_defaults.get_base_config()
  assert tb.config_name("casme2", base) == "evm_112"
  assert [bc.name for bc in tb.MerCasme2.BUILDER_CONFIGS] == ["evm_112", "noevm_112"]
  assert [bc.name for bc in tb.MerFer2013.BUILDER_CONFIGS] == ["img_112"]
  # a config equal to a predefined one uses the registered BuilderConfig (TFDS refuses a namesake)
  assert tb.get_builder("ck", base, "/nonexistent/tfds").builder_config is tb.MerCk.BUILDER_CONFIGS[0]
  c = config_defaults.get_base_config()
  c.evm.enabled = False
  assert tb.config_name("smic", c) == "noevm_112"
  c.evm.alpha = 30.0  # irrelevant when EVM is off
  assert tb.config_name("smic", c) == "noevm_112"
  names = set()
  for change in ("alpha", "band", "filter", "size", "task", "apex", "margin"):
    c = config_defaults.get_base_config()
    if change == "alpha":
      c.evm.alpha = 20.0
    elif change == "band":
      c.evm.freq_band = (0.1, 0.5)
    elif change == "filter":
      c.evm.temporal_filter = "butterworth"
    elif change == "size":
      c.image_size = 64
    elif change == "task":
      c.data.task = "5class"
    elif change == "apex":
      c.data.apex = "middle"
    elif change == "margin":
      c.data.face_margin = 0.2
    n = tb.config_name("casme2", c)
    assert n != "evm_112" and n not in names
    names.add(n)
  assert "evm_64" in names and "evm_112_5class_paper" in names
  # EVM settings do not split the macro caches
  c = config_defaults.get_base_config()
  c.evm.alpha = 20.0
  assert tb.config_name("ck", c) == "img_112"
  with pytest.raises(ConfigError, match="5class"):
    c.data.task = "5class"
    tb.builder_config_from_config("smic", c)


def test_paper_band_on_short_clips_errors_per_clip_or_is_counted(roots, tmp_path):
  c = cfg({"casme2": roots["casme2"]}, evm=True)
  c.evm.freq_band = (0.1, 0.4)
  c.data.micro = ("casme2",)
  with pytest.raises(
    EVMError,
    match=r"casme2/sub0\d/\w+ \(16 frames onset..offset at 200 fps, 0.080 s\)"
    r".*empty passband",
  ):
    pipeline.load_arrays(c, str(tmp_path), "micro", log=lambda m: None)
  c.data.skip_bad_samples = True
  with pytest.raises(
    DataError,
    match=r"(?s)no samples left in casme2 .*6 read, 1 excluded by the mapping, "
    r"5 skipped, 0 samples.*skipped casme2/sub0.*empty passband",
  ):
    pipeline.load_arrays(c, str(tmp_path), "micro", log=lambda m: None)


def test_no_face_falls_back_with_a_warning_or_errors(roots, tmp_path):
  root = str(tmp_path / "ck")
  shutil.copytree(roots["ck"], root)
  sample = readers.read_dataset("ck", root).samples[0]
  h, w = cv2.imread(sample.frame_paths[0]).shape[:2]
  cv2.imwrite(sample.frame_paths[0], np.full((h, w), 128, np.uint8))  # a flat grey image: no face
  c = cfg({"ck": root})
  c.data.macro = ("ck",)
  logs = []
  with pytest.warns(face_lib.FaceWarning, match=rf"ck/{sample.subject}/{sample.clip_id}: .*no face"):
    data = pipeline.load_arrays(c, str(tmp_path), "macro", log=logs.append)
  assert len(data) == 4
  assert any("1 without a detected face (centre crop" in m for m in logs)
  c.data.on_no_face = "error"
  with pytest.raises(DataError, match=rf"ck/{sample.subject}/{sample.clip_id}: .*found no face"):
    pipeline.load_arrays(c, str(tmp_path), "macro", log=logs.append)
