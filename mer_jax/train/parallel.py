"""Data parallelism over the local devices with ``jax.sharding``.

Why a Mesh + NamedSharding under ``jax.jit`` rather than ``jax.pmap``
--------------------------------------------------------------------
The design card names pmap; we chose ``jit`` over a one-axis device mesh
(``('data',)``), which the JAX documentation now recommends for data
parallelism (pmap is in maintenance mode and lowered onto the same machinery):

* the training step stays the *same* pure function as on one device: the
  batch is laid out across devices (``P('data')``), parameters and optimiser
  state are replicated (``P()``), and XLA's SPMD partitioner inserts the
  collectives. No ``axis_name``, no ``lax.pmean`` in model code.
* BatchNorm statistics are therefore *global*: ``mean``/``var`` over the batch
  axis of a sharded array is a global reduction, so the batch statistics (and
  the running averages) are those of the whole batch, exactly as on one device.
  With pmap, a plain flax BatchNorm would average per device unless the model
  were written with ``axis_name`` (mer_jax.models has none).
* it composes with ``jax.vmap`` over LOSO folds (batch ``[F, B, ...]`` sharded
  ``P(None, 'data')``) and with a single device without code changes.

The global batch size must be a multiple of the number of devices (checked);
evaluation batches are padded to a multiple with masked rows.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

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
