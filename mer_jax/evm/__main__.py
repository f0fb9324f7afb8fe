"""Command line: magnify a clip (video file or frame folder) and write it plus a before/after PNG strip.

  python -m mer_jax.evm --input CLIP --output OUT --alpha 15 --band 0.1,0.4 --fps 200 [--pyramid laplacian]
  python -m mer_jax.evm --input CLIP --output OUT --alpha 15 --band 0.1,0.4 --band-units mit_rates --filter iir

OUT is a video file (.mp4/.avi/...) or a folder (PNG frames). The strip goes to OUT_strip.png (OUT without
its video extension) unless --strip.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

from mer_jax.errors import ConfigError, DataError, run_cli


def _band(text: str) -> tuple[float, float]:
  try:
    lo, hi = (float(p) for p in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.1,0.4), got {text!r}") from None
  return lo, hi


def _levels(text: str):
  if text == "auto":
    return text
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m mer_jax.evm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--input", required=True, help="video file or folder of frames (.jpg/.png/.bmp)")
  p.add_argument("--output", required=True, help="output video file (.mp4/.avi/.mkv/.mov) or frame folder")
  p.add_argument("--alpha", type=float, default=15.0, help="amplification factor (paper: 15)")
  p.add_argument(
    "--band",
    type=_band,
    default=(0.1, 0.4),
    help="temporal band LOW,HIGH (paper: 0.1,0.4): Hz, or rates r2,r1 with --band-units mit_rates",
  )
  p.add_argument(
    "--band-units",
    choices=("hz", "mit_rates"),
    default="hz",
    help="hz: --band in Hz; mit_rates: the MIT IIR's per-frame rates (needs --filter iir)",
  )
  p.add_argument(
    "--fps",
    type=float,
    default=None,
    help="frame rate in Hz; required for a frame folder, overrides a video's own rate",
  )
  p.add_argument(
    "--pyramid",
    choices=("laplacian", "gaussian"),
    default="laplacian",
    help="laplacian: motion magnification; gaussian: colour magnification",
  )
  p.add_argument("--levels", type=_levels, default="auto", help="pyramid levels or 'auto'")
  p.add_argument("--lambda-c", type=float, default=16.0, help="spatial cut-off wavelength in px (laplacian)")
  p.add_argument("--chrom-attenuation", type=float, default=0.1, help="I/Q amplification relative to Y")
  p.add_argument("--filter", choices=("ideal", "butterworth", "iir"), default="ideal", help="temporal filter")
  p.add_argument(
    "--on-empty-band",
    choices=("error", "fallback"),
    default="error",
    help="ideal filter with no FFT bin in the band: stop, or warn and use butterworth",
  )
  p.add_argument("--mit-compatible", action="store_true", help="reproduce the MIT code's filter gains")
  p.add_argument("--strip", default=None, help="before/after PNG strip path (default: OUTPUT_strip.png)")
  p.add_argument("--strip-frames", type=int, default=4, help="frames in the strip")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from mer_jax import video_io
  from mer_jax.evm import magnify

  t0 = time.perf_counter()
  print(f"reading {args.input} ...", flush=True)
  frames, fps = video_io.read_clip(args.input)
  fps = args.fps if args.fps is not None else fps
  if fps is None:
    raise ConfigError(f"{args.input}: the clip has no frame rate; pass --fps (e.g. 200 for CASME II)")
  if not (math.isfinite(fps) and fps > 0):
    what = f"--fps={args.fps:g}" if args.fps is not None else f"{args.input}: the clip's own frame rate {fps:g}"
    raise ConfigError(
      f"{what}: the frame rate must be a positive number of frames per second; "
      "pass --fps=<rate> (e.g. 200 for CASME II)"
    )
  t, h, w, c = frames.shape
  print(f"  {t} frames, {w}x{h}, {c} channel(s), {fps:g} fps ({t / fps:.2f} s)", flush=True)
  units = "Hz" if args.band_units == "hz" else "per-frame rates (MIT IIR)"
  print(
    f"magnifying: {args.pyramid} pyramid, {args.filter} filter, alpha={args.alpha:g}, "
    f"band={args.band[0]:g}-{args.band[1]:g} {units} ...",
    flush=True,
  )
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = magnify(
      frames,
      fps,
      alpha=args.alpha,
      freq_band=args.band,
      pyramid=args.pyramid,
      levels=args.levels,
      lambda_c=args.lambda_c,
      chrom_attenuation=args.chrom_attenuation,
      temporal_filter=args.filter,
      on_empty_band=args.on_empty_band,
      mit_compatible=args.mit_compatible,
      band_units=args.band_units,
    )
    out = out.block_until_ready()
  for wmsg in caught:
    print(f"warning: {wmsg.message}", file=sys.stderr)
  import numpy as np

  out = np.asarray(out)
  print(f"  done in {time.perf_counter() - t0:.1f} s; max |change| = {np.abs(out - frames).max():.4f}", flush=True)
  written = video_io.write_clip(out, args.output, fps)
  out_path = Path(args.output)
  default_strip = (
    out_path.with_name(out_path.stem + "_strip.png")
    if out_path.suffix.lower() in video_io.VIDEO_FOURCC
    else Path(str(out_path).rstrip("/\\") + "_strip.png")
  )
  strip = Path(args.strip) if args.strip else default_strip
  if strip.suffix.lower() != ".png":
    raise DataError(f"{strip}: the strip is written as PNG; give a .png path")
  video_io.write_strip(frames, out, strip, num=max(1, args.strip_frames))
  print(f"wrote {written} and {strip}")
  return 0


if __name__ == "__main__":
  run_cli(main)
