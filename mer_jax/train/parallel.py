"""Data parallelism over the local devices with ``jax.sharding``.

Why a Mesh + NamedSharding under ``jax.jit`` rather than ``jax.pmap``
--------------------------------------------------------------------
The design card names pmap; we chose ``jit`` over a one-axis device mesh
(``('data',)``), which the JAX documentation now recommends for data
parallelism (pmap is in maintenance mode and lowered onto the same machinery):

* the training step stays the *same* pure function as on one device: the
  batch is laid out across devices (``P('data')``), parameters and optimiser
  state are replicated (``P()``), and XLA's SPMD partitioner inserts the
  collectives. No ``axis_name``, no ``lax.pmean`` in model code (the ``shard_map``
  form below passes one, as a module field).
* BatchNorm statistics are therefore *global*: ``mean``/``var`` over the batch
  axis of a sharded array is a global reduction, so the batch statistics (and
  the running averages) are those of the whole batch, exactly as on one device.
  With pmap, a plain flax BatchNorm would average per device unless the model
  were written with ``axis_name`` (mer_jax.models' BatchNorm takes one: ``bn_axis_name``).
* it composes with ``jax.vmap`` over LOSO folds (batch ``[F, B, ...]`` sharded
  ``P(None, 'data')``) and with a single device without code changes.

The same step written per device (``shard_map``)
-------------------------------------------------
On a CPU mesh of several devices (one process or several) the loop's plain train step is
:func:`mer_jax.train.steps.sharded_train_step` instead (:func:`shard_map_step_applies`): ``train_step`` on
each device's share inside ``jax.shard_map``, the model's BatchNorms told the mesh axis (their statistics and
backward sums ``pmean`` / ``psum`` over it: still the whole batch's) and the gradients averaged with one
``pmean``. Same function, fewer and cheaper collectives than GSPMD places there (0.92x the step time on a
2-core host; docs/perf.md). Fold-vmapped steps and GPU/TPU meshes keep GSPMD. The loop runs that step
``loop.STEPS_PER_CALL`` batches per call (a call of a multi-device CPU program costs a fresh scratch buffer).

The global batch size must be a multiple of the number of devices (checked);
evaluation batches are padded to a multiple with masked rows.

Compiler options on a CPU (``config.cpu_fast_conv``)
---------------------------------------------------
The training loop's jitted programs (train, eval and plateau steps) are compiled through :func:`jit`. On a CPU
backend it can turn XLA:CPU's YNNPACK fusions off (:data:`CPU_FAST_CONV_OPTIONS`): XLA's own convolutions then
use several threads per device, which pays where cores would otherwise idle and the convolutions are ones
YNNPACK runs slowly: grouped (fold-vmapped programs, ~1.9x faster without YNNPACK on one device of a 2-core host)
or XLA's own (``conv_impl='xla'``, 1.6x). With the ``conv_impl='cpu'`` form (the CPU default) YNNPACK's kernels
are faster (1.10x on one device), and with as many devices as cores they are faster in any case (docs/perf.md).
So by default (``'auto'``) a CPU program compiles without YNNPACK fusions only when its devices are fewer than
the cores and it is fold-vmapped or uses ``conv_impl='xla'`` (:func:`fast_conv_applies`; ``config.cpu_fast_conv``
is passed down to every jit, there is no process-wide setting). That path's float32 reductions accumulate more
sequentially (less accurate over many terms), which the model's BatchNorm makes harmless by summing only O(spread)
terms (``mer_jax.models.layers.batch_statistics``).
GPU/TPU programs keep XLA's defaults.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from mer_jax.errors import ConfigError


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all local devices)."""
  devices = list(devices) if devices is not None else jax.local_devices()
  # Auto axes: XLA partitions the jitted steps from their in/out shardings (no sharding in the types)
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.P())


def batch_sharding(mesh: Mesh, fold_axis: bool = False) -> NamedSharding:
  """Sharding of a batch ``[B, ...]`` (or ``[F, B, ...]`` with ``fold_axis``) along B."""
  return NamedSharding(mesh, jax.P(None, "data") if fold_axis else jax.P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
      f"{what}={batch_size} is not a multiple of the {n} devices used for data parallelism; choose a multiple of {n}"
    )


