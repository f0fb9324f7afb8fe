"""Is XLA:CPU without YNNPACK fusions wrong on convolution gradients? A minimal program, both compilations, float64.

The program is the smallest piece of the paper network whose float32 gradient differed by percents between the
two compilations: stem (5x5/2 conv 3 -> 32, ReLU, BatchNorm), 3x3/2 average pool, one dense layer (5x5 conv
32 -> 24, ReLU, BatchNorm), concatenation, a linear head and the cross-entropy, batches of 56x56x3. For each
seed it computes the float32 gradient once with XLA's default CPU compiler options and once with
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (YNNPACK fusions off; flags are process-wide, so each
compilation runs in its own subprocess), and compares both against float64 (JAX in x64 mode; with PyTorch
installed also against PyTorch float64 autograd, an independent implementation).

It also counts, per compilation, the ReLU inputs whose float32 sign differs from float64 ("flips"), and first
measures the root cause: a float32 ``jnp.mean`` over N x H x W, as BatchNorm computes it.

Finding (2026-11-28, 2-core x86_64, jax/jaxlib 0.10.2; docs/perf.md): no miscompiled convolution, but
float32 *reductions* are far less accurate without YNNPACK fusions: the mean of 602,112 values ~100.5 is off
by 5.7e-4 against 8.9e-6 with XLA's defaults (65x; a BatchNorm of them 2.0e-3 against 3.1e-5). Gradient errors
follow: without flips 2.7e-5-7.5e-5 against 2.7e-6-1.4e-5 (batch 32), and a pre-activation within that
rounding of 0 lands on the other side of the ReLU kink, which moves one term of the backward pass and so a
few percent of a small gradient tensor (4 of 12 seeds at batch 32 without YNNPACK, 0 with; flax-initialised
runs of the network showed a flip with XLA's defaults too). Upstream report: the reduction accuracy.

Usage: ``.venv/bin/python benchmarks/xla_cpu_conv_grad_repro.py [--seeds 8] [--batch 8]`` (~2 min for
``--seeds 12 --batch 32`` on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
SIZE, STEM, GROWTH = 56, 32, 24


def make_inputs(seed: int, n: int) -> dict:
  """Parameters (LeCun-normal kernels, zero biases, as flax initialises them), images and labels (float32)."""
  rng = np.random.default_rng(seed)

  def kernel(k, cin, cout):
    return (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)

  s4 = SIZE // 4
  return dict(
    w0=kernel(5, 3, STEM),
    b0=np.zeros(STEM, np.float32),
    w1=kernel(5, STEM, GROWTH),
    b1=np.zeros(GROWTH, np.float32),
    wh=(rng.standard_normal((s4 * s4 * (STEM + GROWTH), 3)) / np.sqrt(s4 * s4 * (STEM + GROWTH))).astype(np.float32),
    x=rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32),
    y=rng.integers(0, 3, n).astype(np.int32),
  )


def child(dtype: str, seeds: int, n: int, out_dir: str) -> None:
  """Gradients and ReLU inputs of every seed in this process's compilation; written as .npz files."""
  import jax
  import jax.numpy as jnp

  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)

  def conv(x, w, b, s):
    return jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

  def bn(x):
    m = jnp.mean(x, (0, 1, 2))
    return (x - m) * jax.lax.rsqrt(jnp.mean(jnp.square(x - m), (0, 1, 2)) + 1e-3)

  def forward(p, x):
    c0 = conv(x, p["w0"], p["b0"], 2)
    h = jax.lax.reduce_window(bn(jax.nn.relu(c0)), 0.0, jax.lax.add, (1, 3, 3, 1), (1, 2, 2, 1), "SAME") / 9.0
    c1 = conv(h, p["w1"], p["b1"], 1)
    f = jnp.concatenate([h, bn(jax.nn.relu(c1))], -1)
    return f.reshape(f.shape[0], -1) @ p["wh"], (c0, c1)

  def loss(p, x, y):
    logits, _ = forward(p, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1))

  grad = jax.jit(jax.grad(loss))
  pre = jax.jit(lambda p, x: forward(p, x)[1])
  for seed in range(seeds):
    d = make_inputs(seed, n)
    p = {k: jnp.asarray(d[k], dtype) for k in ("w0", "b0", "w1", "b1", "wh")}
    x = jnp.asarray(d["x"], dtype)
    g = grad(p, x, jnp.asarray(d["y"]))
    c0, c1 = pre(p, x)
    np.savez(
      os.path.join(out_dir, f"{seed}.npz"),
      c0=np.asarray(c0),
      c1=np.asarray(c1),
      **{k: np.asarray(v) for k, v in g.items()},
    )


