"""TensorFlow Datasets builders: one per dataset, built once from the user's folder and cached.

Each builder (registered as ``mer_casme2``, ``mer_samm``, ``mer_smic``, ``mer_ck``,
``mer_rafdb``, ``mer_fer2013``) reads the user's licensed copy with
:func:`mer_jax.data.readers.read_dataset` from TFDS' ``manual_dir`` (nothing is
downloaded), maps labels with :mod:`mer_jax.data.mappings`, preprocesses every
kept sample with :func:`mer_jax.data.preprocess.preprocess_sample`, and writes
one ``train`` split (all samples; LOSO and validation splits are made by the
training code) in ``array_record`` format, which gives random access.

Features: ``image`` (uint8 PNG [S, S, C]: the float preprocessing output
quantised as ``round(255 x)``), ``label`` (ClassLabel over the task's classes),
``raw_label`` (the dataset's own label), ``subject``, ``source`` (dataset name),
``clip_id``, ``apex`` (apex frame index in the clip, -1 for images) and
``face_found`` (0 no face -> centre-square fallback, 1 found, -1 no detection ran).

Builder configs are preprocessing variants. The predefined ones (3-class,
protocol "paper", every other setting at ``config_defaults``' value):
micro sets ``evm_112`` / ``noevm_112``, macro sets ``img_112``. A config built from
an ml-collections config (:func:`builder_config_from_config`) is named
``<evm|noevm|img>_<size>[_<task>_<protocol>][_<hash>]`` where the hash covers
every setting that changes the images (all ``evm.*`` fields when EVM is on, face
crop/margin/policy, apex rule, channels, skip policy): different settings never
share a cache directory. The settings and a fingerprint of the source samples
are stored in the dataset's metadata; :mod:`mer_jax.data.pipeline` rebuilds a
cache whose fingerprint no longer matches the folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import warnings
from typing import Any, ClassVar, Optional

import ml_collections
import numpy as np
import tensorflow_datasets as tfds  # TensorFlow's start-up notices are silenced in mer_jax/__init__.py

from mer_jax import config_defaults
from mer_jax.data import face as face_lib
from mer_jax.data import mappings, official, preprocess, readers
from mer_jax.data.types import DISPLAY_NAMES, MACRO_DATASETS, MICRO_DATASETS, Sample
from mer_jax.errors import DataError, EVMError

VERSION = "1.1.0"
RELEASE_NOTES = {
  "1.0.0": "First release: face crop, apex, EVM, resize (mer_jax 0.1).",
  "1.1.0": "EVM in the paper's order by default (evm.order): magnify at native resolution, then apex, crop, resize.",
}
FILE_FORMAT = "array_record"
SPLIT = "train"


def canonical_settings(dataset: str, config) -> dict[str, Any]:
  """The settings that change ``dataset``'s images, with irrelevant ones dropped (JSON-able).

  EVM and apex settings only matter for micro sets, and EVM fields only when enabled.
  """
  s = preprocess.settings_from_config(config)
  if dataset in MACRO_DATASETS:
    s.pop("evm")
    s.pop("apex")
  elif not s["evm"].get("enabled", True):
    s["evm"] = {"enabled": False}
  if not s["face_crop"]:
    s.pop("face_margin")
    s.pop("on_no_face")
  skip = bool(config.data.get("skip_bad_samples", False))
  if skip:
    s["skip_bad_samples"] = True
  return s


def settings_hash(settings: dict[str, Any]) -> str:
  return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _default_config(image_size: int = 112, evm: bool = True) -> ml_collections.ConfigDict:
  c = config_defaults.get_base_config()
  c.image_size = image_size
  c.evm.enabled = evm
  return c


def config_name(dataset: str, config) -> str:
  """The builder-config name for ``config`` (see module doc)."""
  s = canonical_settings(dataset, config)
  task, protocol = str(config.data.task), str(config.data.protocol)
  size = s["image_size"]
  if dataset in MACRO_DATASETS:
    base, default = f"img_{size}", canonical_settings(dataset, _default_config(size))
  else:
    evm_on = bool(config.evm.enabled)
    base = f"{'evm' if evm_on else 'noevm'}_{size}"
    default = canonical_settings(dataset, _default_config(size, evm_on))
  name = base
  if (task, protocol) != ("3class", "paper"):
    name += f"_{task}_{protocol}"
  if s != default:
    name += "_" + settings_hash(s)
  return name


class MerBuilderConfig(tfds.core.BuilderConfig):
  """A preprocessing variant: the full ml-collections config it came from plus its canonical settings."""

  def __init__(self, *, dataset: str, config, description: str = ""):
    self.dataset = dataset
    self.mer_config = copy.deepcopy(config)
    self.settings = canonical_settings(dataset, config)
    self.task = str(config.data.task)
    self.protocol = str(config.data.protocol)
    self.skip_bad = bool(config.data.get("skip_bad_samples", False))
    mappings.class_names(self.task, dataset, self.protocol)  # ConfigError for e.g. 5class on SMIC
    super().__init__(
      name=config_name(dataset, config),
      version=VERSION,
      release_notes=RELEASE_NOTES,
      description=description or json.dumps(self.settings, sort_keys=True),
    )


def builder_config_from_config(dataset: str, config) -> MerBuilderConfig:
  """The builder config for ``dataset`` under an ml-collections config (image_size, evm.*, data.*)."""
  return MerBuilderConfig(dataset=dataset, config=config)


def _predefined(dataset: str) -> list[MerBuilderConfig]:
  if dataset in MACRO_DATASETS:
    return [
      MerBuilderConfig(
        dataset=dataset, config=_default_config(112), description="face crop + 112x112, 3 classes (Table 2)"
      )
    ]
  return [
    MerBuilderConfig(
      dataset=dataset,
      config=_default_config(112, True),
      description="EVM (alpha 15, 0.1-0.4 Hz) apex face, 112x112, 3 classes (Table 2)",
    ),
    MerBuilderConfig(
      dataset=dataset,
      config=_default_config(112, False),
      description="apex face without EVM, 112x112, 3 classes (Table 2)",
    ),
  ]


def source_fingerprint(root: str, samples: list[Sample]) -> str:
  """A hash of what the reader found (root, ids, labels, frame lists, pixels): a cache built from
  other data never passes for this one."""
  h = hashlib.sha1(os.path.abspath(root).encode())
  for s in samples:
    h.update(
      json.dumps(
        [s.dataset, s.subject, s.clip_id, s.label, list(s.frame_paths), s.onset, s.apex, s.offset, s.fps, s.split]
      ).encode()
    )
    if s.pixels is not None:
      h.update(np.ascontiguousarray(s.pixels).tobytes())
  return h.hexdigest()


def quantize(image: np.ndarray) -> np.ndarray:
  """float [S, S, C] in [0, 1] -> uint8, as stored in the cache (round to nearest)."""
  return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


class _MerBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared implementation; subclasses set DATASET, name and BUILDER_CONFIGS."""

  DATASET: ClassVar[str] = ""
  VERSION = tfds.core.Version(VERSION)
  # Nothing is downloaded, so there is no checksums file to find next to the code. TFDS' own lookup of
  # the code path needs the `importlib_resources` backport for an editable install; skip it.
  code_path = None
  RELEASE_NOTES = RELEASE_NOTES

  def __init__(self, *, read_result: Optional[readers.ReadResult] = None, **kwargs):
    kwargs.setdefault("file_format", FILE_FORMAT)
    self._read_result = read_result  # optional: a ReadResult already made from the manual_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: MerBuilderConfig = self.builder_config
    size, ch = cfg.settings["image_size"], cfg.settings["channels"]
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        f"{DISPLAY_NAMES[self.DATASET]} preprocessed by mer_jax (face crop"
        + (", apex, EVM" if self.DATASET in MICRO_DATASETS and cfg.settings["evm"].get("enabled") else "")
        + f", {size}x{size}) from the user's licensed copy."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(size, size, ch), dtype=np.uint8, encoding_format="png"),
          "label": tfds.features.ClassLabel(names=list(mappings.class_names(cfg.task, self.DATASET, cfg.protocol))),
          "raw_label": tfds.features.Text(),
          "subject": tfds.features.Text(),
          "source": tfds.features.Text(),
          "clip_id": tfds.features.Text(),
          "apex": np.int32,
          "face_found": np.int32,
        }
      ),
      metadata=tfds.core.MetadataDict(),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    cfg: MerBuilderConfig = self.builder_config
    result = self._read_result or readers.read_dataset(self.DATASET, root, skip_bad=cfg.skip_bad)
    self.info.metadata.update(
      {
        "manual_dir": os.path.abspath(root),
        "settings": cfg.settings,
        "task": cfg.task,
        "protocol": cfg.protocol,
        "source_fingerprint": source_fingerprint(root, result.samples),
        "read": result.read,
        "read_skipped": [list(x) for x in result.skipped],
      }
    )
    return {SPLIT: self._generate_examples(result.samples)}

  def _manual_root(self, dl_manager) -> str:
    d = getattr(dl_manager, "_manual_dir", None)
    instructions = readers.MANUAL_DOWNLOAD_INSTRUCTIONS[self.DATASET]
    if not d or not os.path.isdir(str(d)) or not os.listdir(str(d)):
      raise DataError(
        f"{DISPLAY_NAMES[self.DATASET]}: the folder {d or '(none given)'} does not exist or is "
        f"empty (TFDS manual_dir / config data.roots.{self.DATASET}). {instructions}"
      )
    return str(d)

  def _generate_examples(self, samples):
    cfg: MerBuilderConfig = self.builder_config
    stats = {
      "excluded": 0,
      "written": 0,
      "skipped": [],
      "no_face": [],
      "apex_rules": {},
      "evm_warnings": 0,
      "first_evm_warning": "",
    }
    meta = self.info.metadata
    meta["build_stats"] = stats
    for s in samples:
      label, why = official.sample_class(s, cfg.task, cfg.protocol)
      name = preprocess.sample_name(s)
      if label is None:
        if why == official.NOT_LISTED:
          stats["not_listed"] = stats.get("not_listed", 0) + 1
        else:
          stats["excluded"] += 1
        continue
      if why:
        stats.setdefault("relabelled", []).append(f"{name}: {why}")
      notes = preprocess.Notes()
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("always", face_lib.FaceWarning)
          warnings.simplefilter("always", preprocess.PreprocessWarning)
          image = preprocess.preprocess_sample(s, cfg.mer_config, notes=notes)
      except (DataError, EVMError) as e:
        if not cfg.skip_bad:
          raise
        stats["skipped"].append([name, str(e)])
        continue
      if notes.face_found is False:
        stats["no_face"].append(name)
      if notes.apex_rule:
        rule = notes.apex_rule.split(" (")[0] + (" (no usable annotation)" if " (" in notes.apex_rule else "")
        stats["apex_rules"][rule] = stats["apex_rules"].get(rule, 0) + 1
      if notes.warnings:
        stats["evm_warnings"] += 1
        stats["first_evm_warning"] = stats["first_evm_warning"] or notes.warnings[0]
      stats["written"] += 1
      yield (
        name,
        {
          "image": quantize(image),
          "label": int(label),
          "raw_label": s.label,
          "subject": s.subject,
          "source": s.dataset,
          "clip_id": s.clip_id,
          "apex": -1 if notes.apex is None else int(notes.apex),
          "face_found": -1 if notes.face_found is None else int(notes.face_found),
        },
      )
    if official.applies(self.DATASET, cfg.task, cfg.protocol):
      meta["official_list"] = official.compare(
        self.DATASET, samples, skipped_names=[item for item, _ in stats["skipped"]]
      ).to_dict()


