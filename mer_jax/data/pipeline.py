"""From config to training arrays: resolve each dataset's folder, build/load its TFDS cache, map labels.

:func:`load_arrays` is what training calls::

    data = load_arrays(config, workdir, kind="micro")   # config.data.micro
    data.images  # [N, S, S, C] float32 in [0, 1]

For every dataset in ``config.data.<kind>``:

1. the folder is ``config.data.roots.<name>``; when that is empty and
   ``config.data.synthetic`` is True, SynthME writes the dataset's official layout
   to ``<workdir>/synthme/<name>`` (once; :func:`mer_jax.data.synth.generate`);
   otherwise an empty/missing folder is a DataError carrying the dataset's
   manual-download instructions;
2. the reader runs (``data.skip_bad_samples`` decides whether bad rows fail or are counted);
3. the TFDS cache (``config.data.cache_dir`` or ``<workdir>/tfds``) for the
   preprocessing variant of ``config`` is built once (progress bar) and reused;
   a cache whose stored source fingerprint or settings do not match is rebuilt;
4. a one-line summary per dataset is printed: rows read, excluded by the
   mapping, skipped (and why), written, face-detector fallbacks, apex rules, EVM warnings.

Labels are class indices of ``mappings.class_names(config.data.task, name,
config.data.protocol)``; every dataset of one call must share the class names.
Subjects are ``"<dataset>/<subject>"`` (for RAF-DB / FER-2013, which have no subject
ids, ``"<dataset>/<clip_id>"``: each image its own group).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable

import numpy as np

from mer_jax.data import mappings, official, readers
from mer_jax.data.types import DISPLAY_NAMES, MACRO_DATASETS, MICRO_DATASETS, ArrayDataset
from mer_jax.errors import ConfigError, DataError

KINDS = ("micro", "macro")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def cache_dir(config, workdir: str) -> str:
  return config.data.cache_dir or os.path.join(workdir, "tfds")


def synth_root(workdir: str, name: str) -> str:
  return os.path.join(workdir, "synthme", name)


def _synth_kwargs(config, name: str) -> dict:
  d = config.data
  kw = {"seed": int(config.seed)}
  if int(d.get("synth_subjects_per_dataset", 0) or 0) > 0:
    kw["subjects"] = int(d.synth_subjects_per_dataset)
  if name in MICRO_DATASETS and int(d.get("synth_clips_per_subject", 0) or 0) > 0:
    kw["clips_per_subject"] = int(d.synth_clips_per_subject)
  if name in MACRO_DATASETS and int(d.get("synth_macro_images", 0) or 0) > 0:
    kw["images"] = int(d.synth_macro_images)
  return kw


def ensure_synthetic(config, workdir: str, name: str, log: Callable[[str], None] = _log) -> str:
  """Generates SynthME's ``name`` layout under ``<workdir>/synthme/<name>`` unless already there."""
  from mer_jax.data import synth  # imported lazily: only needed for the synthetic default

  out = synth_root(workdir, name)
  done = os.path.join(out, ".synthme_complete")
  kw = _synth_kwargs(config, name)
  stamp = repr(sorted(kw.items()))
  if os.path.exists(done):
    with open(done) as fh:
      if fh.read() == stamp:
        return out
    log(f"[data] SynthME settings changed for {name}; regenerating {out}")
  if os.path.exists(out):
    shutil.rmtree(out)
  log(f"[data] generating SynthME {DISPLAY_NAMES[name]} layout in {out} ({kw})")
  root = synth.generate(name, out, **kw)
  root = str(root) if root else out
  if os.path.abspath(root) != os.path.abspath(out):
    raise DataError(f"SynthME wrote {name} to {root}, expected {out}")
  with open(done, "w") as fh:
    fh.write(stamp)
  return out


def resolve_root(config, workdir: str, name: str, log: Callable[[str], None] = _log) -> str:
  """The folder to read ``name`` from (see module doc, step 1)."""
  if name not in readers.MANUAL_DOWNLOAD_INSTRUCTIONS:
    raise ConfigError(
      f"unknown dataset {name!r} in config data.micro/data.macro; expected one of "
      f"{', '.join(MICRO_DATASETS + MACRO_DATASETS)}"
    )
  root = str(config.data.roots.get(name, "") or "")
  if not root:
    if bool(config.data.synthetic):
      if official.applies(name, str(config.data.task), str(config.data.protocol)):
        raise ConfigError(
          f"data.protocol='megc2019' keeps only the clips of the official MEGC 2019 list, and "
          f"SynthME's {DISPLAY_NAMES[name]} clips are not on it; use data.protocol=paper with "
          f"SynthME, or set data.roots.{name} to your copy of the dataset"
        )
      return ensure_synthetic(config, workdir, name, log)
    raise DataError(
      f"config data.roots.{name} is empty and data.synthetic is False. "
      f"{readers.MANUAL_DOWNLOAD_INSTRUCTIONS[name]} (or set data.synthetic=True for SynthME, "
      "the synthetic stand-in)"
    )
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root) or not os.listdir(root):
    raise DataError(
      f"data.roots.{name} = {root} does not exist or is empty. {readers.MANUAL_DOWNLOAD_INSTRUCTIONS[name]}"
    )
  return root


