"""Training-step speed: the jitted mer_jax train step vs the same network in PyTorch (eager, torch.compile).

Same network (benchmarks/torch_twin.py, tested to have the same parameters and logits), same batch
(default 32 x 112 x 112 x 3, random data, 3 classes), same optimiser (Adam, lr 0.01), same loss
(mean cross-entropy), BatchNorm in training mode. The JAX step is ``mer_jax.train.steps.train_step``
compiled as ``mer_jax.train.loop.fit`` compiles it (``mer_jax.train.parallel.jit``, ``config.cpu_fast_conv='auto'``:
on a CPU, without XLA:CPU's YNNPACK fusions where the devices are fewer than the cores and the model's convolutions
are ``conv_impl='xla'``; with the default ``'cpu'`` form, XLA's defaults), timed with the
state carried from step to step and the batch already on the device; PyTorch does
``zero_grad / forward / backward / step``. Every figure is the
median over ``--repeats`` timed blocks of ``--steps`` steps, after warm-up (compile time separate); the
blocks run round-robin over the variants so that load from other processes affects all of them alike.

  .venv/bin/python benchmarks/train_step_bench.py                  # the 7 default variants below: ~4 min
  .venv/bin/python benchmarks/train_step_bench.py --torch-compile  # + torch.compile (~7 min to compile here)
  .venv/bin/python benchmarks/train_step_bench.py --variants "jax,jax bf16,torch eager,torch eager CL"
  .venv/bin/python benchmarks/train_step_bench.py --batch 64 --steps 5 --repeats 5

Variants: ``jax``: the jitted train_step on one device; ``jax+donate``: the same with the train state
donated (buffers updated in place); ``jax main``: what ``mer_jax.main`` runs by default, the donated step data
parallel over the XLA devices the host's CPU cores are laid out as (``config.cpu_devices``; on a GPU, its devices);
``jax xla`` / ``jax main xla``: ``jax`` / ``jax main`` compiled with XLA's default options (YNNPACK fusions,
``config.cpu_fast_conv='off'``), ``jax fast`` / ``jax main fast``: without YNNPACK fusions (``'on'``); on a GPU all
are the same program as ``jax`` / ``jax main``;
``jax main gspmd``: ``jax main`` as the jitted ``train_step`` partitioned by XLA (GSPMD) instead of the loop's
``shard_map`` step (``mer_jax.train.steps.sharded_train_step``, used on a CPU mesh of several devices, where
``loop.fit`` runs ``loop.STEPS_PER_CALL`` (4) steps per call: ``jax main`` times it so, per step); ``jax main
single``: that step one per call;
``jax convxla`` / ``jax main convxla``: ``jax`` / ``jax main`` with ``config.model.conv_impl='xla'`` (flax's
convolutions as XLA derives them) instead of the default ``'auto'``, which on a CPU is ``'cpu'`` (1x1 convolutions
as matrix products, kernel gradients in row bands: ``mer_jax.models.conv``); on a GPU both are ``'xla'``;
``jax bf16``: model.dtype='bfloat16' (compute in bf16, params float32);
``jax share`` / ``torch share``: one device's share of ``jax main`` (``--batch`` / the devices) with every thread of
the process pinned to one core while it is timed (PyTorch with one thread), compiled as each device of ``jax main``
is: the per-core speed without the other cores' traffic or the devices' synchronisation; with them, the run also
prints the per-core ratio and each framework's parallel overhead (CPU only; ``--variants "jax main,jax share,torch
eager,torch share"``);
default: ``jax``, ``jax xla``, ``jax main``, ``jax main convxla``, ``jax share``, ``torch eager``, ``torch share``;
``torch eager`` (NCHW), ``torch eager CL`` (channels_last), ``torch.compile`` (inductor).
Ratios are against ``torch eager`` measured in the same run.
``--host-malloc reuse``: the run under ``config.host_malloc='reuse'`` (glibc keeps freed memory, so XLA's
per-step scratch buffers are not page-faulted in again: ``mer_jax.train.host_memory``); it is process-wide, so
the PyTorch rows run under it too (their threads share the one arena: 0.93x-1.02x, RESULTS.md log entry 23);
compare ``jax main`` against a default (``system``) run's ``torch eager``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "benchmarks")):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import peaks  # noqa: E402  (benchmarks/peaks.py)
from mer_jax import config_defaults  # noqa: E402
from mer_jax.models import build_model, init_variables  # noqa: E402
from mer_jax.models.conv import resolve_conv_impl  # noqa: E402
from mer_jax.train import host_memory, loop, parallel  # noqa: E402
from mer_jax.train.state import create_state, model_apply  # noqa: E402
from mer_jax.train.steps import sharded_train_step, train_step  # noqa: E402


def initial_state(args, dtype: str = "float32", conv_impl: str = "auto"):
  """The paper network's train state (3 classes, Adam) at ``args.size``, parameters from key 0."""
  mcfg = config_defaults.get_model_config(num_classes=3)
  mcfg.dtype = dtype
  mcfg.conv_impl = conv_impl
  model = build_model(mcfg)
  tcfg = config_defaults.get_train_config(batch_size=args.batch, epochs=1)
  return create_state(model_apply(model), init_variables(model, jax.random.key(0), args.size, 3), tcfg)