def _make(dataset: str, cls_name: str):
  return type(
    cls_name,
    (_MerBuilder,),
    {
      "__doc__": f"{DISPLAY_NAMES[dataset]} from the user's licensed copy (manual_dir); see module doc.",
      "__module__": __name__,
      "name": f"mer_{dataset}",
      "DATASET": dataset,
      "MANUAL_DOWNLOAD_INSTRUCTIONS": readers.MANUAL_DOWNLOAD_INSTRUCTIONS[dataset],
      "BUILDER_CONFIGS": _predefined(dataset),
    },
  )


MerCasme2 = _make("casme2", "MerCasme2")
MerSamm = _make("samm", "MerSamm")
MerSmic = _make("smic", "MerSmic")
MerCk = _make("ck", "MerCk")
MerRafdb = _make("rafdb", "MerRafdb")
MerFer2013 = _make("fer2013", "MerFer2013")

BUILDERS: dict[str, type] = {
  "casme2": MerCasme2,
  "samm": MerSamm,
  "smic": MerSmic,
  "ck": MerCk,
  "rafdb": MerRafdb,
  "fer2013": MerFer2013,
}


def get_builder(
  dataset: str, config, data_dir: str, *, read_result: Optional[readers.ReadResult] = None
) -> tfds.core.DatasetBuilder:
  """The builder for ``dataset`` with the config derived from ``config``, caching under ``data_dir``."""
  if dataset not in BUILDERS:
    raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(BUILDERS)}")
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # silence TFDS' "Using custom data configuration" notice
  cls = BUILDERS[dataset]
  bc = builder_config_from_config(dataset, config)
  predefined = {c.name: c for c in cls.BUILDER_CONFIGS}
  if bc.name in predefined:  # same name = same task, protocol and settings: use the registered config
    assert predefined[bc.name].settings == bc.settings, bc.name
    bc = bc.name
  try:
    return cls(data_dir=data_dir, config=bc, read_result=read_result)
  finally:
    absl_logger.setLevel(level)


