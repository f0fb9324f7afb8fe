"""The bad-input catalog (issue 7): every case goes through a real command line in a subprocess.

Each case asserts: exit code != 0 (or, where the config allows it, exit 0 with the
bad item counted as skipped/excluded), one readable ``error: ...`` line naming the
item and what to do, no Python traceback, and no partial output (no results.json,
nothing on stdout for a failed summary/predict).
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import openpyxl
import pytest

import report_fixtures as fx
from mer_jax.data import synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
CASME2_XLSX = "CASME2-coding-20140508.xlsx"


def cli(module: str, *args: str, timeout: int = 300, preexec_fn=None, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=timeout,
    env=env or ENV,
    preexec_fn=preexec_fn,
  )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
  """Exit code 2, one ``error:`` message containing every needle (case-insensitive), no traceback."""
  err = proc.stderr
  assert proc.returncode == 2, (proc.returncode, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1, err[-3000:]
  msg = err[err.index("error: ") :]
  for n in needles:
    assert n.lower() in msg.lower(), (n, msg)
  return msg


# ---------------------------------------------------------------------------------------------
# Dataset folders (python -m mer_jax.data.summary)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthme(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthme")
  return {
    "casme2": synth.generate(
      "casme2", str(root / "casme2"), seed=1, subjects=2, clips_per_subject=4, clip_frames=8, frame_size=64
    ),
    "fer2013": synth.generate("fer2013", str(root / "fer2013"), seed=1, images=12),
  }


def copy_of(synthme, name, tmp_path) -> str:
  dst = str(tmp_path / name)
  shutil.copytree(synthme[name], dst)
  return dst


def summary(root: str, *extra: str, dataset: str = "casme2") -> subprocess.CompletedProcess:
  return cli("mer_jax.data.summary", "--dataset", dataset, "--root", root, "--json", *extra)


def edit_casme2(root: str, edit) -> list:
  """Applies ``edit(ws, header)`` to the CASME II coding sheet; returns the header row."""
  path = os.path.join(root, CASME2_XLSX)
  wb = openpyxl.load_workbook(path)
  ws = wb.active
  header = [c.value for c in ws[1]]
  edit(ws, header)
  wb.save(path)
  return header


def data_rows(root: str) -> list[dict]:
  wb = openpyxl.load_workbook(os.path.join(root, CASME2_XLSX), read_only=True)
  rows = list(wb.active.iter_rows(values_only=True))
  return [dict(zip(rows[0], r)) for r in rows[1:]]


def frame_of_first_clip(root: str) -> str:
  from mer_jax.data import readers

  return readers.read_dataset("casme2", root).samples[0].frame_paths[1]


def test_missing_dataset_folder(tmp_path):
  proc = summary(str(tmp_path / "no_such_casme2"))
  assert_user_error(proc, str(tmp_path / "no_such_casme2"), "CASME II")
  assert proc.stdout == ""


def test_empty_dataset_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  proc = summary(str(tmp_path / "empty"))
  assert_user_error(proc, str(tmp_path / "empty"), "CASME2-coding")
  assert proc.stdout == ""


def test_xlsx_missing_a_column(synthme, tmp_path):
  root = copy_of(synthme, "casme2", tmp_path)
  edit_casme2(root, lambda ws, header: ws.delete_cols(header.index("Estimated Emotion") + 1))
  proc = summary(root)
  assert_user_error(proc, CASME2_XLSX, "Estimated Emotion", "header row")
  assert proc.stdout == ""


def test_xlsx_with_an_extra_header_row_above_the_table_is_read_correctly(synthme, tmp_path):
  """A title row above the header (as in SAMM's release) is tolerated: the same counts as the clean file."""
  root = copy_of(synthme, "casme2", tmp_path)
  ref = json.loads(summary(synthme["casme2"]).stdout)
  edit_casme2(root, lambda ws, header: (ws.insert_rows(1), ws.cell(1, 1, "CASME II coding (release 2014-05-08)")))
  proc = summary(root)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert got["per_class"] == ref["per_class"] and got["per_subject"] == ref["per_subject"]
  assert got["skipped"] == []


def test_xlsx_with_a_repeated_header_row_inside_the_table(synthme, tmp_path):
  root = copy_of(synthme, "casme2", tmp_path)
  edit_casme2(root, lambda ws, header: (ws.insert_rows(3), [ws.cell(3, j + 1, h) for j, h in enumerate(header)]))
  proc = summary(root)
  assert_user_error(proc, CASME2_XLSX, "row 3", "skip_bad_samples")
  assert proc.stdout == ""
  proc = summary(root, "--skip-bad")  # counted skip when allowed
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert len(got["skipped"]) == 1 and "row 3" in got["skipped"][0]["item"]
  n = len(data_rows(synthme["casme2"]))
  assert got["read"] == n + 1 and got["mapped"] + got["excluded"] == n  # every real row still read


def test_unknown_emotion_label(synthme, tmp_path):
  root = copy_of(synthme, "casme2", tmp_path)
  edit_casme2(root, lambda ws, header: ws.cell(2, header.index("Estimated Emotion") + 1, "confusion"))
  proc = summary(root)
  assert_user_error(proc, CASME2_XLSX, "row 2", "'confusion'", "skip_bad_samples")
  assert proc.stdout == ""
  proc = summary(root, "--skip-bad")
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert len(got["skipped"]) == 1 and "confusion" in got["skipped"][0]["reason"]
  assert got["mapped"] + got["excluded"] == len(data_rows(synthme["casme2"])) - 1


def test_subject_with_no_samples_after_mapping_is_excluded_and_counted(synthme, tmp_path):
  """Every clip of one subject relabelled 'fear' (not a 3-class label): the subject gets no LOSO fold,
  and the summary counts its clips as excluded by the mapping."""
  root = copy_of(synthme, "casme2", tmp_path)
  rows = data_rows(root)
  victim = rows[0]["Subject"]

  def relabel(ws, header):
    s, e = header.index("Subject") + 1, header.index("Estimated Emotion") + 1
    for r in range(2, ws.max_row + 1):
      if ws.cell(r, s).value == victim:
        ws.cell(r, e, "fear")

  edit_casme2(root, relabel)
  proc = summary(root)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  n_victim = sum(r["Subject"] == victim for r in rows)
  assert got["excluded_labels"].get("fear", 0) >= n_victim
  assert not any(str(victim) in s for s in got["per_subject"])
  assert sum(got["per_subject"].values()) == got["mapped"]


@pytest.mark.parametrize(
  "damage, needles",
  [
    ("delete", ("is listed but missing",)),
    ("zero_bytes", ("corrupt",)),
    ("text_as_jpg", ("corrupt",)),
  ],
)
def test_bad_frame_files(synthme, tmp_path, damage, needles):
  root = copy_of(synthme, "casme2", tmp_path)
  frame = frame_of_first_clip(root)
  if damage == "delete":
    os.remove(frame)
  elif damage == "zero_bytes":
    open(frame, "wb").close()
  else:
    with open(frame, "w") as f:
      f.write("this is not an image\n")
  # a missing frame is named by its folder and number, a bad file by its path
  item = os.path.dirname(frame) if damage == "delete" else frame
  proc = summary(root)
  assert_user_error(proc, item, *needles, "skip_bad_samples")
  assert proc.stdout == ""
  proc = summary(root, "--skip-bad")
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert len(got["skipped"]) == 1 and item in got["skipped"][0]["reason"]
  assert got["mapped"] + got["excluded"] == len(data_rows(root)) - 1


def test_fer2013_pixels_of_the_wrong_size(synthme, tmp_path):
  root = copy_of(synthme, "fer2013", tmp_path)
  path = os.path.join(root, "fer2013.csv")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  rows[0]["pixels"] = " ".join(["128"] * (40 * 40))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  proc = summary(root, dataset="fer2013")
  assert_user_error(proc, "fer2013.csv", "1600 values", "2304 (48x48)", "skip_bad_samples")
  assert proc.stdout == ""
  proc = summary(root, "--skip-bad", dataset="fer2013")
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert len(got["skipped"]) == 1 and got["read"] == len(rows) and got["mapped"] + got["excluded"] == len(rows) - 1


# ---------------------------------------------------------------------------------------------
# Clips and checkpoints (python -m mer_jax.predict / mer_jax.inspect_checkpoint)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Tiny run directories: one with EVM on, one with face detection set to fail, one whose stored
  weights belong to another model config."""
  root = tmp_path_factory.mktemp("runs")
  out = {}
  cfg = fx.tiny_config(attention="none")
  from mer_jax.models import build_model

  variables = fx.init_variables(build_model(cfg.model), seed=1)
  evm = cfg.copy_and_resolve_references()
  evm.evm.enabled = True
  out["evm"] = fx.save_run(str(root / "evm"), evm, variables, ["a", "b"])
  face = cfg.copy_and_resolve_references()
  face.data.face_crop = True
  face.data.on_no_face = "error"
  out["face"] = fx.save_run(str(root / "face"), face, variables, ["a", "b"])
  other = cfg.copy_and_resolve_references()
  other.model.growth_rate = 4  # the weights saved below are growth_rate 8
  out["other_model"] = fx.save_run(str(root / "other"), other, variables, ["a", "b"])
  out["good"] = fx.save_run(str(root / "good"), cfg, variables, ["a", "b"])
  clips = root / "clips"
  rng = np.random.default_rng(0)
  out["short"] = fx.write_frames(str(clips / "short"), fx.patch_clip(rng, 0, frames=7)[:2])
  out["noface"] = fx.write_frames(str(clips / "noface"), fx.patch_clip(rng, 1, frames=7))
  return out


def test_clip_shorter_than_the_temporal_filter_needs(runs):
  proc = cli("mer_jax.predict", "--checkpoint", runs["evm"], "--input", runs["short"], "--fps", "200")
  assert_user_error(proc, runs["short"], "too short for EVM", "evm.enabled=False")
  assert proc.stdout == ""


def test_no_face_found(runs):
  proc = cli("mer_jax.predict", "--checkpoint", runs["face"], "--input", runs["noface"])
  assert_user_error(proc, runs["noface"], "face", "on_no_face")
  assert proc.stdout == ""


def test_checkpoint_from_a_different_model_config(runs):
  proc = cli("mer_jax.predict", "--checkpoint", runs["other_model"], "--input", runs["noface"])
  assert_user_error(proc, runs["other_model"], "model", "config")
  assert proc.stdout == ""


def test_truncated_checkpoint_is_reported_not_a_traceback(runs, tmp_path):
  run = str(tmp_path / "truncated")
  shutil.copytree(runs["good"], run)
  n = 0
  for dirpath, _, files in os.walk(os.path.join(run, "best")):
    for name in files:
      p = os.path.join(dirpath, name)
      if os.path.getsize(p) > 0 and "state" in dirpath.split(os.sep)[-3:]:
        with open(p, "r+b") as f:
          f.truncate(os.path.getsize(p) // 3)
        n += 1
  assert n
  proc = cli("mer_jax.inspect_checkpoint", run)
  assert_user_error(proc, run, "checkpoint")
  proc = cli("mer_jax.predict", "--checkpoint", run, "--input", runs["noface"])
  assert_user_error(proc, run, "checkpoint")
  assert proc.stdout == ""


def test_inspect_a_folder_that_is_not_a_run(tmp_path):
  proc = cli("mer_jax.inspect_checkpoint", str(tmp_path))
  assert_user_error(proc, str(tmp_path), "not a mer_jax run directory")
  assert proc.stdout == "" and os.listdir(tmp_path) == []  # nothing printed, nothing created there


# ---------------------------------------------------------------------------------------------
# Configs and workdirs (python -m mer_jax.main)
# ---------------------------------------------------------------------------------------------


def no_results(workdir) -> None:
  for dirpath, _, files in os.walk(str(workdir)):
    assert "results.json" not in files and "results.md" not in files, (dirpath, files)


def test_unknown_config_key(tmp_path):
  proc = cli(
    "mer_jax.main", "--config=configs/synth_demo.py", "--config.model.atention=channel", f"--workdir={tmp_path / 'wd'}"
  )
  assert_user_error(proc, "atention", "config_defaults.py")
  assert not os.path.exists(tmp_path / "wd")


def test_config_value_of_the_wrong_type(tmp_path):
  proc = cli(
    "mer_jax.main", "--config=configs/synth_demo.py", "--config.image_size=big", f"--workdir={tmp_path / 'wd'}"
  )
  assert_user_error(proc, "image_size", "type")
  assert not os.path.exists(tmp_path / "wd")


def test_missing_config_file(tmp_path):
  proc = cli("mer_jax.main", "--config=configs/no_such_benchmark.py", f"--workdir={tmp_path / 'wd'}")
  assert_user_error(proc, "no_such_benchmark.py", "--config=")
  assert not os.path.exists(tmp_path / "wd")


def test_config_names_a_missing_dataset_folder(tmp_path):
  """A real dataset whose folder is missing fails at once, with the manual-download instructions."""
  proc = cli(
    "mer_jax.main",
    "--config=configs/sde_casme2.py",
    f"--config.data.roots.casme2={tmp_path / 'nope'}",
    "--config.pretrain.enabled=False",
    f"--workdir={tmp_path / 'wd'}",
  )
  assert_user_error(proc, "data.roots.casme2", str(tmp_path / "nope"), "CASME II")
  no_results(tmp_path)


def _without_file_mode_override() -> None:
  """preexec_fn for a root child: drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the capability
  bounding set before exec, so the command is held to file modes like any user (root otherwise ignores them)."""
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (1, 2, 3):  # linux/capability.h: DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
      raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def test_workdir_without_write_permission(tmp_path):
  """A workdir the user cannot create (its parent is chmod 555) fails at once with a message naming it, before
  any work. As root the command runs without the capabilities that let root ignore file modes."""
  locked = tmp_path / "locked"
  locked.mkdir()
  workdir = locked / "run"
  os.chmod(locked, 0o555)
  try:
    proc = cli(
      "mer_jax.main",
      "--config=configs/synth_demo.py",
      f"--workdir={workdir}",
      preexec_fn=_without_file_mode_override if os.geteuid() == 0 else None,
    )
    assert_user_error(proc, str(workdir), "writ")
    assert os.listdir(locked) == []  # nothing created
  finally:
    os.chmod(locked, stat.S_IRWXU)
