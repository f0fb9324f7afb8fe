"""config.host_malloc='reuse': XLA:CPU's per-execution scratch buffers are reused instead of mapped (and
page-faulted) afresh; 'system' (the default) and a preloaded malloc are left alone."""

import json
import os
import subprocess
import sys

import pytest

from mer_jax import config_defaults
from mer_jax.errors import ConfigError
from mer_jax.train import host_memory
from mer_jax.train.fingerprint import fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two XLA CPU devices (their executions run on the CPU client's threads, not the caller's), a program whose
# scratch buffer is > 64 MiB (larger than a non-main glibc arena's heap), run until the allocator is warm; then
# the median page faults of 9 more runs, counted for the whole process. (With 'reuse' the heap still grows by a
# buffer now and then until its free space is no longer too fragmented for one: the median is the steady state.)
_FAULTS = """
import json, resource, sys
from mer_jax.train import host_memory
applied, why = host_memory.configure(sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 2)
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows = jax.sharding.NamedSharding(mesh, jax.P("data"))
def f(x, w):
  a = jnp.tanh(x @ w)            # [4096, 2048] per device: 32 MiB each, kept apart by the products
  b = jnp.tanh(a @ w.T @ w)
  return (a * b).sum(0) + (jnp.sin(b) @ w.T).sum(0)[:2048]
x = jax.device_put(np.ones((8192, 2048), np.float32) / 2048, rows)
w = jnp.full((2048, 2048), 1 / 2048, jnp.float32)
c = jax.jit(f).lower(x, w).compile()
temp = c.memory_analysis().temp_size_in_bytes
for _ in range(3):
  c(x, w).block_until_ready()
faults = []
for _ in range(9):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  c(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps(dict(applied=applied, why=why, temp=temp, faults=sorted(faults)[4])))
"""


def _run_faults(mode: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for k in ("XLA_FLAGS", "LD_PRELOAD", "GLIBC_TUNABLES"):
    env.pop(k, None)
  proc = subprocess.run(
    [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, cwd=REPO, timeout=300, env=env
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory.glibc_mallopt() is None, reason="glibc's mallopt only")
def test_reuse_stops_the_per_execution_page_faults_of_xla_scratch_buffers():
  system, reuse = _run_faults("system"), _run_faults("reuse")
  pages = system["temp"] / 4096  # one device's scratch buffer, in pages; 2 devices allocate one each
  assert system["temp"] > 64 * 2**20, system  # larger than a thread arena's heap: the case 'reuse' is for
  assert not system["applied"] and reuse["applied"], (system, reuse)
  # glibc's defaults: both devices' scratch buffers are mapped and faulted in again on every execution
  assert system["faults"] > 1.5 * pages, (system, pages)
  # reuse: the warm heap serves them, nothing is faulted in again
  assert reuse["faults"] < 0.02 * pages, (reuse, pages)


class _Recorder:
  def __init__(self, result: int = 1):
    self.calls, self.result = [], result

  def __call__(self, param: int, value: int) -> int:
    self.calls.append((param, value))
    return self.result


@pytest.fixture
def fake_glibc(monkeypatch):
  rec = _Recorder()
  monkeypatch.setattr(host_memory, "glibc_mallopt", lambda: rec)
  for k in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_"):
    monkeypatch.delenv(k, raising=False)
  return rec


def test_reuse_makes_the_three_glibc_settings(fake_glibc):
  applied, why = host_memory.configure("reuse")
  assert applied and "freed memory kept for reuse" in why and "config.host_malloc='reuse')" in why
  assert fake_glibc.calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD


def test_system_is_the_default_and_leaves_the_allocator_alone(fake_glibc):
  assert config_defaults.get_base_config().host_malloc == "system"
  applied, why = host_memory.configure("system")
  assert not applied and fake_glibc.calls == [] and "config.host_malloc='system'" in why


@pytest.mark.parametrize(
  "name, value",
  [("LD_PRELOAD", "/usr/lib/libjemalloc.so.2"), ("LD_PRELOAD", "libfoo.so:/opt/libtcmalloc_minimal.so.4")],
)
def test_reuse_leaves_a_preloaded_malloc_alone(fake_glibc, monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  applied, why = host_memory.configure("reuse")
  assert not applied and fake_glibc.calls == [] and "replaces glibc's malloc" in why, why
  assert value.split(":")[-1] in why


@pytest.mark.parametrize(
  "name, value, says",
  [
    ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2", "GLIBC_TUNABLES=glibc.malloc.arena_max=2"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536"),
    ("MALLOC_ARENA_MAX", "2", "MALLOC_ARENA_MAX"),
    ("MALLOC_TRIM_THRESHOLD_", "1", "MALLOC_TRIM_THRESHOLD_"),
  ],
)
def test_reuse_says_which_glibc_settings_of_the_environment_it_overrides(fake_glibc, monkeypatch, name, value, says):
  monkeypatch.setenv(name, value)
  applied, why = host_memory.configure("reuse")
  assert applied and len(fake_glibc.calls) == 3 and f"overrides {says})" in why, why


@pytest.mark.parametrize(
  "env",
  [
    {"LD_PRELOAD": "libfoo.so", "GLIBC_TUNABLES": "glibc.rtld.x=1"},
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},  # the Makefile's transparent huge pages combine with 'reuse'
    {"MALLOC_CHECK_": "3"},
    {},
  ],
)
def test_unrelated_preloads_and_tunables_do_not_count(env):
  assert host_memory.preloaded_malloc(env) is None
  assert host_memory.glibc_env_settings(env) is None


def test_refused_settings_are_reported(monkeypatch):
  monkeypatch.setattr(host_memory, "glibc_mallopt", lambda: _Recorder(result=0))
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  applied, why = host_memory.configure("reuse")
  assert not applied and "refused" in why and "-8" in why


def test_reuse_without_glibc_is_a_config_error(monkeypatch):
  monkeypatch.setattr(host_memory, "glibc_mallopt", lambda: None)
  with pytest.raises(ConfigError, match=r"config.host_malloc='reuse' needs glibc's mallopt"):
    host_memory.configure("reuse")
  assert not host_memory.configure("system")[0]


def test_unknown_mode_is_a_config_error():
  with pytest.raises(ConfigError, match=r"config.host_malloc='jemalloc': use one of 'system', 'reuse'"):
    host_memory.configure("jemalloc")


def test_host_malloc_does_not_change_a_workdirs_fingerprint():
  # it changes where buffers live, not what is computed: a workdir resumes under either setting
  c = config_defaults.get_base_config()
  before = fingerprint(c)
  c.host_malloc = "reuse"
  assert fingerprint(c) == before
  del c["host_malloc"]  # a workdir made before the key existed
  assert fingerprint(c) == before