def build_summary(name: str, meta: dict, n: int) -> str:
  """One line (plus skipped items) on what a build read, excluded, skipped and wrote."""
  st = meta.get("build_stats", {}) or {}
  skipped = list(meta.get("read_skipped", [])) + list(st.get("skipped", []))
  parts = [
    f"[data] {name}: {meta.get('read', '?')} read",
    f"{st.get('excluded', 0)} excluded by the mapping",
    f"{len(skipped)} skipped",
    f"{n} samples",
  ]
  if st.get("no_face"):
    parts.append(f"{len(st['no_face'])} without a detected face (centre crop, e.g. {st['no_face'][0]})")
  if st.get("apex_rules"):
    parts.append("apex: " + ", ".join(f"{k} {v}" for k, v in sorted(st["apex_rules"].items())))
  if st.get("evm_warnings"):
    parts.append(f"EVM warnings on {st['evm_warnings']} clips, e.g. {st['first_evm_warning']}")
  if st.get("not_listed"):
    parts.insert(2, f"{st['not_listed']} not in the MEGC 2019 list")
  msg = ", ".join(parts)
  if meta.get("official_list"):
    msg += "\n  " + official.Comparison(**{k: v for k, v in meta["official_list"].items() if k != "comparable"}).line()
  for why in st.get("relabelled", [])[:10]:
    msg += f"\n  {why}"
  for item, why in skipped[:10]:
    msg += f"\n  skipped {item}: {why}"
  if len(skipped) > 10:
    msg += f"\n  ... and {len(skipped) - 10} more"
  return msg


