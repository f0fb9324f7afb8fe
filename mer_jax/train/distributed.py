"""Multi-process (multi-host) training with ``jax.distributed``.

One Python process per host (or per accelerator group), all running the same
command. :func:`initialize` connects them; afterwards ``jax.devices()`` lists the
devices of *every* process and :func:`global_mesh` lays the ``('data',)`` mesh of
:mod:`mer_jax.train.parallel` over all of them, so the unchanged jitted train
step is data parallel across hosts: XLA inserts the cross-process collectives
(gloo on CPU, NCCL on GPU) for the gradient and BatchNorm reductions.

Where the settings come from (first match wins):

==================  ===========================  ==========================================
setting             flag (mer_jax.main)          environment variable
==================  ===========================  ==========================================
coordinator         ``--coordinator_address``    ``JAX_COORDINATOR_ADDRESS`` (``host:port``)
process count       ``--num_processes``          ``JAX_NUM_PROCESSES``
process id          ``--process_id``             ``JAX_PROCESS_ID``
==================  ===========================  ==========================================

With none of them set, a SLURM job step with more than one task
(``SLURM_NTASKS`` > 1; ``srun``) or an Open MPI launch (``OMPI_COMM_WORLD_SIZE``
> 1) is detected by ``jax.distributed.initialize`` itself; otherwise the run
is single-process and nothing is initialised.

Feeding the global batch: every process reads the same (deterministic) data and
builds the same global batch ``[B, ...]``; :func:`put_global` transfers only the
rows that live on this process's devices (``jax.make_array_from_process_local_data``
with :func:`local_rows`), so each process feeds its shard. ``jax.device_put`` of
the full batch onto a global sharding, as :mod:`mer_jax.train.loop` does, does the
same: it copies only the addressable shards.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, TypeVar

import jax
import numpy as np

from mer_jax.errors import ConfigError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Spec:
  """How to join a multi-process run; ``auto``: let JAX detect SLURM / Open MPI."""

  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  auto: bool = False

  @property
  def multi_process(self) -> bool:
    return self.auto or (self.num_processes is not None and self.num_processes > 1)


def _int(value, what: str, source: str) -> Optional[int]:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{source} = {value!r}: {what} must be an integer") from None


def resolve(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  environ: Optional[dict] = None,
) -> Spec:
  """The :class:`Spec` from flags (given values) else environment variables (see the module table).

  Raises ConfigError when the settings are incomplete or inconsistent.
  """
  env = os.environ if environ is None else environ
  addr = coordinator_address or env.get(ENV_COORDINATOR) or None
  n = (
    num_processes
    if num_processes is not None
    else _int(env.get(ENV_NUM_PROCESSES), "the process count", ENV_NUM_PROCESSES)
  )
  pid = process_id if process_id is not None else _int(env.get(ENV_PROCESS_ID), "the process id", ENV_PROCESS_ID)
  if addr is None and n is None and pid is None:
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
      if (_int(env.get(count_var), "the task count", count_var) or 1) > 1:
        return Spec(auto=True)
    return Spec()
  if n is not None and n < 1:
    raise ConfigError(f"--num_processes / {ENV_NUM_PROCESSES} = {n}: must be >= 1")
  if n == 1 and pid in (None, 0):
    return Spec(addr, 1, 0)
  missing = [
    what
    for what, v in (
      ("--coordinator_address / " + ENV_COORDINATOR, addr),
      ("--num_processes / " + ENV_NUM_PROCESSES, n),
      ("--process_id / " + ENV_PROCESS_ID, pid),
    )
    if v is None
  ]
  if missing:
    raise ConfigError(
      f"multi-process training needs {', '.join(missing)} as well "
      f"(got coordinator {addr!r}, process count {n}, process id {pid}); "
      "give all three, e.g. --coordinator_address=host0:12355 --num_processes=2 --process_id=0"
    )
  if not 0 <= pid < n:
    raise ConfigError(f"--process_id / {ENV_PROCESS_ID} = {pid} must be in 0..{n - 1} (--num_processes={n})")
  if ":" not in addr:
    raise ConfigError(
      f"--coordinator_address / {ENV_COORDINATOR} = {addr!r}: expected host:port, "
      "e.g. host0:12355 (process 0's host, a free port)"
    )
  return Spec(addr, n, pid)


def initialize(spec: Spec, *, initialization_timeout: int = 300) -> bool:
  """Joins the multi-process run described by ``spec``; returns whether it did (False: single process).

  Must run before any other JAX call that touches devices. On CPU the
  cross-process collectives use gloo.
  """
  if not spec.multi_process:
    return False
  if jax.distributed.is_initialized():
    return True
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    if spec.auto:
      jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
      jax.distributed.initialize(
        spec.coordinator_address, spec.num_processes, spec.process_id, initialization_timeout=initialization_timeout
      )
  except (RuntimeError, ValueError) as e:
    where = "from SLURM/MPI" if spec.auto else f"at {spec.coordinator_address}"
    raise ConfigError(
      f"cannot join the multi-process run {where} ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else e}); check that every process was started with the "
      "same coordinator address and process count, and that the port is free and reachable"
    ) from None
  return True


def is_primary() -> bool:
  """True in process 0 (the one that writes reports)."""
  return jax.process_index() == 0


def global_mesh():
  """The ``('data',)`` mesh over every process's devices (all local devices when single-process)."""
  from mer_jax.train import parallel

  return parallel.make_mesh(jax.devices())


def local_rows(global_batch: int, mesh) -> slice:
  """The rows of a global batch ``[B, ...]`` sharded ``P('data')`` on ``mesh`` that this process holds.

  Devices of one process are contiguous in :func:`global_mesh` (``jax.devices()``
  is ordered by process), so the rows are one block.
  """
  devices = list(mesh.devices.flat)
  n = len(devices)
  if global_batch % n:
    raise ConfigError(f"global batch {global_batch} is not a multiple of the {n} devices of all processes")
  per = global_batch // n
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  if not mine:
    return slice(0, 0)
  if mine != list(range(mine[0], mine[-1] + 1)):
    raise ValueError("this process's devices are not contiguous in the mesh; build it with global_mesh()")
  return slice(mine[0] * per, (mine[-1] + 1) * per)


def put_global(batch: np.ndarray, sharding) -> jax.Array:
  """A global array ``[B, ...]`` with sharding ``P('data')`` from the full host batch; this process
  transfers only its own rows (:func:`local_rows`)."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  rows = local_rows(batch.shape[0], sharding.mesh)
  return jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(batch[rows]), batch.shape)


def barrier(name: str) -> None:
  """Waits until every process reaches ``barrier(name)`` (no-op single-process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def primary_first(name: str, fn: Callable[[], T]) -> T:
  """Runs ``fn`` in process 0, then (after a barrier) in the others: for work that fills a shared
  cache (SynthME generation, the TFDS build) that the other processes then only read."""
  if jax.process_count() == 1:
    return fn()
  out = fn() if is_primary() else None
  barrier(f"{name}:primary_done")
  if not is_primary():
    out = fn()
  barrier(f"{name}:all_done")
  return out