def pad_to_multiple(n: int, mesh: Mesh) -> int:
  d = mesh.devices.size
  return -(-n // d) * d


MIN_IMAGES_PER_DEVICE = 8


def cpu_device_count(cores: int, batch_sizes: Sequence[int], min_per_device: int = MIN_IMAGES_PER_DEVICE) -> int:
  """How many XLA devices to lay ``cores`` CPU cores out as: the largest N <= cores that divides every batch
  size and leaves at least ``min_per_device`` images per device (1 when none does).

  XLA:CPU runs most of one convolution on one thread, so a train step on one device leaves cores idle; N
  devices give N data-parallel shards of each batch (BatchNorm statistics stay global, see the module doc).
  """
  sizes = [int(b) for b in batch_sizes if int(b) > 0]
  for n in range(max(1, int(cores)), 1, -1):
    if all(b % n == 0 and b // n >= min_per_device for b in sizes):
      return n
  return 1


def host_cores() -> int:
  """CPU cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_host_cores(config) -> tuple[int, str]:
  """Sets the number of XLA CPU devices for ``config`` before JAX initialises its backends.

  ``config.cpu_devices``: 0 = automatic (:func:`cpu_device_count` over the pretraining and fine-tuning batch
  sizes), N >= 1 = exactly N (1 turns data parallelism over the host's cores off). An explicit
  ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` or ``JAX_NUM_CPU_DEVICES`` wins. Only the CPU
  platform is affected: on a GPU or TPU the accelerator's devices are used as before.

  Returns:
    (N, why): the device count chosen (0 where the environment decides) and a short reason for the log.
  """
  requested = int(config.get("cpu_devices", 0) or 0)
  if requested < 0:
    raise ConfigError(f"config.cpu_devices={requested}: use 0 (automatic) or a device count >= 1")
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or os.environ.get("JAX_NUM_CPU_DEVICES"):
    return 0, "set by XLA_FLAGS / JAX_NUM_CPU_DEVICES"
  cores = host_cores()
  if requested:
    n, why = requested, f"config.cpu_devices={requested}"
  else:
    batches = [config.finetune.batch_size]
    if config.pretrain.enabled and not config.get("pretrained_checkpoint", ""):
      batches.append(config.pretrain.batch_size)
    n = cpu_device_count(cores, batches)
    why = (
      f"automatic: {cores} cores, batch sizes {sorted(set(batches))}, >= {MIN_IMAGES_PER_DEVICE} images "
      "per device; --config.cpu_devices=1 for one device"
    )
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:  # a backend is already up (e.g. mer_jax.main.run called from a notebook)
    return 0, f"not changed ({e})"
  return n, why


def shard_map_step_applies(mesh: Optional[Mesh], apply_fn: Any) -> bool:
  """Whether the training loop's (not fold-vmapped) train step on ``mesh`` is the ``shard_map`` form
  (:func:`mer_jax.train.steps.sharded_train_step`) rather than the GSPMD-partitioned ``train_step``.

  Both compute the same step on the whole batch (BatchNorm statistics global; equal up to float rounding). The
  ``shard_map`` form is used on a CPU mesh of more than one device, where it was measured faster (2-core host, 2
  devices: 0.95x the GSPMD step's time, 0.92x with the dense layers' per-part kernel gradients;
  benchmarks/RESULTS.md log entries 25-26), for models whose ``apply_fn`` can split the batch
  (:meth:`mer_jax.train.state.ModelApply.splits_batch`). A mesh over several processes' CPU devices
  (``jax.distributed``) takes it too, so that a multi-process run computes what one process with as many
  devices does (tests/test_multihost.py). GPU/TPU meshes keep GSPMD (not measured there).
  """
  if mesh is None or mesh.devices.size < 2 or len(mesh.axis_names) != 1:
    return False
  if mesh.devices.flat[0].platform != "cpu":
    return False
  splits = getattr(apply_fn, "splits_batch", None)
  return bool(splits and splits())


# XLA:CPU without YNNPACK fusions (its own convolution and reduction emitters); see the module doc.
CPU_FAST_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
FAST_CONV_MODES = ("auto", "on", "off")


def check_fast_conv(mode: str) -> str:
  """``mode`` if it is a ``config.cpu_fast_conv`` value, else ConfigError naming the key."""
  if mode not in FAST_CONV_MODES:
    raise ConfigError(f"config.cpu_fast_conv={mode!r}: use one of {', '.join(map(repr, FAST_CONV_MODES))}")
  return mode


def _local_device_count(mesh: Optional[Mesh]) -> int:
  if mesh is None:
    return 1  # a jit without shardings runs on one device
  return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def fast_conv_applies(
  mesh: Optional[Mesh] = None, mode: str = "auto", *, folds: bool = False, conv_impl: str = "xla"
) -> bool:
  """Whether :func:`jit` compiles a program on ``mesh`` (None: one device of the default backend) without
  YNNPACK fusions.

  ``mode`` (``config.cpu_fast_conv``): ``'on'``: without YNNPACK fusions; ``'off'``: XLA's default options;
  ``'auto'``: without YNNPACK fusions when the program's devices are fewer than this process's cores
  (:func:`host_cores`), so that XLA's multi-threaded kernels can use the idle cores, **and** its convolutions are
  ones XLA's own kernels run faster: a program vmapped over LOSO folds (``folds``: its convolutions are grouped,
  which YNNPACK runs ~2x slower per fold) or a model with ``conv_impl='xla'``. A plain step of a
  ``conv_impl='cpu'`` model (matrix products, banded kernel gradients) is faster with YNNPACK's kernels even on
  one device of two cores. Paper-network train step on one device of a 2-core host (2026-11-28; ms, YNNPACK
  fusions on / off): ``conv_impl='cpu'`` 842 / 930, ``'xla'`` 1431 / 900; vmapped, 4 folds x 8 images: 2826 /
  1504; on 2 devices of 2 cores the default step takes ~680 ms with them (benchmarks/RESULTS.md). Never on
  GPU/TPU.

  Args:
    mesh: the program's devices (None: one device of the default backend).
    mode: ``config.cpu_fast_conv``.
    folds: whether the program is vmapped over folds (``loop.fit_many``).
    conv_impl: the model's resolved ``config.model.conv_impl`` (``'xla'`` or ``'cpu'``).
  """
  mode = check_fast_conv(mode)
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  if platform != "cpu" or mode == "off":
    return False
  if mode == "on":
    return True
  return _local_device_count(mesh) < host_cores() and (folds or conv_impl != "cpu")


def compiler_options(
  mesh: Optional[Mesh] = None, mode: str = "auto", *, folds: bool = False, conv_impl: str = "xla"
) -> Optional[dict]:
  """XLA compiler options for a program on ``mesh``'s devices.

  Args:
    mesh: the devices the program runs on; None: one device of ``jax.default_backend()``.
    mode: ``config.cpu_fast_conv``: ``'auto'`` / ``'on'`` / ``'off'`` (:func:`fast_conv_applies`).
    folds, conv_impl: what the program is (:func:`fast_conv_applies`).

  Returns:
    A copy of :data:`CPU_FAST_CONV_OPTIONS` where :func:`fast_conv_applies`, else None (XLA's defaults).
  """
  applies = fast_conv_applies(mesh, mode, folds=folds, conv_impl=conv_impl)
  return dict(CPU_FAST_CONV_OPTIONS) if applies else None


def jit(
  fn: Callable,
  mesh: Optional[Mesh] = None,
  mode: str = "auto",
  *,
  folds: bool = False,
  conv_impl: str = "xla",
  **kwargs: Any,
) -> Callable:
  """``jax.jit(fn, **kwargs)`` with :func:`compiler_options` for ``mesh``, ``mode`` and what the program is
  (``folds``, ``conv_impl``: :func:`fast_conv_applies`); how the training loop compiles.

  A jit with compiler options cannot be traced inside another jit (``jax.make_jaxpr`` included): use its
  ``.trace(...)`` / ``.lower(...)`` instead.
  """
  return jax.jit(fn, compiler_options=compiler_options(mesh, mode, folds=folds, conv_impl=conv_impl), **kwargs)


def describe_fast_conv(config) -> str:
  """Checks ``config.cpu_fast_conv`` (default ``'auto'``) and says how the training steps on all local devices of
  the default backend will be compiled (a line for the log): the plain steps, and the fold-vmapped ones where
  ``config.finetune.parallel_folds`` > 0.

  Args:
    config: the full config (``cpu_fast_conv``: ``'auto'``, ``'on'`` or ``'off'``; anything else: ConfigError;
      ``model.conv_impl``, ``finetune.parallel_folds``).

  Returns:
    The log line.
  """
  from mer_jax.models.conv import resolve_conv_impl

  mode = check_fast_conv(config.get("cpu_fast_conv", "auto"))
  n, cores = len(jax.local_devices()), host_cores()
  conv_impl = resolve_conv_impl(config.model.get("conv_impl", "auto"))
  mesh = make_mesh(jax.local_devices())
  how = lambda folds: (
    "without YNNPACK fusions"
    if fast_conv_applies(mesh, mode, folds=folds, conv_impl=conv_impl)
    else "with XLA's default options (YNNPACK fusions)"
  )
  why = {
    "auto": f"{n} device(s) {'<' if n < cores else '>='} {cores} cores, conv_impl='{conv_impl}'",
    "on": "always",
    "off": "never without YNNPACK",
  }[mode]
  steps = f"training steps compiled {how(False)}"
  if int(config.finetune.get("parallel_folds", 0) or 0) > 0:
    steps += f", fold-vmapped steps {how(True)}"
  return f"{steps} (config.cpu_fast_conv='{mode}': {why}; 'on' / 'off' to choose)"