def jax_variant(
  args,
  dtype: str = "float32",
  donate: bool = False,
  mesh=None,
  fast_conv: str = "auto",
  conv_impl: str = "auto",
  form: str = "auto",
) -> dict:
  """The compiled train step, warmed up: ``block(n)`` runs n steps and returns the last loss.

  mesh: data parallel over its devices as ``mer_jax.train.loop.fit`` runs it (batch sharded, state replicated
  and donated); None: one device. fast_conv: ``config.cpu_fast_conv`` ('auto' (the default), 'on', 'off').
  conv_impl: ``config.model.conv_impl`` ('auto' (the default), 'xla', 'cpu'). form (with a mesh): 'auto' the
  loop's choice (``parallel.shard_map_step_applies``: on a CPU mesh the ``shard_map`` step, ``loop.STEPS_PER_CALL``
  steps per call as ``loop.fit`` calls it), 'gspmd' the jitted ``train_step`` partitioned by XLA, 'shard_map'
  ``steps.sharded_train_step`` one step per call.
  """
  state = initial_state(args, dtype, conv_impl)
  impl = resolve_conv_impl(conv_impl)  # what 'auto' compiler options depend on, as in loop._compiled
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
  y = rng.integers(0, 3, args.batch).astype(np.int32)
  group = None
  if mesh is None:
    x, y = jax.device_put(x), jax.device_put(y)
    step = parallel.jit(train_step, mode=fast_conv, conv_impl=impl, donate_argnums=(0,) if donate else ())
  else:
    parallel.check_batch_size(args.batch, mesh, "--batch")
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = jax.device_put(state, rep, may_alias=False)
    x, y = jax.device_put(x, data), jax.device_put(y, data)
    if form == "auto":  # the programs loop.fit runs (with loop.STEPS_PER_CALL steps per call where it does)
      fns = loop._compiled(mesh, False, state.apply_fn, fast_conv)
      step, group = fns["train"], fns.get("train_steps")
      if group is not None:
        groups = parallel.batch_sharding(mesh, fold_axis=True)
        xx, yy = (jax.device_put(np.stack([a] * loop.STEPS_PER_CALL), groups) for a in (x, y))
    else:
      step = parallel.jit(
        sharded_train_step(mesh) if form == "shard_map" else train_step,
        mesh=mesh,
        mode=fast_conv,
        conv_impl=impl,
        in_shardings=(rep, data, data),
        out_shardings=(rep, rep),
        donate_argnums=0,
      )
  t = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  compiled_group = group.lower(state, xx, yy).compile() if group is not None else None
  compile_s = time.perf_counter() - t
  holder = {"state": state}

  def block(n):
    """n steps as loop.fit runs an epoch's: groups of loop.STEPS_PER_CALL in one call where it does, the rest
    one by one."""
    s = holder["state"]
    loss, i = None, 0
    while i < n:
      if compiled_group is not None and i + loop.STEPS_PER_CALL <= n:
        s, losses = compiled_group(s, xx, yy)
        loss, i = losses[-1], i + loop.STEPS_PER_CALL
      else:
        s, loss = compiled(s, x, y)
        i += 1
    loss.block_until_ready()
    holder["state"] = s
    return float(jax.device_get(loss))

  block(args.warmup)
  return dict(block=block, compile_s=compile_s)