def prepare(builder, manual_dir: str, *, force: bool = False) -> None:
  """Builds the cache from ``manual_dir`` (no-op when it is already built, unless ``force``)."""
  mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if force else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  # TFDS' progress bars redraw with terminal escape codes: on a terminal only, not in a redirected log.
  tfds.display_progress_bar(sys.stderr.isatty())
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
    )
  except AssertionError as e:
    if "No examples were yielded" not in str(e):
      raise
    meta = dict(builder.info.metadata or {})
    raise DataError(
      f"no samples left in {builder.DATASET} ({manual_dir}) after mapping and skipping: "
      + build_summary(builder.DATASET, meta, 0)
    ) from None


def read_cache(builder) -> dict[str, np.ndarray]:
  """All examples of the built cache as numpy arrays, in clip order (source, subject, clip_id).

  Returns images uint8 [N, S, S, C], label int32 [N], and str arrays subject, source, clip_id,
  raw_label, plus apex / face_found int32 [N].
  """
  src = builder.as_data_source(split=SPLIT)
  n = len(src)
  size, ch = builder.builder_config.settings["image_size"], builder.builder_config.settings["channels"]
  out = {
    "image": np.zeros((n, size, size, ch), np.uint8),
    "label": np.zeros((n,), np.int32),
    "apex": np.zeros((n,), np.int32),
    "face_found": np.zeros((n,), np.int32),
  }
  text = {k: [] for k in ("subject", "source", "clip_id", "raw_label")}
  for i in range(n):
    ex = src[i]
    out["image"][i] = ex["image"]
    for k in ("label", "apex", "face_found"):
      out[k][i] = ex[k]
    for k in text:
      v = ex[k]
      text[k].append(v.decode() if isinstance(v, bytes) else str(v))
  for k, v in text.items():
    out[k] = np.asarray(v, dtype=str)
  order = sorted(range(n), key=lambda i: (out["source"][i], out["subject"][i], out["clip_id"][i]))
  return {k: v[order] for k, v in out.items()}
