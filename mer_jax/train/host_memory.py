"""Whether the process's C allocator keeps large freed blocks for reuse (``config.host_malloc``), set before JAX
starts.

XLA:CPU allocates each execution's scratch ("temp") buffer afresh and frees it when the execution ends: for the
paper network's train step ~200 MB per device (``compiled.memory_analysis().temp_size_in_bytes``). glibc's
malloc serves blocks over 32 MiB with ``mmap`` and returns them with ``munmap``, so every step maps the buffer
again and the kernel faults in, and zeroes, every 4 KiB page on first touch: ~98,000 page faults per step on
2 devices (382 MiB), ~0.18 s of kernel time per ~0.7 s step, and a 12-16 ms pause between steps while the
freed buffers are unmapped (2026-11-28, 2-core x86_64, glibc 2.36; docs/perf.md).

``'reuse'`` keeps freed memory in the process for the next allocation instead, with three glibc ``mallopt``
settings: one malloc arena for all threads (``M_ARENA_MAX=1``: other threads' arenas are capped at 64 MiB
heaps and would still ``mmap`` such a buffer), no ``mmap`` for large blocks (``M_MMAP_MAX=0``: they come from the
main heap) and no trimming of the heap's free top below 2 GiB (``M_TRIM_THRESHOLD``). After the first steps
nothing is faulted in again (the heap still grows by a buffer now and then while its free space is too
fragmented for one). It changes where buffers live, not what is computed.

It is not the default (``'system'``) because the one arena is a lock that every thread of the process shares.
The paper network's data-parallel train step (batch 32, 112x112; 98,000 -> 0 page faults per step) ran
0.99x-1.35x as fast with it in 8 paired runs on a shared 2-core host (median 1.08x; at batch 16 no clear gain),
but the small demo network's steps (48x48) ran 0.59x as fast, and PyTorch's step in the same process
0.93x-1.02x (RESULTS.md log entry 23). Try it for long CPU runs with large steps, not for small ones, and not on
a GPU (there the large buffers are device memory). The settings are process-wide and must be made before JAX's CPU
client starts its threads (a thread keeps the arena of its first allocation), so :func:`configure` is called by
the entry points (``mer_jax.main``, the train-step benchmark) before JAX initialises its backends, beside
``parallel.use_host_cores``. Where another malloc is preloaded (``LD_PRELOAD`` of jemalloc, tcmalloc, ...)
glibc's settings would not reach it, and nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable, Mapping, Optional

from mer_jax.errors import ConfigError

HOST_MALLOC_MODES = ("system", "reuse")

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: free heap top is returned to the system above 2 GiB only
REUSE_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))

_MALLOC_LIBRARIES = ("malloc", "hoard")  # jemalloc, tcmalloc, mimalloc, ...
# glibc's own switches for what 'reuse' sets
_PARAMS = ("arena_max", "arena_test", "mmap_max", "mmap_threshold", "trim_threshold", "top_pad")
_TUNABLES = tuple(f"glibc.malloc.{p}" for p in _PARAMS)
# their environment variables (glibc spells the arena ones without the trailing underscore)
_MALLOC_ENV = (
  "MALLOC_ARENA_MAX",
  "MALLOC_ARENA_TEST",
  "MALLOC_MMAP_MAX_",
  "MALLOC_MMAP_THRESHOLD_",
  "MALLOC_TRIM_THRESHOLD_",
  "MALLOC_TOP_PAD_",
)


def check_host_malloc(mode: str) -> str:
  """``mode`` if it is a ``config.host_malloc`` value, else ConfigError naming the key."""
  if mode not in HOST_MALLOC_MODES:
    raise ConfigError(f"config.host_malloc={mode!r}: use one of {', '.join(map(repr, HOST_MALLOC_MODES))}")
  return mode


def glibc_mallopt() -> Optional[Callable[[int, int], int]]:
  """glibc's ``mallopt(param, value) -> 1 on success``, or None where the C library is not glibc."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl has mallopt as a no-op stub)
    return None
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return mallopt


def preloaded_malloc(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """``LD_PRELOAD=...`` naming the malloc libraries (jemalloc, tcmalloc, ...) preloaded in the environment, which
  replace glibc's malloc, or None."""
  env = os.environ if environ is None else environ
  preload = env.get("LD_PRELOAD", "")
  libs = [p for p in preload.replace(":", " ").split() if any(m in os.path.basename(p) for m in _MALLOC_LIBRARIES)]
  return f"LD_PRELOAD={' '.join(libs)}" if libs else None


def glibc_env_settings(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """glibc's arena / mmap / trim settings made in the environment (what ``'reuse'`` overrides), or None. Other
  glibc tunables (e.g. the Makefile's ``glibc.malloc.hugetlb=1``) combine with ``'reuse'``."""
  env = os.environ if environ is None else environ
  tunables = [t.strip() for t in env.get("GLIBC_TUNABLES", "").split(":")]
  mine = [t for t in tunables if t.split("=")[0] in _TUNABLES]
  if mine:
    return f"GLIBC_TUNABLES={':'.join(mine)}"
  named = sorted(k for k in env if k in _MALLOC_ENV)
  return ", ".join(named) if named else None


def configure(mode: str = "system") -> tuple[bool, str]:
  """Applies ``config.host_malloc`` to this process (before JAX starts its CPU client; see the module doc).

  Returns:
    (applied, why): whether the ``'reuse'`` settings are now in effect, and a short reason for the log.
  """
  check_host_malloc(mode)
  if mode == "system":
    return False, "system allocator as it is (config.host_malloc='system'; 'reuse' for large steps: docs/perf.md)"
  mallopt = glibc_mallopt()
  if mallopt is None:
    raise ConfigError(
      "config.host_malloc='reuse' needs glibc's mallopt, which this C library does not have; "
      "use --config.host_malloc=system"
    )
  preload = preloaded_malloc()
  if preload:
    return False, f"system allocator as it is ({preload} replaces glibc's malloc, which 'reuse' would configure)"
  failed = [param for param, value in REUSE_SETTINGS if mallopt(param, value) != 1]
  if failed:
    return False, f"glibc mallopt refused parameter(s) {failed}; allocator partly unchanged"
  env_settings = glibc_env_settings()
  overrides = f"; overrides {env_settings}" if env_settings else ""
  return (
    True,
    f"freed memory kept for reuse (glibc: 1 arena, no mmap, trim above 2 GiB; config.host_malloc='reuse'{overrides})",
  )