def step_work_flops(args) -> float:
  """The float32 train step's work in FLOPs: XLA's cost analysis of the lowered program (before XLA's rewrites),
  with the convolutions as flax derives them (``conv_impl='xla'``).

  The lowered program is the same on every platform and counts the whole batch also where a mesh shards it; a
  compiled program's count is not: on a GPU its convolutions are cuDNN calls that the analysis does not count
  (0.9 of ~83 GFLOP), on a mesh it counts one device's share, and ``conv_impl='cpu'`` adds its bands' halos.
  """
  state = initial_state(args, conv_impl="xla")
  x = jax.ShapeDtypeStruct((args.batch, args.size, args.size, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((args.batch,), jnp.int32)
  cost = jax.jit(train_step).lower(state, x, y).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _process_threads() -> list[int]:
  """Thread ids of this process (Linux: /proc/self/task; elsewhere: none, so nothing is pinned)."""
  try:
    return [int(t) for t in os.listdir("/proc/self/task")]
  except OSError:
    return []


def on_one_core(variant: dict, torch_threads: int | None = None) -> dict:
  """``variant`` whose timed blocks run with every thread of this process pinned to one core (the first of the
  process's affinity mask), and PyTorch limited to ``torch_threads`` threads while they run; affinities and
  PyTorch's thread count are restored after each block. For the per-core share of a data-parallel step: one
  device's share of the batch on one core, as each core runs it in ``jax main``, but with the core to itself.
  """
  inner = variant["block"]

  def block(n):
    saved = {}
    core = min(os.sched_getaffinity(0))
    for tid in _process_threads():
      try:
        saved[tid] = os.sched_getaffinity(tid)
        os.sched_setaffinity(tid, {core})
      except OSError:  # a thread that ended meanwhile
        pass
    if torch_threads is not None:
      import torch

      before = torch.get_num_threads()
      torch.set_num_threads(torch_threads)
    try:
      return inner(n)
    finally:
      if torch_threads is not None:
        torch.set_num_threads(before)
      for tid, mask in saved.items():
        try:
          os.sched_setaffinity(tid, mask)
        except OSError:
          pass

  return dict(variant, block=block)


def share_args(args, devices: int):
  """``args`` with the batch of one of ``devices`` data-parallel devices (``--batch`` / devices)."""
  return argparse.Namespace(**dict(vars(args), batch=args.batch // max(1, devices)))


def torch_variant(args, mode: str) -> dict:
  import torch

  from benchmarks import torch_twin

  torch.manual_seed(0)
  twin = torch_twin.from_model_config(config_defaults.get_model_config(num_classes=3), image_size=args.size)
  device = torch.device(args.torch_device)
  twin = twin.to(device).train()
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.uniform(0, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)).to(device)
  y = torch.from_numpy(rng.integers(0, 3, args.batch).astype(np.int64)).to(device)
  if mode == "channels_last":
    twin = twin.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.Adam(twin.parameters(), lr=0.01)
  loss_fn = torch.nn.CrossEntropyLoss()

  def one_step(model):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss

  step_model = twin
  compile_s = 0.0
  if mode == "compile":
    step_model = torch.compile(twin)
    t = time.perf_counter()
    one_step(step_model)  # compiles forward + backward
    compile_s = time.perf_counter() - t

  def block(n):
    for _ in range(n):
      loss = one_step(step_model)
    return float(loss.detach())  # .item() waits for the device

  block(args.warmup)
  return dict(block=block, compile_s=compile_s, threads=torch.get_num_threads())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--size", type=int, default=112)
  ap.add_argument(
    "--steps",
    type=int,
    default=4,
    help="steps per timed block (4: one call of the loop's multi-device CPU step, mer_jax.train.loop.STEPS_PER_CALL)",
  )
  ap.add_argument("--repeats", type=int, default=3, help="timed blocks (the median is reported)")
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument(
    "--torch-compile",
    action="store_true",
    help="add torch.compile (inductor; its compile took ~400 s on this 2-core machine)",
  )
  ap.add_argument("--no-torch", action="store_true", help="JAX variants only")
  ap.add_argument(
    "--torch-device", default=None, help="cpu | cuda (default: cuda when this torch build sees a GPU, else cpu)"
  )
  ap.add_argument(
    "--variants",
    default="jax,jax xla,jax main,jax main convxla,jax share,torch eager,torch share",
    help="comma-separated list from: jax, jax+donate, jax xla, jax fast, jax convxla, jax main, jax main xla, "
    "jax main fast, jax main convxla, jax main gspmd, jax main single, jax bf16, jax share, torch eager, "
    "torch eager CL, torch share, torch.compile",
  )
  ap.add_argument(
    "--host-malloc",
    default="system",
    choices=host_memory.HOST_MALLOC_MODES,
    help="config.host_malloc for this process, set as mer_jax.main sets it (default: system, main's default); "
    "process-wide, so it applies to the PyTorch variants too",
  )
  args = ap.parse_args()
  # Before JAX or torch start their threads (mer_jax.train.host_memory); process-wide, so torch's rows get it too.
  _, malloc_why = host_memory.configure(args.host_malloc)
  # "jax main": the step as mer_jax.main runs it by default, data parallel over the XLA devices that
  # mer_jax.train.parallel.use_host_cores lays the host's cores out as (set before JAX starts its backends).
  n_main = parallel.cpu_device_count(parallel.host_cores(), [args.batch])
  jax.config.update("jax_num_cpu_devices", n_main)
  wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
  if args.torch_compile and "torch.compile" not in wanted:
    wanted.append("torch.compile")
  try:
    import torch

    torch_version = torch.__version__
  except ImportError:
    torch, torch_version = None, None
  if torch is not None and args.torch_device is None:
    args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  if args.no_torch or torch is None:
    if torch is None:
      print("torch is not installed (.venv/bin/pip install torch==2.13.0): PyTorch rows skipped")
    wanted = [v for v in wanted if v.startswith("jax")]

  dev = jax.devices()[0]
  if dev.platform != "cpu" and any(v.endswith(" share") for v in wanted):
    print("# 'jax share' / 'torch share' measure one CPU core's share: skipped on a non-CPU backend")
    wanted = [v for v in wanted if not v.endswith(" share")]
  print(f"# train-step benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
  print(
    f"# device: jax {jax.__version__} {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, "
    f"{platform.processor() or platform.machine()}; torch {torch_version}"
    + (f" on {args.torch_device} ({torch.get_num_threads()} CPU threads)" if torch is not None else "")
  )
  if torch is not None and dev.platform != "cpu" and args.torch_device == "cpu":
    print(
      "# WARNING: JAX runs on an accelerator but torch on the CPU (install a CUDA torch build for a fair "
      "baseline); ratios against torch are not like for like"
    )
  print(
    f"# 'jax main' = data parallel over {len(jax.local_devices())} {dev.platform} device(s), as mer_jax.main "
    "runs by default; 'jax' = one device"
  )
  impl = resolve_conv_impl("auto")
  ynn = lambda mesh: "XLA defaults" if parallel.compiler_options(mesh, conv_impl=impl) is None else "no YNNPACK fusions"
  print(
    f"# compiled as the loop compiles by default ('auto'): 'jax' {ynn(None)}, 'jax main' "
    f"{ynn(parallel.make_mesh())}; '... xla' XLA defaults, '... fast' no YNNPACK fusions (CPU only)"
  )
  print(f"# host memory (--host-malloc {args.host_malloc}, every variant of this process): {malloc_why}")
  print(
    f"# batch {args.batch} x {args.size}x{args.size}x3, Adam lr 0.01, paper config (3,135,541 params); "
    f"median of {args.repeats} blocks of {args.steps} steps after {args.warmup} warm-up"
  )
  runners = {
    "jax": lambda: jax_variant(args),
    "jax+donate": lambda: jax_variant(args, donate=True),
    "jax main": lambda: jax_variant(args, mesh=parallel.make_mesh()),
    "jax xla": lambda: jax_variant(args, fast_conv="off"),
    "jax fast": lambda: jax_variant(args, fast_conv="on"),
    "jax main xla": lambda: jax_variant(args, mesh=parallel.make_mesh(), fast_conv="off"),
    "jax main fast": lambda: jax_variant(args, mesh=parallel.make_mesh(), fast_conv="on"),
    "jax main convxla": lambda: jax_variant(args, mesh=parallel.make_mesh(), conv_impl="xla"),
    "jax main gspmd": lambda: jax_variant(args, mesh=parallel.make_mesh(), form="gspmd"),
    "jax main single": lambda: jax_variant(args, mesh=parallel.make_mesh(), form="shard_map"),
    "jax convxla": lambda: jax_variant(args, conv_impl="xla"),
    "jax bf16": lambda: jax_variant(args, dtype="bfloat16"),
    # one device's share of 'jax main' (batch / devices) on one core, compiled as each device of 'jax main' is
    "jax share": lambda: on_one_core(
      jax_variant(
        share_args(args, n_main),
        fast_conv="on" if parallel.compiler_options(parallel.make_mesh(), conv_impl=impl) else "off",
      )
    ),
    "torch eager": lambda: torch_variant(args, "eager"),
    "torch share": lambda: on_one_core(torch_variant(share_args(args, n_main), "eager"), torch_threads=1),
    "torch eager CL": lambda: torch_variant(args, "channels_last"),
    "torch.compile": lambda: torch_variant(args, "compile"),
  }
  results, flops = {}, step_work_flops(args)
  for name in wanted:
    if name not in runners:
      raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(runners)}")
    try:
      results[name] = runners[name]()
    except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working C++ toolchain
      results[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    print(f"  ready: {name}", file=sys.stderr, flush=True)
  # Timed blocks round-robin over the variants, so that load from other processes hits all alike.
  ready = {k: r for k, r in results.items() if "error" not in r}
  for r in ready.values():
    r["times"] = []
  for _ in range(args.repeats):
    for r in ready.values():
      t = time.perf_counter()
      r["loss"] = r["block"](args.steps)
      r["times"].append((time.perf_counter() - t) / args.steps)
  for r in ready.values():
    r["sec"] = statistics.median(r["times"])

  base = results.get("torch eager", {}).get("sec")
  print(
    f"\n{'variant':<16} {'ms/step':>9} {'images/s':>9} {'GFLOP/s':>8} {'vs eager':>9} {'compile s':>10} {'loss@end':>9}"
  )
  for name, r in results.items():
    if "error" in r:
      print(f"{name:<16} failed: {r['error']}")
      continue
    share = name.endswith(" share")
    ips = (args.batch // n_main if share else args.batch) / r["sec"]
    gf = flops / (n_main if share else 1) / r["sec"] / 1e9 if flops == flops else float("nan")
    ratio = f"{base / r['sec']:.2f}x" if base and not share else "-"
    print(f"{name:<16} {r['sec'] * 1e3:9.1f} {ips:9.1f} {gf:8.1f} {ratio:>9} {r['compile_s']:10.1f} {r['loss']:9.4f}")
  sec = {k: r["sec"] for k, r in ready.items()}
  if "jax share" in sec and "torch share" in sec:
    print(
      f"\nper core ({args.batch // n_main} images on one core): jax share / torch share "
      f"{sec['torch share'] / sec['jax share']:.2f}x PyTorch's speed"
    )
  for main_name, share_name in (("jax main", "jax share"), ("torch eager", "torch share")):
    if main_name in sec and share_name in sec and n_main > 1:
      print(
        f"parallel overhead, {main_name}: {sec[main_name] * 1e3:.1f} ms on {n_main} cores vs "
        f"{sec[share_name] * 1e3:.1f} ms for one core's share alone ({sec[main_name] / sec[share_name]:.2f}x)"
      )
  if flops == flops:
    print(
      f"\nwork per step (XLA cost analysis of the lowered f32 train step): {flops / 1e9:.1f} GFLOP "
      f"({flops / args.batch / 1e9:.2f} GFLOP per image, forward + backward + Adam)"
    )
    peak = peaks.matmul_gflops(jnp.float32)
    sheet = (peaks.datasheet(dev) or {}).get("float32")
    for name, r in ready.items():
      if name.startswith("jax") and not name.endswith(("bf16", " share")):  # share: one core, not the peak's
        print(
          f"matrix throughput, {name}: "
          + peaks.describe(flops / r["sec"] / 1e9, peak, sheet, "GFLOP/s")
          + " (peak: a jitted float32 matmul measured in this run)"
        )


if __name__ == "__main__":
  main()