REDUCTION = """
import jax, jax.numpy as jnp, numpy as np
x = (100 + np.random.default_rng(0).uniform(size=(32, 28, 28, 24))).astype(np.float32)
ref = x.astype(np.float64).mean((0, 1, 2))
m = np.asarray(jax.jit(lambda x: jnp.mean(x, (0, 1, 2)))(x), np.float64)
print("%.1e" % np.max(np.abs(m - ref)))
"""


def reduction_error(flags: str) -> str:
  """max |float32 jnp.mean - float64 mean| over the 24 channels of [32, 28, 28, 24] values 100 + U(0, 1)."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", REDUCTION], env=env, check=True, capture_output=True, text=True)
  return out.stdout.strip()


def torch_reference(seed: int, n: int) -> dict | None:
  """The same gradient by PyTorch float64 autograd (None without torch)."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return None
  d = make_inputs(seed, n)
  p = {k: torch.tensor(d[k].astype(np.float64), requires_grad=True) for k in ("w0", "b0", "w1", "b1", "wh")}
  x = torch.tensor(d["x"].astype(np.float64)).permute(0, 3, 1, 2)

  def conv(x, w, b, s, pad):  # XLA 'SAME': the odd padding pixel goes after (bottom/right)
    return F.conv2d(F.pad(x, pad), w.permute(3, 2, 0, 1), b, stride=s)

  def bn(x):
    m = x.mean((0, 2, 3), keepdim=True)
    return (x - m) / torch.sqrt(((x - m) ** 2).mean((0, 2, 3), keepdim=True) + 1e-3)

  h = F.avg_pool2d(F.pad(bn(F.relu(conv(x, p["w0"], p["b0"], 2, (1, 2, 1, 2)))), (0, 1, 0, 1)), 3, 2)
  f = torch.cat([h, bn(F.relu(conv(h, p["w1"], p["b1"], 1, (2, 2, 2, 2))))], 1).permute(0, 2, 3, 1)
  logits = f.reshape(n, -1) @ p["wh"]
  loss = -F.log_softmax(logits, -1)[torch.arange(n), torch.tensor(d["y"]).long()].mean()
  loss.backward()
  return {k: v.grad.numpy() for k, v in p.items()}


def worst(g: dict, ref: dict) -> tuple[float, str]:
  """Largest max|g - ref| / max|ref| over the parameter tensors, and which tensor."""
  return max((float(np.max(np.abs(g[k] - ref[k])) / np.max(np.abs(ref[k]))), k) for k in ref)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", type=int, default=8)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--child", nargs=2, metavar=("DTYPE", "OUT_DIR"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    child(args.child[0], args.seeds, args.batch, args.child[1])
    return
  import jax
  import jaxlib

  print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, {os.uname().machine}, {os.cpu_count()} cores")
  # The root of the extra rounding: a float32 mean over N x H x W (what BatchNorm computes).
  print(
    json.dumps(
      {
        "jnp.mean of 602,112 float32 values ~100.5, abs error vs float64": {
          "XLA defaults": reduction_error(""),
          f"XLA_FLAGS={NO_YNN}": reduction_error(NO_YNN),
        }
      }
    ),
    flush=True,
  )
  runs = {
    "float64 (x64)": ("float64", ""),
    "float32 default": ("float32", ""),
    f"float32 XLA_FLAGS={NO_YNN}": ("float32", NO_YNN),
  }
  with tempfile.TemporaryDirectory() as tmp:
    for i, (dtype, flags) in enumerate(runs.values()):
      out = os.path.join(tmp, str(i))
      os.makedirs(out)
      env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
      subprocess.run(
        [sys.executable, __file__, "--seeds", str(args.seeds), "--batch", str(args.batch), "--child", dtype, out],
        env=env,
        check=True,
      )
    rows = []
    for seed in range(args.seeds):
      res = [dict(np.load(os.path.join(tmp, str(i), f"{seed}.npz"))) for i in range(len(runs))]
      ref = {k: v for k, v in res[0].items() if k not in ("c0", "c1")}
      row = {"seed": seed}
      tref = torch_reference(seed, args.batch)
      if tref is not None:
        row["float64 jax vs torch"] = "%.1e" % worst(ref, tref)[0]
      for name, r in zip(list(runs)[1:], res[1:]):
        err, where = worst({k: r[k].astype(np.float64) for k in ref}, ref)
        flips = sum(int(np.sum((r[c] > 0) != (res[0][c] > 0))) for c in ("c0", "c1"))
        row[name] = f"{err:.1e} ({where}), ReLU flips {flips}"
      rows.append(row)
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
