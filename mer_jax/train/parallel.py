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

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mer_jax.errors import ConfigError


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all local devices)."""
  devices = list(devices) if devices is not None else jax.local_devices()
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, fold_axis: bool = False) -> NamedSharding:
  """Sharding of a batch ``[B, ...]`` (or ``[F, B, ...]`` with ``fold_axis``) along B."""
  return NamedSharding(mesh, P(None, "data") if fold_axis else P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not a multiple of the {n} devices used for data "
                      f"parallelism; choose a multiple of {n}")


def pad_to_multiple(n: int, mesh: Mesh) -> int:
  d = mesh.devices.size
  return -(-n // d) * d
