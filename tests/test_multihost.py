"""Multi-process training with jax.distributed (issue 7).

Two processes on localhost (CPU, one device each, gloo collectives) run the real
benchmark pipeline (``mer_jax.main.run``: LOSO fine-tuning, checkpoints,
reports) on a small fabricated ArrayDataset, data parallel over the 2 devices of
both processes; the predictions must equal a single-process run on 2 local
devices (same global device count, so the same reductions: bit-identical).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mer_jax.errors import ConfigError
from mer_jax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
from mer_jax.train import distributed
spec = distributed.resolve()                 # flags absent: JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID
multi = distributed.initialize(spec)
import jax, numpy as np
import train_data
from mer_jax import main as main_mod

mesh = distributed.global_mesh()
checks = {"multi": multi, "process_index": jax.process_index(), "process_count": jax.process_count(),
          "global_devices": len(jax.devices()), "local_devices": len(jax.local_devices())}
# Each process feeds only its rows of the global batch; the jitted reduction sees the whole batch.
batch = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
rows = distributed.local_rows(8, mesh)
checks["rows"] = [rows.start, rows.stop]
from mer_jax.train import parallel
x = distributed.put_global(batch, parallel.batch_sharding(mesh))
total = jax.jit(lambda a: (a * a).sum(), out_shardings=parallel.replicated(mesh))(x)
checks["sum_ok"] = bool(np.asarray(total) == (batch * batch).sum())

config = train_data.tiny_config(epochs=2, batch_size=4)
config.pretrain.enabled = False         # (kept short: 2 cores; pretraining runs the same fit() code path)
# the same compilation in both layouts, whatever the model: under 'auto' one device per process on a 2-core host may
# compile without YNNPACK fusions and the single process's 2 devices with them (parallel.fast_conv_applies)
config.cpu_fast_conv = "off"
micro = train_data.fabricate(subject_sizes=(5, 6, 4))
# main.run lays its mesh over every process's devices by itself (distributed.global_mesh)
out = main_mod.run(config, sys.argv[1], progress=False, load_arrays=lambda c, w, k: micro)
from mer_jax.models import build_model
from mer_jax.train.state import model_apply
checks["shard_map"] = parallel.shard_map_step_applies(mesh, model_apply(build_model(config.model)))
checks["records"] = [[r["subject"], r["y_pred"], r["probs"], r["best_epoch"]] for r in out["records"]]
checks["wrote_reports"] = "reports" in out
print("RESULT" + json.dumps(checks), flush=True)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def result_of(stdout: str) -> dict:
  return json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT")][0][len("RESULT") :])


def base_env() -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
  return dict(env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  port = free_port()
  procs = []
  for pid in range(2):
    env = dict(base_env(), JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "multi"), REPO],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=400)
      assert p.returncode == 0, err[-4000:]
      outs.append(result_of(out))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  env = dict(base_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
  single = subprocess.run(
    [sys.executable, "-c", DRIVER, str(tmp_path / "single"), REPO],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert single.returncode == 0, single.stderr[-4000:]
  ref = result_of(single.stdout)

  assert ref["multi"] is False and ref["global_devices"] == 2 and ref["rows"] == [0, 8]
  for pid, got in enumerate(outs):
    assert got["multi"] is True and got["process_index"] == pid and got["process_count"] == 2
    assert got["global_devices"] == 2 and got["local_devices"] == 1
    assert got["rows"] == [4 * pid, 4 * pid + 4]  # its half of the global batch
    assert got["sum_ok"]
    assert got["shard_map"] and ref["shard_map"]  # the train step as one shard_map program in both layouts
    assert len(got["records"]) == 3
    # same subjects, predictions, probabilities and selected epochs as the single-process run
    assert got["records"] == ref["records"]
    assert got["wrote_reports"] == (pid == 0)  # one process writes the reports
  # one set of reports, readable, with the same predictions
  with open(tmp_path / "multi" / "results.json") as f:
    res = json.load(f)
  assert [fo["y_pred"] for fo in res["folds"]] == [r[1] for r in ref["records"]]


def test_resolve_settings_from_flags_and_environment():
  assert not distributed.resolve(environ={}).multi_process
  spec = distributed.resolve(
    environ={"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  )
  assert spec == distributed.Spec("h0:1234", 4, 3) and spec.multi_process
  # flags win over the environment
  spec = distributed.resolve(
    "h1:99", 2, 0, environ={"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  )
  assert spec == distributed.Spec("h1:99", 2, 0)
  # under srun with several tasks JAX detects the rest itself
  assert distributed.resolve(environ={"SLURM_NTASKS": "8", "SLURM_PROCID": "2"}).auto
  assert not distributed.resolve(environ={"SLURM_NTASKS": "1"}).multi_process
  assert not distributed.resolve(num_processes=1, environ={}).multi_process


@pytest.mark.parametrize(
  "kwargs, env, needle",
  [
    (dict(num_processes=2), {}, "--coordinator_address"),
    (dict(coordinator_address="h0:1", num_processes=2, process_id=2), {}, "must be in 0..1"),
    (dict(coordinator_address="h0", num_processes=2, process_id=0), {}, "host:port"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    (dict(num_processes=0), {}, ">= 1"),
  ],
)
def test_resolve_rejects_incomplete_or_inconsistent_settings(kwargs, env, needle):
  with pytest.raises(ConfigError, match=needle):
    distributed.resolve(environ=env, **kwargs)


def test_local_rows_single_process():
  mesh = distributed.global_mesh()
  assert distributed.local_rows(4 * mesh.devices.size, mesh) == slice(0, 4 * mesh.devices.size)
  x = np.ones((2 * mesh.devices.size, 3), np.float32)
  from mer_jax.train import parallel

  np.testing.assert_array_equal(np.asarray(distributed.put_global(x, parallel.batch_sharding(mesh))), x)


def test_fold_shards_on_a_shared_workdir_then_assemble_equal_one_run(tmp_path, monkeypatch):
  """LOSO folds spread over jobs (``--fold_shard=k/n``, e.g. one per host) on one workdir, then one run
  without a shard collects every finished fold and writes the reports: the same predictions."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import train_data
  from mer_jax import main as main_mod
  from mer_jax.train import loop

  config = train_data.tiny_config(epochs=2, batch_size=4)
  config.pretrain.enabled = False
  micro = train_data.fabricate(subject_sizes=(5, 6, 4))
  load = lambda c, w, k: micro
  ref = main_mod.run(config, str(tmp_path / "ref"), load_arrays=load, progress=False)
  shared = tmp_path / "shared"
  done = []
  for k in (1, 0):
    out = main_mod.run(config, str(shared), load_arrays=load, progress=False, fold_shard=(k, 2))
    done.append([r["subject"] for r in out["records"]])
    assert "reports" not in out and not os.path.exists(shared / "results.json")
  subjects = sorted(set(micro.subjects))
  assert done == [subjects[1::2], subjects[0::2]]
  monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("a finished fold was trained again"))
  final = main_mod.run(config, str(shared), load_arrays=load, progress=False)
  assert [(r["subject"], r["y_pred"], r["probs"]) for r in final["records"]] == [
    (r["subject"], r["y_pred"], r["probs"]) for r in ref["records"]
  ]
  with open(final["reports"]["results_json"]) as f:
    assert [fo["y_pred"] for fo in json.load(f)["folds"]] == [r["y_pred"] for r in ref["records"]]


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "-1/3", "0/0"])
def test_fold_shard_flag_rejects_bad_values(text):
  from mer_jax import main as main_mod

  with pytest.raises(ConfigError, match="--fold_shard"):
    main_mod.parse_fold_shard(text)
  assert main_mod.parse_fold_shard("1/3") == (1, 3) and main_mod.parse_fold_shard(None) is None
