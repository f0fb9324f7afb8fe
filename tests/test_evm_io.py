"""mer_jax.video_io (clip reading/writing) and the `python -m mer_jax.evm` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mer_jax import video_io
from mer_jax.errors import ConfigError, DataError, EVMError
from mer_jax.evm import __main__ as evm_cli
from mer_jax.evm import magnify


def write_numbered(folder: Path, values, grey=False, ext=".png", names=None):
  folder.mkdir(parents=True, exist_ok=True)
  for i, v in enumerate(values):
    img = np.full((10, 12) if grey else (10, 12, 3), v, np.uint8)
    if not grey:
      img[..., 0] = 7  # BGR: blue channel fixed, to check the RGB order
    name = names[i] if names else f"img{i + 1}{ext}"
    assert cv2.imwrite(str(folder / name), img)


def test_folder_natural_order_and_rgb(tmp_path):
  write_numbered(tmp_path / "clip", [10 * i for i in range(12)])  # img1 .. img12
  (tmp_path / "clip" / "notes.txt").write_text("not a frame")
  frames, fps = video_io.read_clip(tmp_path / "clip")
  assert fps is None and frames.shape == (12, 10, 12, 3) and frames.dtype == np.float32
  np.testing.assert_allclose(frames[:, 0, 0, 0], [10 * i / 255 for i in range(12)], atol=1e-6)  # R = G = v
  np.testing.assert_allclose(frames[:, 0, 0, 2], 7 / 255, atol=1e-6)  # B
  assert video_io.natural_key("img2.jpg") < video_io.natural_key("img10.jpg")


def test_grey_folder_gives_one_channel_and_mixed_gives_three(tmp_path):
  write_numbered(tmp_path / "grey", [0, 128, 255], grey=True, ext=".bmp")
  frames, _ = video_io.read_clip(tmp_path / "grey")
  assert frames.shape == (3, 10, 12, 1)
  np.testing.assert_allclose(frames[:, 0, 0, 0], [0, 128 / 255, 1], atol=1e-6)
  write_numbered(tmp_path / "mixed", [50], grey=True, names=["a1.png"])
  write_numbered(tmp_path / "mixed", [60], names=["a2.png"])
  frames, _ = video_io.read_clip(tmp_path / "mixed")
  assert frames.shape == (2, 10, 12, 3)
  np.testing.assert_allclose(frames[0, 0, 0], [50 / 255] * 3, atol=1e-6)


def test_bad_inputs_raise_data_error_naming_the_file(tmp_path):
  with pytest.raises(DataError, match="no such video file or frame folder"):
    video_io.read_clip(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no frames found"):
    video_io.read_clip(tmp_path / "empty")
  write_numbered(tmp_path / "corrupt", [1, 2])
  (tmp_path / "corrupt" / "img3.png").write_bytes(b"\x89PNG garbage")
  with pytest.raises(DataError, match=r"img3\.png: cannot decode"):
    video_io.read_clip(tmp_path / "corrupt")
  write_numbered(tmp_path / "sizes", [1, 2])
  cv2.imwrite(str(tmp_path / "sizes" / "img3.png"), np.zeros((5, 5, 3), np.uint8))
  with pytest.raises(DataError, match=r"img3\.png: frame size 5x5 differs"):
    video_io.read_clip(tmp_path / "sizes")
  (tmp_path / "broken.mp4").write_bytes(b"definitely not a video")
  with pytest.raises(DataError, match="broken.mp4"):
    video_io.read_clip(tmp_path / "broken.mp4")
  with pytest.raises(DataError, match="needs the frame rate"):
    video_io.write_clip(np.zeros((2, 8, 8, 3)), tmp_path / "out.avi", None)


def test_write_read_round_trip_folder_and_video(tmp_path):
  rng = np.random.default_rng(0)
  frames = rng.random((5, 16, 24, 3)).astype(np.float32)
  video_io.write_clip(frames, tmp_path / "frames")
  back, fps = video_io.read_clip(tmp_path / "frames")
  np.testing.assert_allclose(back, frames, atol=0.5 / 255 + 1e-6)
  grey = rng.random((3, 16, 24, 1)).astype(np.float32)
  video_io.write_clip(grey, tmp_path / "grey")
  assert video_io.read_clip(tmp_path / "grey")[0].shape == (3, 16, 24, 1)
  smooth = np.broadcast_to(np.linspace(0.2, 0.8, 24, dtype=np.float32)[None, None, :, None], (6, 16, 24, 3))
  video_io.write_clip(smooth, tmp_path / "clip.avi", 25)
  back, fps = video_io.read_clip(tmp_path / "clip.avi")
  assert back.shape == (6, 16, 24, 3) and fps == pytest.approx(25.0)
  assert np.abs(back - smooth).mean() < 0.03  # lossy (MJPG) but the same picture


def test_strip_layout():
  before = np.zeros((10, 8, 6, 3), np.float32)
  after = np.ones((10, 8, 6, 3), np.float32)
  s = video_io.strip_image(before, after, num=3)
  assert s.shape == (8 * 2 + 4, 6 * 3 + 2 * 4, 3) and s.dtype == np.uint8
  assert s[:8, :6].max() == 0 and s[12:, :6].min() == 255


def test_cli_magnifies_folder_and_writes_strip(tmp_path, capsys):
  t = np.arange(32)[:, None, None, None]
  x = np.arange(32)[None, None, :, None]
  clip = (0.5 + 0.3 * np.cos(2 * np.pi * (x + 0.2 * np.sin(2 * np.pi * 2 * t / 16)) / 16)) * np.ones((1, 24, 1, 3))
  video_io.write_clip(clip.astype(np.float32), tmp_path / "in")
  assert (
    evm_cli.main(
      [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--fps",
        "16",
        "--band",
        "1.5,2.5",
        "--alpha",
        "10",
      ]
    )
    == 0
  )
  out, _ = video_io.read_clip(tmp_path / "out")
  src, _ = video_io.read_clip(tmp_path / "in")
  # The command's output is the library's magnification of the clip with the given fps, band and alpha and the
  # documented defaults (laplacian pyramid, ideal filter, lambda_c 16), written as 8-bit PNGs.
  want = np.asarray(
    magnify(src, 16.0, alpha=10.0, freq_band=(1.5, 2.5), pyramid="laplacian", lambda_c=16.0, temporal_filter="ideal")
  )
  assert np.abs(want - src).max() > 0.05  # a visible magnification
  np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=0.5 / 255 + 1e-6)
  strip = cv2.imread(str(tmp_path / "out_strip.png"))[..., ::-1]
  np.testing.assert_allclose(strip, video_io.strip_image(src, want, num=4), atol=1)
  printed = capsys.readouterr().out
  assert f"max |change| = {np.abs(want - src).max():.4f}" in printed
  assert f"wrote {tmp_path / 'out'} and {tmp_path / 'out_strip.png'}" in printed
  with pytest.raises(EVMError, match="empty passband.*fps=200"):
    evm_cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"), "--fps", "200"])
  with pytest.raises(ConfigError, match="--fps"):
    evm_cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o3")])


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
  r = subprocess.run(
    [sys.executable, "-m", "mer_jax.evm", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2
  assert "error:" in r.stderr and "no such video file or frame folder" in r.stderr and "Traceback" not in r.stderr
