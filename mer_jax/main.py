"""Runs a whole benchmark of the paper: data -> pretraining -> LOSO fine-tuning -> reports.

    python -m mer_jax.main --config=configs/cde.py --workdir=runs/cde
    python -m mer_jax.main --config=configs/synth_demo.py --workdir=runs/synth_demo
    python -m mer_jax.main --config=configs/cde.py --workdir=runs/cde_channel --config.model.attention=channel

Every config field is overridable with ``--config.<a>.<b>=<value>`` (see
mer_jax/config_defaults.py). Steps:

1. macro data (``config.data.macro``) -> pretraining (``config.pretrain``; skipped
   when ``pretrain.enabled=False`` or ``pretrained_checkpoint`` names a run dir to reuse);
2. micro data (``config.data.micro``) -> LOSO fine-tuning (``config.finetune``), each
   fold initialised from the pretrained backbone + attention;
3. reports (results.json, results.md, confusion PNGs) in the workdir.

Re-running the same command on the same workdir resumes: finished pretraining and
folds are reused, the running fold continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from mer_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, reports; reused to resume).")
_QUIET = flags.DEFINE_bool("quiet", False, "Only print the final summary (no per-epoch progress).")
_FOLD_SHARD = flags.DEFINE_string(
  "fold_shard",
  None,
  "k/n: run only LOSO folds k, k+n, k+2n, ... (one job per host on a shared --workdir); "
  "then run once more without it to write the reports.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process training: host:port of process 0 (else $JAX_COORDINATOR_ADDRESS; "
  "see mer_jax/train/distributed.py and docs/reliability.md).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-process training: number of processes (else $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-process training: this process's id 0..num_processes-1 (else $JAX_PROCESS_ID)."
)


def _say(msg: str) -> None:
  print(msg, flush=True)


def _make_writer(workdir: str):
  """clu's default metric writer (as in the Flax examples) for ``<workdir>/tb``.

  Process 0 writes TensorBoard event files in ``<workdir>/tb``; every process (the only output of the others in
  a multi-process run: ``just_logging``) also logs each scalar set through absl logging at INFO level (clu's
  LoggingWriter), which the command line hides (it runs at absl verbosity WARNING; the per-epoch console line
  carries the same numbers).
  """
  from clu import metric_writers

  from mer_jax.train import distributed

  return metric_writers.create_default_writer(
    os.path.join(workdir, "tb"), just_logging=not distributed.is_primary(), asynchronous=False
  )


def _init_fn(model, image_size: int, channels: int):
  """rng -> {'params','batch_stats'}; compiled once per (model, input shape) for the whole process."""
  from mer_jax.train.state import jit_init

  return lambda rng: jit_init(model, rng, int(image_size), int(channels))


def check_workdir(workdir: str) -> None:
  """Creates ``workdir`` (if needed) and checks that files can be written there; ConfigError otherwise."""
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
      f"cannot write to the workdir {path} ({e.strerror or type(e).__name__}); "
      "pass a --workdir you can write to (it is created if missing)"
    ) from None


def check_dataset_roots(config: ml_collections.ConfigDict) -> None:
  """Fails before any work when a configured (non-synthetic) dataset folder is missing or empty
  (DataError with the dataset's manual-download instructions)."""
  from mer_jax.data import pipeline

  names = list(config.data.micro)
  if config.pretrain.enabled and not config.pretrained_checkpoint:
    names += list(config.data.macro)
  for name in dict.fromkeys(names):
    if str(config.data.roots.get(name, "") or "") or not config.data.synthetic:
      pipeline.resolve_root(config, "", name)


def parse_fold_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
  """``"k/n"`` -> (k, n): this job runs LOSO folds k, k+n, k+2n, ... (0 <= k < n)."""
  if not text:
    return None
  try:
    k, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise ConfigError(f"--fold_shard={text!r}: expected k/n, e.g. --fold_shard=0/4 (folds 0, 4, 8, ...)") from None
  if not (n >= 1 and 0 <= k < n):
    raise ConfigError(f"--fold_shard={text!r}: need n >= 1 and 0 <= k < n")
  return k, n


@contextlib.contextmanager
def _workdir_lock(workdir: str, enabled: bool):
  """An exclusive lock on ``<workdir>/.prepare.lock`` (fold shards sharing a workdir prepare the data and
  pretrain one after another: the first does the work, the others reuse it)."""
  if not enabled:
    yield
    return
  import fcntl

  with open(os.path.join(workdir, ".prepare.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  mesh=None,
  progress: bool = True,
  writer=None,
  on_epoch_end=None,
  load_arrays=None,
  fold_shard: Optional[tuple[int, int]] = None,
) -> dict:
  """The whole pipeline: data, pretraining, LOSO fine-tuning, reports.

  Multi-process (after ``mer_jax.train.distributed.initialize``): the default mesh spans every process's
  devices, process 0 prepares the data first and writes the reports. The command line validates ``config``
  first (:func:`mer_jax.configuration.validate`); callers of this function may do the same.

  Args:
    config: the full config (configs/*.py; fields in mer_jax/config_defaults.py).
    workdir: output folder (created; re-running on it resumes).
    mesh: device mesh (default: every device, or every process's devices in a multi-process run).
    progress: print per-epoch progress.
    writer: a clu MetricWriter (default: TensorBoard files in ``<workdir>/tb``, closed at the end).
    on_epoch_end: test hook ``on_epoch_end(run_name, epoch)``.
    load_arrays: ``(config, workdir, kind) -> ArrayDataset`` (default mer_jax.data.pipeline.load_arrays).
    fold_shard: ``(k, n)`` runs only LOSO folds k, k+n, ... (jobs on several hosts sharing one workdir) and
      writes no reports; a final run without it skips every finished fold and writes the reports.

  Returns:
    ``{'workdir', 'pretrain', 'records', 'reports', 'wall_time_s'}``: the absolute workdir, the pretraining
    summary (or the reused checkpoint), the LOSO fold records, the report paths (results.json, results.md,
    confusion PNGs) and the wall time; keys whose step did not run are absent.

  Raises:
    UserError: a missing dataset folder, an unwritable workdir, a class-count mismatch and other
      user-fixable problems (the command line prints them as one ``error:`` line).
  """
  from mer_jax.models import build_model
  from mer_jax.train import checkpoint as ckpt
  from mer_jax.train import distributed, host_memory, loso, parallel, pretrain, transfer
  from mer_jax.train.state import model_apply

  t0 = time.time()
  parallel.check_fast_conv(str(config.get("cpu_fast_conv", "auto")))  # passed down to every training jit
  host_memory.check_host_malloc(str(config.get("host_malloc", "system")))  # applied by main() before JAX starts
  if not config.data.micro and not config.pretrain.enabled:
    raise ConfigError("config.data.micro is empty and config.pretrain.enabled=False: nothing to do")
  if load_arrays is None:
    check_dataset_roots(config)  # a missing dataset folder fails before anything is written
    from mer_jax.data.pipeline import load_arrays as _load

    # SynthME generation and the TFDS cache build run in process 0 first; the others then read the cache.
    load_arrays = lambda c, w, kind: distributed.primary_first(f"data_{kind}", lambda: _load(c, w, kind))
  check_workdir(workdir)
  if distributed.is_primary():
    from mer_jax import reporting

    reporting.atomic_write_text(os.path.join(workdir, "config.json"), config.to_json(indent=1))
  mesh = mesh or (distributed.global_mesh() if jax.process_count() > 1 else parallel.make_mesh())
  own_writer = writer is None
  writer = writer or _make_writer(workdir)
  _say(
    f"[main] {config.name}: workdir {os.path.abspath(workdir)}; {mesh.devices.size} "
    f"{jax.default_backend()} device(s) (data parallel)"
  )
  out: dict = {"workdir": os.path.abspath(workdir)}
  seed_key = jax.random.key(int(config.seed))

  pretrained: Optional[dict] = None
  if config.pretrained_checkpoint:
    _, pretrained, pre_classes = ckpt.load_for_inference(config.pretrained_checkpoint)
    # host copy: the restored device arrays would otherwise be shared by every fold's initial state, and the
    # first fold's donated train state deletes them (seen with 2 XLA CPU devices)
    pretrained = ckpt.host_copy(pretrained)
    out["pretrain"] = {"reused": config.pretrained_checkpoint, "class_names": pre_classes}
    _say(f"[main] using pretrained weights from {config.pretrained_checkpoint}")
  elif config.pretrain.enabled:
    with _workdir_lock(workdir, fold_shard is not None):
      # Pretraining always uses the macro sets' own task (3 classes, Table 2), also for the 5-class SDE
      # benchmarks: fine-tuning then re-initialises the head for the micro class count.
      pcfg = ml_collections.ConfigDict(json.loads(config.to_json()))
      pcfg.data.task = config.pretrain.task
      macro = load_arrays(pcfg, workdir, "macro")
      pcfg.model.num_classes = len(macro.class_names)
      pmodel = build_model(pcfg.model)
      init = _init_fn(pmodel, macro.images.shape[1], macro.images.shape[-1])
      _say(
        f"[main] pretraining on {len(macro)} macro samples ({', '.join(config.data.macro)}), "
        f"classes {list(macro.class_names)}"
      )
      hook = (lambda e: on_epoch_end("pretrain", e)) if on_epoch_end else None
      pretrained, summary = pretrain.run_pretrain(
        pcfg,
        macro,
        workdir,
        apply_fn=model_apply(pmodel),
        init_variables=init(jax.random.fold_in(seed_key, 0)),
        mesh=mesh,
        writer=writer,
        progress=progress,
        on_epoch_end=hook,
      )
      out["pretrain"] = {
        "run_dir": os.path.join(out["workdir"], "pretrain"),
        "best_val_accuracy": summary["best_val_accuracy"],
        "best_epoch": summary["best_epoch"],
      }
      del macro
  else:
    _say("[main] pretraining disabled (config.pretrain.enabled=False): fine-tuning from random init")

  if config.data.micro:
    with _workdir_lock(workdir, fold_shard is not None):
      micro = load_arrays(config, workdir, "micro")
    if len(micro.class_names) != config.model.num_classes:
      raise ConfigError(
        f"config.model.num_classes={config.model.num_classes} but data.task={config.data.task!r} "
        f"gives {len(micro.class_names)} classes {list(micro.class_names)}"
      )
    model = build_model(config.model)
    init = _init_fn(model, micro.images.shape[1], micro.images.shape[-1])
    source = config.pretrained_checkpoint or os.path.join(workdir, "pretrain")

    def fold_init(index: int) -> dict:
      fresh = jax.device_get(init(jax.random.fold_in(seed_key, 1000 + index)))
      if pretrained is None:
        return fresh
      return transfer.merge_pretrained(fresh, pretrained, source)[0]

    if pretrained is not None:
      _, rep = transfer.merge_pretrained(jax.device_get(init(seed_key)), pretrained, source)
      _say(f"[main] transfer: loaded {rep['loaded']}, re-initialised {rep['reinitialised'] or 'nothing'}")
    n_subj = len(loso.subjects_of(micro))
    sel = (
      "the held-out subject (test-fold early stopping, labelled in reports)"
      if config.finetune.test_fold_early_stopping
      else "a validation split of the training subjects"
    )
    _say(
      f"[main] LOSO over {n_subj} subjects, {len(micro)} clips ({', '.join(config.data.micro)}); "
      f"model selection on {sel}"
    )
    subjects = None
    if fold_shard is not None:
      k, n = fold_shard
      subjects = loso.subjects_of(micro)[k::n]
      _say(f"[main] fold shard {k}/{n}: {len(subjects)} of {n_subj} folds ({', '.join(subjects) or 'none'})")
    records = loso.run_loso(
      config,
      micro,
      workdir,
      apply_fn=model_apply(model),
      init_fn=fold_init,
      mesh=mesh,
      writer=writer,
      progress=progress,
      on_epoch_end=on_epoch_end,
      subjects=subjects,
    )
    out["records"] = records
    from mer_jax import reporting

    if fold_shard is not None:
      _say(
        f"[main] fold shard {fold_shard[0]}/{fold_shard[1]} done; when every shard has finished, run the same "
        "command without --fold_shard to collect all folds and write the reports"
      )
    elif distributed.is_primary():  # every process holds the same records; one writes the reports
      out["reports"] = reporting.write_reports(workdir, config, records, list(micro.class_names))
    distributed.barrier("reports")
  if own_writer:
    writer.close()
  out["wall_time_s"] = time.time() - t0
  return out


def _summary(out: dict) -> str:
  lines = [f"[main] done in {out['wall_time_s']:.0f} s. Outputs in {out['workdir']}:"]
  rep = out.get("reports") or {}
  if rep:
    lines.append(f"  results:      {rep.get('results_json')}")
    lines.append(f"                {rep.get('results_md')}")
    pngs = [v for k, v in rep.items() if k.startswith("confusion")]
    if pngs:
      lines.append(f"  plots:        {', '.join(pngs)}")
    try:
      with open(rep["results_json"]) as f:
        res = json.load(f)
      mixed = res["aggregate"].get("Mixed", {})
      lines.append(
        f"  LOSO (pooled): acc {mixed.get('accuracy', float('nan')):.4f}  "
        f"UF1 {mixed.get('uf1', float('nan')):.4f}  UAR {mixed.get('uar', float('nan')):.4f}"
      )
    except (OSError, KeyError, ValueError, TypeError):
      pass
  pre = out.get("pretrain") or {}
  if "run_dir" in pre:
    lines.append(f"  checkpoints:  {pre['run_dir']} (pretraining; best val acc {pre['best_val_accuracy']:.4f})")
  if out.get("records") is not None:
    lines.append(
      f"                {os.path.join(out['workdir'], 'finetune', 'folds')}/<fold_id>/ "
      f"({len(out['records'])} LOSO folds; per-fold JSON alongside)"
    )
  lines.append(f"  TensorBoard:  tensorboard --logdir {os.path.join(out['workdir'], 'tb')}")
  lines.append(f"  inspect:      python -m mer_jax.inspect_checkpoint {os.path.join(out['workdir'], 'pretrain')}")
  return "\n".join(lines)


def main(argv) -> int:
  del argv
  from mer_jax.configuration import require_config, validate

  config = validate(require_config(_CONFIG.value))
  if not _WORKDIR.value:
    raise ConfigError("--workdir is required, e.g. --workdir=runs/synth_demo")
  fold_shard = parse_fold_shard(_FOLD_SHARD.value)
  from mer_jax.train import distributed

  spec = distributed.resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from mer_jax.train import host_memory

  malloc_choice = host_memory.configure(str(config.get("host_malloc", "system")))  # before JAX starts its threads
  cpu_choice = (0, "")
  if not spec.multi_process:  # before JAX starts its backends; multi-process runs keep their devices as they are
    from mer_jax.train import parallel

    cpu_choice = parallel.use_host_cores(config)
  if distributed.initialize(spec):
    _say(
      f"[main] process {jax.process_index()} of {jax.process_count()}: {len(jax.local_devices())} local, "
      f"{len(jax.devices())} global device(s)"
    )
  if cpu_choice[0] and jax.default_backend() == "cpu":
    how = "data parallel" if cpu_choice[0] > 1 else "no data parallelism"
    how = f"{how} ({cpu_choice[1]})"
    if cpu_choice[0] > 1:
      from mer_jax.train import loop

      how += (
        "; BatchNorm statistics over the whole batch, the train step one shard_map program, "
        f"{loop.STEPS_PER_CALL} steps per call (fold-vmapped steps: partitioned by XLA)"
      )
    _say(f"[main] CPU: {cpu_choice[0]} XLA device(s), {how}")
  from mer_jax.train import parallel

  fast_conv = parallel.describe_fast_conv(config)
  if jax.default_backend() == "cpu":
    _say(f"[main] CPU: {fast_conv}")
  if jax.default_backend() == "cpu" or malloc_choice[0]:
    _say(f"[main] host memory: {malloc_choice[1]}")
  out = run(config, _WORKDIR.value, progress=not _QUIET.value, fold_shard=fold_shard)
  _say(_summary(out))
  return 0


def _entry(argv) -> int:
  from mer_jax.errors import run_cli

  run_cli(lambda: main(argv))
  return 0


if __name__ == "__main__":
  from mer_jax.configuration import run_app

  run_app(lambda argv: _entry(argv))
