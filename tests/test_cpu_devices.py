"""Every core by default on a CPU: the device-count rule, the config switch, and what mer_jax.main does
(also: the training steps compiled without YNNPACK fusions, config.cpu_fast_conv)."""

import os
import subprocess
import sys

import pytest

from mer_jax import config_defaults
from mer_jax.errors import ConfigError
from mer_jax.train import host_memory, parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "cores, batches, want",
  [
    (2, [16, 32], 2),  # the paper's batch sizes on this 2-core machine
    (16, [16, 32], 2),  # pretraining's 16 allows 2 devices of >= 8 images
    (16, [32], 4),  # fine-tuning alone (pretrained weights reused)
    (8, [64, 64], 8),
    (6, [48], 6),
    (6, [32], 4),  # 6 and 5 do not divide 32
    (3, [16, 32], 2),
    (1, [16, 32], 1),
    (4, [12], 1),  # 12/2 = 6 < 8 images per device
    (4, [7], 1),
  ],
)
def test_cpu_device_count(cores, batches, want):
  got = parallel.cpu_device_count(cores, batches)
  assert got == want
  assert all(b % got == 0 for b in batches)


def run_main_start(*overrides, env=None):
  """Runs mer_jax.main until it has chosen its devices (an unknown dataset root stops it right after)."""
  code = (
    "import sys, jax\n"
    "from mer_jax import main\n"
    "from mer_jax.configuration import run_app\n"
    "orig = main.run\n"
    "def fake_run(config, workdir, **kw):\n"
    "  print('DEVICES', len(jax.devices()), jax.default_backend(), flush=True)\n"
    "  print('FAST_CONV', config.cpu_fast_conv, flush=True)\n"
    "  return {'wall_time_s': 0.0, 'workdir': workdir}\n"
    "main.run = fake_run\n"
    "run_app(lambda argv: main._entry(argv))\n"
  )
  e = dict(os.environ, JAX_PLATFORMS="cpu")
  e.pop("XLA_FLAGS", None)
  e.update(env or {})
  return subprocess.run(
    [sys.executable, "-c", code, "--config=configs/synth_demo.py", "--workdir=/tmp/unused_wd", *overrides],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env=e,
  )


def test_main_uses_every_core_by_default_and_can_be_told_not_to():
  cores = parallel.host_cores()
  want = parallel.cpu_device_count(cores, [16, 16])  # synth_demo: pretraining 16, fine-tuning 16
  proc = run_main_start()
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"DEVICES {want} cpu" in proc.stdout
  if want > 1:
    assert f"[main] CPU: {want} XLA device(s), data parallel (automatic: {cores} cores" in proc.stdout
    assert "the train step one shard_map program" in proc.stdout
  proc = run_main_start("--config.cpu_devices=1")
  assert "DEVICES 1 cpu" in proc.stdout
  assert "[main] CPU: 1 XLA device(s), no data parallelism (config.cpu_devices=1)" in proc.stdout
  proc = run_main_start("--config.cpu_devices=3")
  assert "DEVICES 3 cpu" in proc.stdout and "(config.cpu_devices=3)" in proc.stdout
  proc = run_main_start(env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
  assert "DEVICES 3 cpu" in proc.stdout  # the environment wins


def test_main_compiles_without_ynnpack_fusions_while_devices_leave_cores_idle():
  cores = parallel.host_cores()
  # one device, the CPU's default conv_impl='cpu': plain steps keep YNNPACK's kernels (faster with that form),
  # fold-vmapped steps (grouped convolutions) go without them while cores idle
  proc = run_main_start("--config.cpu_devices=1", "--config.finetune.parallel_folds=4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "FAST_CONV auto" in proc.stdout
  if cores > 1:
    assert (
      "[main] CPU: training steps compiled with XLA's default options (YNNPACK fusions), fold-vmapped steps "
      f"without YNNPACK fusions (config.cpu_fast_conv='auto': 1 device(s) < {cores} cores, conv_impl='cpu';"
      in proc.stdout
    ), proc.stdout
    # XLA's own convolutions (conv_impl='xla') run faster without YNNPACK while cores idle
    proc = run_main_start("--config.cpu_devices=1", "--config.model.conv_impl=xla")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
      "[main] CPU: training steps compiled without YNNPACK fusions (config.cpu_fast_conv='auto': "
      f"1 device(s) < {cores} cores, conv_impl='xla';" in proc.stdout
    ), proc.stdout
  want = parallel.cpu_device_count(cores, [16, 16])
  if want == cores:  # every core a device: YNNPACK's kernels are faster
    proc = run_main_start()
    assert (
      "[main] CPU: training steps compiled with XLA's default options (YNNPACK fusions) "
      f"(config.cpu_fast_conv='auto': {want} device(s) >= {cores} cores, conv_impl='cpu';" in proc.stdout
    )
  proc = run_main_start("--config.cpu_devices=1", "--config.cpu_fast_conv=off")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "FAST_CONV off" in proc.stdout
  assert "with XLA's default options (YNNPACK fusions) (config.cpu_fast_conv='off'" in proc.stdout
  proc = run_main_start("--config.cpu_fast_conv=always")
  assert proc.returncode == 2
  assert "error: config.cpu_fast_conv='always': use one of 'auto', 'on', 'off'" in proc.stderr


@pytest.mark.skipif(host_memory.glibc_mallopt() is None, reason="glibc's mallopt only")
def test_main_keeps_freed_host_memory_for_reuse_when_told_to():
  proc = run_main_start(env={"LD_PRELOAD": "", "GLIBC_TUNABLES": ""})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[main] host memory: system allocator as it is (config.host_malloc='system'" in proc.stdout, proc.stdout
  env = {"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}  # the Makefile's: combines with 'reuse'
  proc = run_main_start("--config.host_malloc=reuse", env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (
    "[main] host memory: freed memory kept for reuse (glibc: 1 arena, no mmap, trim above 2 GiB; "
    "config.host_malloc='reuse')" in proc.stdout
  ), proc.stdout
  proc = run_main_start("--config.host_malloc=jemalloc")
  assert proc.returncode == 2
  assert "error: config.host_malloc='jemalloc': use one of 'system', 'reuse'" in proc.stderr


def test_negative_cpu_devices_is_a_config_error():
  c = config_defaults.get_base_config()
  c.cpu_devices = -1
  with pytest.raises(ConfigError, match="config.cpu_devices=-1"):
    parallel.use_host_cores(c)