def load_dataset(config, workdir: str, name: str, log: Callable[[str], None] = _log) -> dict:
  """Builds (or reuses) ``name``'s cache for ``config`` and returns its arrays (see tfds_builders.read_cache)
  plus ``class_names`` and ``metadata``."""
  from mer_jax.data import tfds_builders as tb  # TFDS import is slow; only here

  root = resolve_root(config, workdir, name, log)
  data_dir = cache_dir(config, workdir)
  skip = bool(config.data.get("skip_bad_samples", False))
  result = readers.read_dataset(name, root, skip_bad=skip)
  fp = tb.source_fingerprint(root, result.samples)
  builder = tb.get_builder(name, config, data_dir, read_result=result)
  force = False
  if builder.data_path.exists() and (builder.data_path / "dataset_info.json").exists():
    meta = dict(builder.info.metadata or {})
    if meta.get("source_fingerprint") != fp or meta.get("settings") != builder.builder_config.settings:
      log(
        f"[data] the cache {builder.data_path} was built from other data or settings "
        f"({meta.get('manual_dir', '?')}); rebuilding it from {root}"
      )
      force = True
  else:
    log(
      f"[data] building the {DISPLAY_NAMES[name]} cache '{builder.builder_config.name}' in {builder.data_path} "
      f"from {root} ({len(result.samples)} samples; built once, then reused)"
    )
  tb.prepare(builder, root, force=force)
  if force:
    builder = tb.get_builder(name, config, data_dir, read_result=result)
  arrays = tb.read_cache(builder)
  meta = dict(builder.info.metadata or {})
  log(tb.build_summary(name, meta, len(arrays["label"])))
  arrays["class_names"] = tuple(builder.info.features["label"].names)
  arrays["metadata"] = meta
  return arrays


def load_arrays(config, workdir: str, kind: str = "micro", *, log: Callable[[str], None] = _log) -> ArrayDataset:
  """The preprocessed samples of every dataset in ``config.data.<kind>`` as one :class:`ArrayDataset`.

  kind: "micro" (config.data.micro, fine-tuning / LOSO) or "macro" (config.data.macro, pretraining).
  Returns images [N, S, S, C] float32 in [0, 1], labels [N] int32, subjects "<dataset>/<subject>",
  sources, clip_ids, class_names.
  """
  if kind not in KINDS:
    raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
  names = tuple(config.data.micro if kind == "micro" else config.data.macro)
  if not names:
    raise ConfigError(f"config data.{kind} lists no datasets")
  class_names = None
  parts = []
  for name in names:
    want = mappings.class_names(str(config.data.task), name, str(config.data.protocol))
    if class_names is not None and want != class_names:
      raise ConfigError(
        f"data.{kind} mixes datasets with different classes under task {config.data.task!r}: "
        f"{names[0]} has {class_names}, {name} has {want}; use one dataset or data.task='3class'"
      )
    class_names = want
    parts.append((name, load_dataset(config, workdir, name, log)))
  images = np.concatenate([a["image"] for _, a in parts]).astype(np.float32) / np.float32(255.0)
  labels = np.concatenate([a["label"] for _, a in parts]).astype(np.int32)
  subjects = np.concatenate(
    [np.asarray([f"{n}/{s or c}" for s, c in zip(a["subject"], a["clip_id"])], dtype=str) for n, a in parts]
  )
  sources = np.concatenate([a["source"] for _, a in parts]).astype(str)
  clip_ids = np.concatenate([a["clip_id"] for _, a in parts]).astype(str)
  if len(labels) == 0:
    raise DataError(
      f"no samples left in {', '.join(names)} after mapping to {config.data.task} "
      f"({config.data.protocol}) and skipping; see the summary above"
    )
  return ArrayDataset(
    images=images, labels=labels, subjects=subjects, sources=sources, clip_ids=clip_ids, class_names=tuple(class_names)
  )
