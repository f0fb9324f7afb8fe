"""What the device can do, measured in the same run: matmul throughput and memory bandwidth.

The benchmarks report the fraction of these that a hot path achieves ("roofline" figures). Both are
*measured* ceilings (a large jitted matmul; a large jitted elementwise pass), so they hold for any device
JAX runs on, CPU included; for the GPUs this project is lent, the datasheet figures are printed next to them.

  .venv/bin/python benchmarks/peaks.py        # prints both for the default device
"""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp

# NVIDIA datasheet figures (dense, no sparsity): memory bandwidth in GB/s; matmul throughput in GFLOP/s for
# float32 inputs as XLA runs them by default on these GPUs (TF32 tensor cores) and for bfloat16.
DATASHEET = {
  "H100 SXM": {"bandwidth": 3350.0, "float32": 494_700.0, "bfloat16": 989_400.0},
  "H100 PCIe": {"bandwidth": 2000.0, "float32": 378_000.0, "bfloat16": 756_000.0},
  "H200": {"bandwidth": 4800.0, "float32": 494_700.0, "bfloat16": 989_400.0},
}


def datasheet(device: Optional[jax.Device] = None) -> Optional[dict]:
  """The DATASHEET entry of ``device`` (by its device_kind), or None (CPUs and unknown GPUs)."""
  kind = (device or jax.devices()[0]).device_kind
  if "H200" in kind:
    return DATASHEET["H200"]
  if "H100" in kind:
    return DATASHEET["H100 PCIe" if "PCIe" in kind else "H100 SXM"]
  return None


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def matmul_gflops(dtype=jnp.float32, n: Optional[int] = None, repeats: int = 5) -> float:
  """GFLOP/s of a jitted ``[n, n] @ [n, n]`` (n: 2048 on CPU, 8192 on accelerators), best of ``repeats``."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  return 2.0 * n**3 / _best_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats) / 1e9


def bandwidth_gbs(mbytes: Optional[int] = None, repeats: int = 5) -> float:
  """GB/s of a jitted ``y = 2 x + 1`` over a float32 array (read + write counted), best of ``repeats``.

  Size: 256 MiB on CPU (beyond the caches), 2 GiB on accelerators."""
  mbytes = mbytes or (256 if jax.default_backend() == "cpu" else 2048)
  # donated, so the output reuses the input's buffer (a fresh output would add first-touch page faults on CPU)
  step = jax.jit(lambda v: 2.0 * v + 1.0, donate_argnums=0)
  x = step(jnp.ones((mbytes * 2**20 // 4,), jnp.float32))
  n_bytes = 2.0 * x.size * 4
  best = float("inf")
  for _ in range(repeats):
    x.block_until_ready()
    t = time.perf_counter()
    x = step(x)
    x.block_until_ready()
    best = min(best, time.perf_counter() - t)
  return n_bytes / best / 1e9


def describe(measured: float, peak: float, sheet: Optional[float], unit: str) -> str:
  """'X unit = p% of the measured peak (P unit)[; q% of the datasheet's S unit]'."""
  text = f"{measured:,.1f} {unit} = {100 * measured / peak:.1f}% of the measured peak ({peak:,.1f} {unit})"
  if sheet:
    text += f"; {100 * measured / sheet:.1f}% of the datasheet's {sheet:,.0f} {unit}"
  return text


def main() -> None:
  dev = jax.devices()[0]
  sheet = datasheet(dev) or {}
  print(f"# device: jax {jax.__version__} {dev.platform} ({dev.device_kind})")
  for dtype in (jnp.float32, jnp.bfloat16):
    g = matmul_gflops(dtype)
    ref = sheet.get(jnp.dtype(dtype).name)
    print(
      f"matmul {jnp.dtype(dtype).name}: {g:,.1f} GFLOP/s"
      + (f" ({100 * g / ref:.1f}% of the datasheet's {ref:,.0f})" if ref else "")
    )
  bw = bandwidth_gbs()
  ref = sheet.get("bandwidth")
  print(
    f"memory bandwidth: {bw:,.1f} GB/s" + (f" ({100 * bw / ref:.1f}% of the datasheet's {ref:,.0f})" if ref else "")
  )


if __name__ == "__main__":
  main()
