"""End-of-benchmark reports: results.json, results.md, confusion-matrix PNGs, ablation tables.

Inputs are per-fold records (:class:`FoldRecord`, or plain dicts with the same
keys) produced by the LOSO loop. Following the MEGC 2019 convention, the
predictions of all folds are pooled and Acc / UF1 / UAR are computed from the
accumulated confusion matrix (:func:`mer_jax.metrics.compute`); for a composite
benchmark (CDE) the pooled predictions are also split by source dataset
(:func:`mer_jax.metrics.by_source`: "Mixed" + one entry per dataset, Tables 5-6).

Uncertainty: a percentile bootstrap over subjects (resample the LOSO folds with
replacement, re-accumulate the confusion matrix, recompute UF1 / UAR), seeded
with ``config.seed``, ``config.bootstrap_samples`` resamples.

Runs whose model selection looked at the held-out subject
(``config.finetune.test_fold_early_stopping=True``) are labelled as such in
results.json (``test_fold_early_stopping``), in every table row (a dagger) and in
a warning at the top of results.md.

Files written into ``workdir`` by :func:`write_reports`:
  results.json           everything (config, git commit, seed, counts, per-fold and aggregate metrics, CIs)
  results.md             the paper's table layout (Table 5/6 for CDE, Tables 7-9 for SDE) + details
  confusion_<src>.png    row-normalised confusion matrix per source (Figures 5-7 style)
  confusion_matrices.png all sources side by side, panels (a), (b), ...

:func:`write_ablation_table` assembles one table (Tables 10-12 layout) from the
results.json of several runs (see ``experiments/ablation.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import subprocess
import tempfile
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from mer_jax.data.types import DISPLAY_NAMES
from mer_jax.errors import UserError

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FORMAT_VERSION = 1
MIXED = "Mixed"
# Column order of Tables 5, 6, 10-12.
SOURCE_ORDER = (MIXED, "casme2", "samm", "smic")
TEST_FOLD_MARK = "\u2020"  # dagger on every row whose model selection used the test fold
TEST_FOLD_NOTE = (
  f"{TEST_FOLD_MARK} model selection (plateau / early stopping) used the held-out test subject "
  "(config.finetune.test_fold_early_stopping=True): optimistic, not a proper LOSO estimate."
)


# ---------------------------------------------------------------------------------------------
# Fold records
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FoldRecord:
  """The outcome of one LOSO fold (one held-out subject).

  subject:        held-out subject id, e.g. "casme2/sub01"
  clip_ids:       [n] str, the test clips
  sources:        [n] str, source dataset of each test clip ("casme2", "samm", "smic")
  y_true:         [n] int, class index
  y_pred:         [n] int, predicted class index
  probs:          [n, K] float, class probabilities (softmax)
  epochs_trained: epochs run before early stopping / the epoch limit
  best_epoch:     epoch whose weights were kept (0-based as the trainer counts)
  val_metric:     the model-selection metric at best_epoch (validation split of the
                  training subjects, or of the test fold when test-fold early stopping is on)
  wall_time_s:    seconds the fold took
  model_selection: "validation" (training subjects' split) or "test_fold" (the held-out
                  subject; optimistic - labelled in every report); "" when not given
  val_loss, n_train, n_val: optional bookkeeping, copied into results.json
  """

  subject: str
  clip_ids: Sequence[str]
  sources: Sequence[str]
  y_true: np.ndarray
  y_pred: np.ndarray
  probs: np.ndarray
  epochs_trained: int = 0
  best_epoch: int = -1
  val_metric: float = float("nan")
  wall_time_s: float = float("nan")
  model_selection: str = ""
  val_loss: float = float("nan")
  n_train: int = -1
  n_val: int = -1

  _ALIASES = {
    "wall_time": "wall_time_s",
    "time_s": "wall_time_s",
    "best_val_metric": "val_metric",
    "val": "val_metric",
    "epochs": "epochs_trained",
  }

  @classmethod
  def from_any(cls, rec: Any) -> "FoldRecord":
    """A :class:`FoldRecord` from itself, another dataclass with the same fields, or a mapping.

    Mappings may use the aliases ``wall_time`` / ``best_val_metric`` / ``epochs``; unknown
    keys are ignored. Raises :class:`UserError` naming a missing required key.
    """
    if isinstance(rec, cls):
      d = dataclasses.asdict(rec)
    elif dataclasses.is_dataclass(rec) and not isinstance(rec, type):
      d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    elif isinstance(rec, Mapping):
      d = dict(rec)
    else:
      raise UserError(f"fold record of type {type(rec).__name__} is neither a FoldRecord nor a mapping")
    for alias, name in cls._ALIASES.items():
      if alias in d and name not in d:
        d[name] = d.pop(alias)
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [n for n in ("subject", "clip_ids", "sources", "y_true", "y_pred", "probs") if n not in d]
    if missing:
      raise UserError(f"fold record {d.get('subject', '?')!r} lacks {', '.join(missing)}")
    out = cls(**{k: v for k, v in d.items() if k in names})
    out.y_true = np.asarray(out.y_true, dtype=np.int64).reshape(-1)
    out.y_pred = np.asarray(out.y_pred, dtype=np.int64).reshape(-1)
    out.probs = np.asarray(out.probs, dtype=np.float64)
    out.clip_ids = [str(c) for c in np.asarray(out.clip_ids).reshape(-1)]
    out.sources = [str(s) for s in np.asarray(out.sources).reshape(-1)]
    n = out.y_true.shape[0]
    if out.probs.ndim == 1 and n == 0:
      out.probs = out.probs.reshape(0, 0)
    lengths = {
      "y_pred": out.y_pred.shape[0],
      "clip_ids": len(out.clip_ids),
      "sources": len(out.sources),
      "probs": out.probs.shape[0],
    }
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
      raise UserError(
        f"fold record {out.subject!r}: y_true has {n} entries but " + ", ".join(f"{k} has {v}" for k, v in bad.items())
      )
    return out


# ---------------------------------------------------------------------------------------------
# Metrics helpers
# ---------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
  """Numpy / jax scalars and arrays, tuples and ConfigDicts -> plain JSON types (NaN -> None)."""
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if hasattr(x, "to_dict") and callable(x.to_dict):
    return _jsonable(x.to_dict())
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (str, bool)) or x is None:
    return x
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)
  if hasattr(x, "__array__"):
    a = np.asarray(x)
    if a.ndim == 0:
      return _jsonable(a.item())
    return _jsonable(a.tolist())
  return str(x)


def group_confusions(
  y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, num_classes: int, order: Optional[Sequence[Any]] = None
) -> tuple[np.ndarray, np.ndarray]:
  """One confusion matrix per group (subject): ([G], [G, K, K] int64).

  order: the groups, in this order (default: ``np.unique(groups)``); groups without samples get zeros.
  """
  y_true = np.asarray(y_true, dtype=np.int64)
  y_pred = np.asarray(y_pred, dtype=np.int64)
  groups = np.asarray(groups)
  uniq = np.unique(groups) if order is None else np.asarray(order)
  index = {g: i for i, g in enumerate(uniq.tolist())}
  inv = np.asarray([index[g] for g in groups.tolist()], dtype=np.int64)
  per_group = np.zeros((len(uniq), num_classes, num_classes), dtype=np.int64)
  np.add.at(per_group, (inv, y_true, y_pred), 1)
  return uniq, per_group


def resample_counts(num_groups: int, samples: int, seed: int) -> np.ndarray:
  """[samples, num_groups]: how often each group is drawn in each bootstrap resample (with replacement)."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=samples)


def _percentiles(values: Mapping[str, np.ndarray], level: float) -> dict:
  alpha = (1.0 - level) / 2.0
  out = {}
  for name, v in values.items():
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    out[name] = {"low": float(lo), "high": float(hi)}
  return out


def bootstrap_ci(
  y_true: np.ndarray,
  y_pred: np.ndarray,
  groups: np.ndarray,
  num_classes: int,
  *,
  samples: int,
  seed: int,
  level: float = 0.95,
) -> dict:
  """Percentile bootstrap CI of UF1 / UAR / accuracy over groups (subjects).

  y_true, y_pred, groups: [n]. Each resample draws len(unique(groups)) groups with
  replacement (a group drawn twice counts twice), pools their predictions into one
  confusion matrix and recomputes the scores (:func:`mer_jax.metrics.scores`) - the same
  pooled (MEGC 2019) estimator as the point estimate. Deterministic for a given ``seed``.
  Returns {"uf1": {"low", "high"}, "uar": {...}, "accuracy": {...}, "samples", "seed",
  "level", "groups"}.
  """
  from mer_jax import metrics

  uniq, per_group = group_confusions(y_true, y_pred, groups, num_classes)
  g = len(uniq)
  out: dict = {"samples": int(samples), "seed": int(seed), "level": float(level), "groups": int(g)}
  if g == 0 or samples <= 0:
    for name in ("uf1", "uar", "accuracy"):
      out[name] = {"low": float("nan"), "high": float("nan")}
    return out
  conf = np.einsum("bs,skl->bkl", resample_counts(g, samples, seed), per_group, optimize=True)
  m = metrics.scores(conf)
  out.update(_percentiles({name: m[name] for name in ("uf1", "uar", "accuracy")}, level))
  return out


def paired_bootstrap_diff(
  per_group_a: np.ndarray, per_group_b: np.ndarray, *, samples: int, seed: int, level: float = 0.95
) -> dict:
  """Percentile bootstrap CI of (score of A) - (score of B) over groups, paired.

  per_group_a, per_group_b: [G, K, K] confusion matrices of the SAME G groups (subjects) under two
  settings. Each resample draws G groups with replacement and pools both settings' matrices of the
  drawn groups, so both scores come from the same resample. Returns {"uf1": {"diff", "low", "high"},
  "uar": ..., "accuracy": ..., "samples", "seed", "level", "groups"}; ``diff`` is the point estimate
  on all groups.
  """
  from mer_jax import metrics

  a = np.asarray(per_group_a, np.int64)
  b = np.asarray(per_group_b, np.int64)
  if a.shape != b.shape:
    raise ValueError(f"paired bootstrap needs matrices of the same groups: {a.shape} vs {b.shape}")
  g = a.shape[0]
  out: dict = {"samples": int(samples), "seed": int(seed), "level": float(level), "groups": int(g)}
  point_a, point_b = metrics.scores(a.sum(0)), metrics.scores(b.sum(0))
  names = ("uf1", "uar", "accuracy")
  if g == 0 or samples <= 0:
    for n in names:
      out[n] = {"diff": float(point_a[n] - point_b[n]), "low": float("nan"), "high": float("nan")}
    return out
  counts = resample_counts(g, samples, seed)
  ra = metrics.scores(np.einsum("bs,skl->bkl", counts, a, optimize=True))
  rb = metrics.scores(np.einsum("bs,skl->bkl", counts, b, optimize=True))
  cis = _percentiles({n: ra[n] - rb[n] for n in names}, level)
  for n in names:
    out[n] = {"diff": float(point_a[n] - point_b[n]), **cis[n]}
  return out


def _metric_summary(m: Mapping[str, Any]) -> dict:
  """A mer_jax.metrics result dict as JSON types."""
  return {k: _jsonable(v) for k, v in m.items()}


# ---------------------------------------------------------------------------------------------
# results.json
# ---------------------------------------------------------------------------------------------


def temp_prefix(path: str) -> str:
  """Name prefix of atomic_write_text's temp files for ``path``: ``.<basename>.``."""
  return "." + os.path.basename(path) + "."


def sweep_stale_temps(paths: Iterable[str]) -> list[str]:
  """Removes the temp files atomic_write_text left for ``paths`` when its process was killed mid-write.

  Only for a caller that is the sole writer of ``paths`` (a sweep would delete another live writer's temp file).

  Args:
    paths: the files about to be written; their folders are searched for ``.<basename>.*.tmp``.

  Returns:
    The removed paths.
  """
  removed = []
  for path in paths:
    folder, prefix = os.path.dirname(os.path.abspath(path)), temp_prefix(path)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if name.startswith(prefix) and name.endswith(".tmp"):
        try:
          os.unlink(os.path.join(folder, name))
          removed.append(os.path.join(folder, name))
        except FileNotFoundError:
          pass
  return removed


def atomic_write_text(path: str, text_or_writer: Any) -> None:
  """Writes ``path`` via a temp file in the same folder + os.replace (never a partial file).

  text_or_writer: a str, or a callable f(file) that writes the content. If it raises, the
  temp file is removed and an existing ``path`` is left untouched. A SIGKILL leaves the temp file
  (``.<name>.<random>.tmp``, see temp_prefix); writers that own their folder sweep it (write_reports).
  The temp name is unique per call, so processes may write the same path at once (multi-host fold records).
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      if callable(text_or_writer):
        text_or_writer(f)
      else:
        f.write(text_or_writer)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise


def _atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, lambda f: json.dump(obj, f, indent=2, allow_nan=False))


def git_commit_of_repo(path: Optional[str] = None) -> Optional[str]:
  """``git rev-parse HEAD`` of the checkout holding ``path`` (default: this package), or None."""
  where = path or os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=False
    )
  except (OSError, subprocess.SubprocessError):
    return None
  sha = out.stdout.strip()
  if out.returncode != 0 or not sha:
    return None
  try:
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=where,
      capture_output=True,
      text=True,
      timeout=10,
      check=False,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    dirty = ""
  return sha + ("-dirty" if dirty else "")


def _cfg_get(config: Any, dotted: str, default: Any = None) -> Any:
  cur = config
  for part in dotted.split("."):
    if cur is None:
      return default
    if isinstance(cur, Mapping):
      cur = cur.get(part, None)
    else:
      cur = getattr(cur, part, None)
  return default if cur is None else cur


def default_label(config: Any) -> str:
  """A table row name for a run: backbone, attention, EVM, pretraining."""
  backbone = _cfg_get(config, "model.backbone", "dense")
  attention = _cfg_get(config, "model.attention", "mixed")
  evm = _cfg_get(config, "evm.enabled", True)
  pre = _cfg_get(config, "pretrain.enabled", True) or bool(_cfg_get(config, "pretrained_checkpoint", ""))
  att = "no attention" if attention == "none" else f"{attention} attention"
  return f"{backbone}, {att}, EVM {'on' if evm else 'off'}, {'pretrained' if pre else 'no pretraining'}"


def _source_keys(sources_present: Iterable[str]) -> list[str]:
  present = list(dict.fromkeys(sources_present))
  ordered = [s for s in SOURCE_ORDER[1:] if s in present]
  return ordered + sorted(s for s in present if s not in ordered)


def build_results(
  config: Any,
  fold_records: Sequence[Any],
  class_names: Sequence[str],
  *,
  git_commit: Optional[str] = None,
  label: Optional[str] = None,
) -> dict:
  """The results.json content (see module docstring); pure apart from the git lookup."""
  from mer_jax import metrics  # accumulated-confusion metric definitions

  records = [FoldRecord.from_any(r) for r in fold_records]
  if not records:
    raise UserError("no LOSO fold records to report (did every fold fail or get skipped?)")
  k = len(class_names)
  subjects = [r.subject for r in records]
  if len(set(subjects)) != len(subjects):
    dup = sorted({s for s in subjects if subjects.count(s) > 1})
    raise UserError(f"fold records repeat subject(s) {dup}: each LOSO fold must hold out a different subject")
  y_true = np.concatenate([r.y_true for r in records]).astype(np.int64)
  y_pred = np.concatenate([r.y_pred for r in records]).astype(np.int64)
  sources = np.asarray([s for r in records for s in r.sources], dtype=object)
  groups = np.asarray([r.subject for r in records for _ in range(len(r.y_true))], dtype=object)
  for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
    if arr.size and (arr.min() < 0 or arr.max() >= k):
      raise UserError(f"fold records hold {name} values outside 0..{k - 1} for classes {list(class_names)}")

  src_keys = _source_keys(sources.tolist())
  benchmark = "cde" if len(src_keys) > 1 else "sde"
  if len(src_keys) > 1:
    per_source = metrics.by_source(y_true, y_pred, sources.astype(str), k)
  else:
    per_source = {MIXED: metrics.compute(y_true, y_pred, k)}
    if src_keys:
      per_source[src_keys[0]] = per_source[MIXED]
  aggregate = {key: _metric_summary(per_source[key]) for key in [MIXED] + src_keys if key in per_source}

  seed = int(_cfg_get(config, "seed", 0))
  n_boot = int(_cfg_get(config, "bootstrap_samples", 1000))
  boot = {"samples": n_boot, "seed": seed, "level": 0.95, "unit": "subject (LOSO fold)"}
  for key in [MIXED] + src_keys:
    mask = np.ones(len(y_true), bool) if key == MIXED else (sources == key)
    boot[key] = bootstrap_ci(y_true[mask], y_pred[mask], groups[mask], k, samples=n_boot, seed=seed)

  counts = {MIXED: dict(zip(class_names, np.bincount(y_true, minlength=k).tolist()))}
  for key in src_keys:
    counts[key] = dict(zip(class_names, np.bincount(y_true[sources == key], minlength=k).tolist()))

  folds = []
  for r in records:
    m = metrics.compute(r.y_true, r.y_pred, k)
    folds.append(
      {
        "subject": r.subject,
        "sources": sorted(set(r.sources)),
        "n": int(len(r.y_true)),
        "accuracy": _jsonable(m["accuracy"]),
        "uf1": _jsonable(m["uf1"]),
        "uar": _jsonable(m["uar"]),
        "epochs_trained": int(r.epochs_trained),
        "best_epoch": int(r.best_epoch),
        "val_metric": _jsonable(r.val_metric),
        "val_loss": _jsonable(r.val_loss),
        "wall_time_s": _jsonable(r.wall_time_s),
        "model_selection": r.model_selection or None,
        "n_train": int(r.n_train),
        "n_val": int(r.n_val),
        "clip_ids": list(r.clip_ids),
        "clip_sources": list(r.sources),
        "y_true": r.y_true.tolist(),
        "y_pred": r.y_pred.tolist(),
        "probs": _jsonable(np.round(r.probs, 6)),
      }
    )

  # Either source of truth marks the run: the config flag, or any fold that says it selected on the test fold.
  test_fold = bool(_cfg_get(config, "finetune.test_fold_early_stopping", False)) or any(
    r.model_selection == "test_fold" for r in records
  )
  last_epoch = not test_fold and (
    not bool(_cfg_get(config, "finetune.select_best", True)) or any(r.model_selection == "last_epoch" for r in records)
  )
  cfg_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config) if isinstance(config, Mapping) else {}
  return {
    "format_version": FORMAT_VERSION,
    "label": label or default_label(config),
    "name": _cfg_get(config, "name", ""),
    "benchmark": benchmark,
    "protocol": "LOSO; metrics from the confusion matrix accumulated over all folds (MEGC 2019)",
    "test_fold_early_stopping": test_fold,
    "model_selection": (
      "test fold (held-out subject) - optimistic"
      if test_fold
      else "none: the last epoch's weights (finetune.select_best=False)"
      if last_epoch
      else "validation split of the training subjects only"
    ),
    "git_commit": git_commit if git_commit is not None else git_commit_of_repo(),
    "seed": seed,
    "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "class_names": list(class_names),
    "sources": src_keys,
    "num_samples": int(len(y_true)),
    "num_folds": len(records),
    "class_counts": counts,
    "aggregate": aggregate,
    "bootstrap": boot,
    "folds": folds,
    "context": results_context(benchmark, src_keys, k),
    "total_wall_time_s": _jsonable(float(np.nansum([r.wall_time_s for r in records]))),
    "config": _jsonable(cfg_dict),
  }


# ---------------------------------------------------------------------------------------------
# Results in context: the paper's rows and published results (mer_jax.literature)
# ---------------------------------------------------------------------------------------------

CDE_KEYS = {MIXED: "cde_full", "casme2": "cde_casme2", "samm": "cde_samm", "smic": "cde_smic"}
PAPER_TABLES = {
  "cde_full": "Table 5",
  "cde_casme2": "Table 6",
  "cde_samm": "Table 6",
  "cde_smic": "Table 6",
  "sde_casme2_5c": "Table 7",
  "sde_samm_5c": "Table 8",
  "sde_smic_3c": "Table 9",
}
MEGC2019_CLIPS, MEGC2019_SUBJECTS = 442, 68


def context_benchmarks(benchmark: str, sources: Sequence[str], num_classes: int) -> dict[str, str]:
  """{results key (Mixed / source): literature benchmark} for the parts of a run that published figures fit.

  CDE (3 classes): the composite when the run holds CASME II, SAMM and SMIC-HS, and each dataset's part.
  SDE: ``sde_<source>_<K>c`` where the paper has that table (CASME II / SAMM 5 classes, SMIC-HS 3 classes).
  """
  from mer_jax import literature

  out: dict[str, str] = {}
  if benchmark == "cde":
    if num_classes != 3:
      return out
    if {"casme2", "samm", "smic"} <= set(sources):
      out[MIXED] = CDE_KEYS[MIXED]
    out.update({s: CDE_KEYS[s] for s in sources if s in CDE_KEYS})
  elif len(sources) == 1:
    key = f"sde_{sources[0]}_{num_classes}c"
    if key in literature.BENCHMARKS:
      out[MIXED] = key
  return out


def results_context(benchmark: str, sources: Sequence[str], num_classes: int) -> dict:
  """results.json "context": the paper's figures and the published results for this run's benchmark parts."""
  from mer_jax import literature

  keys = context_benchmarks(benchmark, sources, num_classes)
  paper, published = {}, {}
  for part, key in keys.items():
    row = literature.paper_row(key)
    if row is not None:
      paper[part] = {
        "benchmark": key,
        "table": PAPER_TABLES.get(key),
        "uf1": row.uf1,
        "uar": row.uar,
        "accuracy": row.acc,
      }
    published[key] = [dataclasses.asdict(r) for r in literature.published_results(key, include_paper=False)]
  return {
    "benchmarks": keys,
    "paper": paper,
    "published": published,
    "source": "mer_jax/literature/published_results.csv",
  }


def _sel(v: str) -> str:
  return {"yes": "yes (optimistic)", "no": "no"}.get(v, "unknown")


def context_markdown(res: Mapping[str, Any]) -> list[str]:
  """The "Results in context" section of results.md (empty when no published figure fits the run)."""
  ctx = res.get("context") or {}
  keys: Mapping[str, str] = ctx.get("benchmarks") or {}
  if not keys:
    return []
  agg, mark = res["aggregate"], (TEST_FOLD_MARK if res.get("test_fold_early_stopping") else "")
  out = ["## Results in context", ""]
  corrected: dict[str, list[str]] = {}  # method -> "<published> (<part>)" of each corrected UAR
  notes: dict[str, str] = {}

  def uar_cell(r: Mapping[str, Any], part: str = "") -> str:
    if r.get("uar_published") is not None:
      corrected.setdefault(r["method"], []).append(f"{_f4(r['uar_published'])}{f' {part}' if part else ''}")
      return f"{_f4(r.get('uar'))}\u2021"
    if r.get("note"):
      notes.setdefault(r["method"], r["note"])
    return _f4(r.get("uar"))

  if res["benchmark"] == "cde":
    parts = [p for p in (MIXED, "casme2", "samm", "smic") if p in keys]
    tables = sorted({PAPER_TABLES[keys[p]] for p in parts})
    out += [
      f"MEGC 2019 layout: the composite and its per-dataset parts, each scored from its own pooled confusion "
      f"matrix; the paper's figures from {' and '.join(tables)}.",
      "",
      "| Dataset | Clips | Subjects | This run UF1 | UAR | Acc (%) | Paper UF1 | UAR | Acc (%) |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
      a, pp = agg.get(p, {}), ctx.get("paper", {}).get(p, {})
      n = sum((res.get("class_counts", {}).get(p) or {}).values())
      g = (res.get("bootstrap", {}).get(p) or {}).get("groups", "-")
      name = "Composite (Mixed)" if p == MIXED else _display(p)
      out.append(
        f"| {name}{mark} | {n} | {g} | {_f4(a.get('uf1'))} | {_f4(a.get('uar'))} | "
        f"{_pct(a.get('accuracy'))} | {_f4(pp.get('uf1'))} | {_f4(pp.get('uar'))} | "
        f"{_pct(pp.get('accuracy'))} |"
      )
    synthetic = bool(_cfg_get(res.get("config") or {}, "data.synthetic", False))
    if MIXED in keys and synthetic:
      out += [
        "",
        "SynthME run: its clips are synthetic, not those of the official MEGC 2019 list, and its numbers "
        "say nothing about real micro-expression recognition; the published figures show the layout only.",
      ]
    elif MIXED in keys:
      n = res.get("num_samples")
      out += [
        "",
        f"The official MEGC 2019 composite list has {MEGC2019_CLIPS} clips of {MEGC2019_SUBJECTS} "
        f"subjects; this run has {n} clips of {res.get('num_folds')} subjects. "
        "`python -m mer_jax.score <this workdir>` scores its predictions against the list "
        "(docs/evaluation.md).",
      ]
    methods = list(dict.fromkeys(r["method"] for p in parts for r in ctx["published"].get(keys[p], [])))
    if methods:
      out += [
        "",
        "Published results (UF1 / UAR as published, except where marked):",
        "",
        "| Method | Year | "
        + " | ".join(f"{'Composite' if p == MIXED else _display(p)} UF1 | UAR" for p in parts)
        + " | Model selected on the test subject | Source |",
        "|---|---|" + "---|---|" * len(parts) + "---|---|",
      ]
      row = [f"This run{mark}", "-"]
      for p in parts:
        row += [_f4(agg.get(p, {}).get("uf1")), _f4(agg.get(p, {}).get("uar"))]
      sel = "yes (test-fold early stopping)" if mark else "no"
      out.append("| " + " | ".join(row + [sel, "this results.json"]) + " |")
      for m in methods:
        by = {p: next((r for r in ctx["published"].get(keys[p], []) if r["method"] == m), None) for p in parts}
        first = next(r for r in by.values() if r is not None)
        cells = [m, str(first.get("year") or "-")]
        for p in parts:
          r = by[p]
          cells += [_f4(r.get("uf1")), uar_cell(r, "composite" if p == MIXED else _display(p))] if r else ["-", "-"]
        src = first["source"] + (" (secondary)" if first["status"] == "secondary" else "")
        out.append("| " + " | ".join(cells + [_sel(first.get("selects_on_test", "")), src]) + " |")
  else:
    key = keys[MIXED]
    pp = ctx.get("paper", {}).get(MIXED, {})
    a = agg.get(MIXED, {})
    out += [
      f"This run beside the paper ({PAPER_TABLES.get(key, '-')}, {key}) and published results:",
      "",
      "| Method | Year | UF1 | UAR | Acc (%) | Model selected on the test subject | Source |",
      "|---|---|---|---|---|---|---|",
      f"| This run{mark} | - | {_f4(a.get('uf1'))} | {_f4(a.get('uar'))} | {_pct(a.get('accuracy'))} | "
      f"{'yes (test-fold early stopping)' if mark else 'no'} | this results.json |",
    ]
    if pp:
      out.append(
        f"| Paper: proposed method | - | {_f4(pp.get('uf1'))} | {_f4(pp.get('uar'))} | "
        f"{_pct(pp.get('accuracy'))} | unknown | paper {PAPER_TABLES.get(key, '')} |"
      )
    for r in ctx["published"].get(key, []):
      out.append(
        f"| {r['method']} | {r.get('year') or '-'} | {_f4(r.get('uf1'))} | {uar_cell(r)} | "
        f"{_pct(r.get('acc'))} | {_sel(r.get('selects_on_test', ''))} | {r['source']} |"
      )
  out += [""]
  for method, published in corrected.items():
    out += [
      f"\u2021 {method}: the published UAR ({', '.join(published)}) equals its macro-averaged precision; "
      "shown is the UAR rescored from its released per-clip predictions (`python -m mer_jax.score`).",
      "",
    ]
  for method, note in notes.items():
    out += [f"{method}: {note}.", ""]
  out += [
    "\"yes (optimistic)\": that method's public code picks each LOSO fold's epoch / model on the held-out "
    "subject, which inflates its figures (experiments/leakage.py measures the effect; docs/evaluation.md). "
    f"Figures and their sources: {ctx.get('source', 'mer_jax/literature/published_results.csv')}.",
    "",
  ]
  return out


# ---------------------------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------------------------


def _display(src: str) -> str:
  return MIXED if src == MIXED else DISPLAY_NAMES.get(src, src)


def _f4(x: Any) -> str:
  return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):.4f}"


def _pct(x: Any) -> str:
  return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * float(x):.2f}"


def _row_label(res: Mapping[str, Any], label: Optional[str] = None) -> str:
  name = label or res.get("label", "?")
  return name + (TEST_FOLD_MARK if res.get("test_fold_early_stopping") else "")


def table_markdown(results: Sequence[Mapping[str, Any]], labels: Optional[Sequence[str]] = None) -> str:
  """One table, a row per results.json content, in the paper's layout.

  CDE (any result with several sources): Method | Mixed UAR UF1 Acc(%) | CASME II ... | SAMM
  ... | SMIC-HS ... (Tables 5-6, 10-12). SDE: Method | UF1 | Acc (%) (Tables 7-9).
  Rows from test-fold early-stopping runs carry a dagger and a footnote.
  """
  labels = list(labels) if labels is not None else [None] * len(results)
  cde = any(len(r.get("sources", [])) > 1 for r in results)
  lines = []
  if cde:
    cols = [s for s in SOURCE_ORDER if any(s == MIXED or s in r.get("sources", []) for r in results)]
    extra = sorted({s for r in results for s in r.get("sources", []) if s not in cols})
    cols += extra
    head = ["Method"] + [f"{_display(s)} {m}" for s in cols for m in ("UAR", "UF1", "Acc (%)")]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for res, lab in zip(results, labels):
      cells = [_row_label(res, lab)]
      for s in cols:
        a = res.get("aggregate", {}).get(s)
        cells += [_f4(a.get("uar")), _f4(a.get("uf1")), _pct(a.get("accuracy"))] if a else ["-"] * 3
      lines.append("| " + " | ".join(cells) + " |")
  else:
    lines.append("| Method | UF1 | Acc (%) |")
    lines.append("|---|---|---|")
    for res, lab in zip(results, labels):
      a = res.get("aggregate", {}).get(MIXED, {})
      lines.append(f"| {_row_label(res, lab)} | {_f4(a.get('uf1'))} | {_pct(a.get('accuracy'))} |")
  if any(r.get("test_fold_early_stopping") for r in results):
    lines += ["", TEST_FOLD_NOTE]
  return "\n".join(lines) + "\n"


def results_markdown(res: Mapping[str, Any], png_names: Mapping[str, str]) -> str:
  """results.md for one run: main table, CIs, counts, per-class scores, PNG links, per-fold table."""
  names = res["class_names"]
  src_keys = [MIXED] + [s for s in res["sources"] if len(res["sources"]) > 1]
  out = [f"# Results: {res.get('name') or 'run'} - {res['label']}", ""]
  if res.get("test_fold_early_stopping"):
    out += [f"> **WARNING: test-fold early stopping.** {TEST_FOLD_NOTE}", ""]
  layout = (
    "Tables 5-6 layout (CDE, composite LOSO)"
    if res["benchmark"] == "cde"
    else "Tables 7-9 layout (SDE, single-dataset LOSO)"
  )
  out += [
    f"- protocol: {res['protocol']}",
    f"- model selection: {res['model_selection']}",
    f"- samples: {res['num_samples']}, LOSO folds (subjects): {res['num_folds']}",
    f"- seed: {res['seed']}, git commit: {res.get('git_commit') or 'unknown'}",
    f"- total fold wall time: {res.get('total_wall_time_s') or 0:.1f} s",
    "",
    f"## Main results: {layout}",
    "",
    table_markdown([res]),
  ]
  b = res["bootstrap"]
  out += [
    f"## Bootstrap {int(100 * b['level'])}% CI over subjects ({b['samples']} resamples, seed {b['seed']})",
    "",
    "| Dataset | Subjects | UF1 | UF1 95% CI | UAR | UAR 95% CI |",
    "|---|---|---|---|---|---|",
  ]
  for s in src_keys:
    a, ci = res["aggregate"][s], b[s]
    out.append(
      f"| {_display(s)} | {ci['groups']} | {_f4(a['uf1'])} | [{_f4(ci['uf1']['low'])}, "
      f"{_f4(ci['uf1']['high'])}] | {_f4(a['uar'])} | [{_f4(ci['uar']['low'])}, {_f4(ci['uar']['high'])}] |"
    )
  out += [""] + context_markdown(res)
  out += [
    "## Samples per class",
    "",
    "| Dataset | " + " | ".join(names) + " | Total |",
    "|---|" + "---|" * (len(names) + 1),
  ]
  for s in src_keys:
    c = res["class_counts"][s]
    out.append(f"| {_display(s)} | " + " | ".join(str(c[n]) for n in names) + f" | {sum(c.values())} |")
  out += [
    "",
    "## Per-class F1 / recall",
    "",
    "| Dataset | " + " | ".join(f"{n} F1 | {n} recall" for n in names) + " |",
    "|---|" + "---|---|" * len(names),
  ]
  for s in src_keys:
    a = res["aggregate"][s]
    f1, rc = a.get("per_class_f1") or [None] * len(names), a.get("per_class_recall") or [None] * len(names)
    out.append(f"| {_display(s)} | " + " | ".join(f"{_f4(f)} | {_f4(r)}" for f, r in zip(f1, rc)) + " |")
  if png_names:
    out += ["", "## Confusion matrices (row-normalised, %)", ""]
    out += [f"![{_display(s)}]({fn})" for s, fn in png_names.items()]
  out += [
    "",
    "## Per-fold results",
    "",
    "| Fold | Subject | Source | n | Acc (%) | UF1 | UAR | Epochs | Best epoch | Val metric | Time (s) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for i, f in enumerate(res["folds"]):
    t = f.get("wall_time_s")
    out.append(
      f"| {i} | {f['subject']} | {', '.join(_display(s) for s in f['sources'])} | {f['n']} | "
      f"{_pct(f['accuracy'])} | {_f4(f['uf1'])} | {_f4(f['uar'])} | {f['epochs_trained']} | "
      f"{f['best_epoch']} | {_f4(f['val_metric'])} | {'-' if t is None else f'{t:.1f}'} |"
    )
  out += [
    "",
    "Per-fold UF1/UAR are over the few clips of one subject and are shown for inspection only; "
    "the benchmark numbers above pool all folds.",
  ]
  return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Confusion-matrix figures
# ---------------------------------------------------------------------------------------------


def _draw_confusion(ax: Any, conf: np.ndarray, class_names: Sequence[str], title: str) -> Any:
  conf = np.asarray(conf, dtype=np.float64)
  rows = conf.sum(1, keepdims=True)
  pct = np.where(rows > 0, 100.0 * conf / np.maximum(rows, 1), 0.0)
  im = ax.imshow(pct, cmap="Blues", vmin=0.0, vmax=100.0)
  k = len(class_names)
  ax.set_xticks(range(k), labels=list(class_names), rotation=30, ha="right")
  ax.set_yticks(range(k), labels=list(class_names))
  ax.set_xlabel("Predicted label")
  ax.set_ylabel("True label")
  ax.set_title(title)
  for i in range(k):
    for j in range(k):
      txt = f"{pct[i, j]:.1f}%" if rows[i, 0] > 0 else "-"
      ax.text(j, i, txt, ha="center", va="center", fontsize=9, color="white" if pct[i, j] > 50 else "black")
  return im


def plot_confusion(path: str, conf: np.ndarray, class_names: Sequence[str], title: str) -> str:
  """Writes one row-normalised confusion matrix (percent of each true class) as a PNG."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  k = len(class_names)
  fig = Figure(figsize=(1.2 * k + 2.4, 1.1 * k + 1.9), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  im = _draw_confusion(ax, conf, class_names, title)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="%")
  fig.tight_layout()
  fig.savefig(path)
  return path


def plot_confusion_panel(path: str, confs: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str]) -> str:
  """Figure 5/7 style: one panel per dataset, titled (a) Mixed, (b) CASME II, ..."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  k = len(class_names)
  n = len(confs)
  cols = 2 if n == 4 else n  # Figures 5 and 7: (a) (b) / (c) (d)
  rows = -(-n // cols)
  fig = Figure(figsize=(cols * (1.2 * k + 1.6), rows * (1.1 * k + 2.0)), dpi=120)
  FigureCanvasAgg(fig)
  for i, (title, conf) in enumerate(confs):
    ax = fig.add_subplot(rows, cols, i + 1)
    _draw_confusion(ax, conf, class_names, f"({chr(ord('a') + i)}) {title}")
  fig.tight_layout()
  fig.savefig(path)
  return path


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def write_reports(
  workdir: str,
  config: Any,
  fold_records: Sequence[Any],
  class_names: Sequence[str],
  *,
  git_commit: Optional[str] = None,
  label: Optional[str] = None,
) -> dict:
  """Writes results.json, results.md and the confusion PNGs into ``workdir``.

  fold_records: one :class:`FoldRecord` (or dict with its keys) per LOSO fold.
  class_names: [K] label names, index-aligned with y_true / y_pred.
  git_commit: recorded as given; None looks it up with ``git rev-parse HEAD``.
  label: the table row name; default describes backbone / attention / EVM / pretraining.
  Returns {"results_json": path, "results_md": path, "confusion_<src>": path, ...}.
  """
  res = build_results(config, fold_records, class_names, git_commit=git_commit, label=label)
  os.makedirs(workdir, exist_ok=True)
  # one process writes a run's reports (the primary one): temp files of these names are from a killed writer
  sweep_stale_temps([os.path.join(workdir, RESULTS_MD), os.path.join(workdir, RESULTS_JSON)])
  paths: dict[str, str] = {}
  src_keys = [MIXED] + [s for s in res["sources"] if len(res["sources"]) > 1]
  pngs: dict[str, str] = {}
  for s in src_keys:
    fn = f"confusion_{s.lower()}.png"
    plot_confusion(
      os.path.join(workdir, fn),
      np.asarray(res["aggregate"][s]["confusion"]),
      class_names,
      _display(s) + (f" {TEST_FOLD_MARK}" if res["test_fold_early_stopping"] else ""),
    )
    pngs[s] = fn
    paths[f"confusion_{s.lower()}"] = os.path.join(workdir, fn)
  if len(src_keys) > 1:
    fn = "confusion_matrices.png"
    plot_confusion_panel(
      os.path.join(workdir, fn),
      [(_display(s), np.asarray(res["aggregate"][s]["confusion"])) for s in src_keys],
      class_names,
    )
    pngs["all"] = fn
    paths["confusion_matrices"] = os.path.join(workdir, fn)
  res["files"] = {k: os.path.basename(v) for k, v in paths.items()}
  md = results_markdown(res, {s: fn for s, fn in pngs.items() if s != "all"})
  paths["results_md"] = os.path.join(workdir, RESULTS_MD)
  atomic_write_text(paths["results_md"], md)
  paths["results_json"] = os.path.join(workdir, RESULTS_JSON)
  _atomic_write_json(paths["results_json"], _jsonable(res))  # last: its presence means the reports are complete
  return paths


def find_results_json(path: str) -> str:
  """``path`` itself, ``path/results.json``, or the single results.json below ``path``."""
  if os.path.isfile(path):
    return path
  direct = os.path.join(path, RESULTS_JSON)
  if os.path.isfile(direct):
    return direct
  found = []
  for root, _, files in os.walk(path):
    if RESULTS_JSON in files:
      found.append(os.path.join(root, RESULTS_JSON))
  if len(found) == 1:
    return found[0]
  if not found:
    raise UserError(f"no {RESULTS_JSON} under {path}: did that run finish? (re-run it to resume)")
  raise UserError(f"several {RESULTS_JSON} under {path} ({', '.join(sorted(found))}); pass one of them")


def load_results(path: str) -> dict:
  """Reads a results.json (or the one in a workdir) with a clear error on a bad file."""
  p = find_results_json(path)
  try:
    with open(p, encoding="utf-8") as f:
      res = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {p}: {e}") from None
  if not isinstance(res, dict) or "aggregate" not in res:
    raise UserError(f"{p} is not a mer_jax results.json (no 'aggregate' key)")
  return res


def write_ablation_table(
  out_dir: str, runs: Sequence[tuple[str, str]], *, title: str, missing_ok: bool = False
) -> dict:
  """Assembles one Tables 10-12 style table from several runs.

  runs: (row label, workdir or results.json path) pairs, in row order.
  missing_ok: skip runs without results.json (listed under the table) instead of failing.
  Writes ``out_dir/table.md`` and ``out_dir/table.json``; returns their paths.
  """
  rows, labels, missing, found = [], [], [], []
  for lab, p in runs:
    try:
      rows.append(load_results(p))
      labels.append(lab)
      found.append(os.path.dirname(find_results_json(p)))
    except UserError:
      if not missing_ok:
        raise
      missing.append((lab, p))
  if not rows:
    raise UserError(f"none of the runs for '{title}' has a {RESULTS_JSON} yet")
  md = [f"# {title}", "", table_markdown(rows, labels)]
  ci_lines = []
  for lab, r in zip(labels, rows):
    b = r.get("bootstrap", {}).get(MIXED)
    if b:
      ci_lines.append(
        f"| {_row_label(r, lab)} | [{_f4(b['uf1']['low'])}, {_f4(b['uf1']['high'])}] | "
        f"[{_f4(b['uar']['low'])}, {_f4(b['uar']['high'])}] |"
      )
  if ci_lines:
    md += (
      ["Bootstrap 95% CI over subjects (Mixed / whole set):", "", "| Method | UF1 CI | UAR CI |", "|---|---|---|"]
      + ci_lines
      + [""]
    )
  figs = []
  for lab, r, folder in zip(labels, rows, found):
    files = r.get("files") or {}
    fn = files.get("confusion_matrices") or files.get("confusion_mixed")
    if fn:
      figs.append(f"[{lab}]({os.path.relpath(os.path.join(folder, fn), out_dir)})")
  if figs:
    md += ["Confusion matrices (Figures 5/7 style): " + ", ".join(figs), ""]
  commits = sorted({str(r.get("git_commit")) for r in rows})
  md.append(
    f"Runs: {len(rows)}; git commit(s): {', '.join(commits)}; seeds: "
    f"{', '.join(sorted({str(r.get('seed')) for r in rows}))}."
  )
  if missing:
    md += ["", "Missing (not run or not finished): " + ", ".join(f"{name} ({path})" for name, path in missing)]
  os.makedirs(out_dir, exist_ok=True)
  md_path, js_path = os.path.join(out_dir, "table.md"), os.path.join(out_dir, "table.json")
  table = {
    "title": title,
    "rows": [
      {
        "label": lab,
        "test_fold_early_stopping": bool(r.get("test_fold_early_stopping")),
        "git_commit": r.get("git_commit"),
        "seed": r.get("seed"),
        "aggregate": {s: {m: a.get(m) for m in ("uar", "uf1", "accuracy")} for s, a in r["aggregate"].items()},
        "bootstrap": r.get("bootstrap"),
      }
      for lab, r in zip(labels, rows)
    ],
    "missing": [{"label": name, "path": path} for name, path in missing],
  }
  sweep_stale_temps([md_path, js_path])
  atomic_write_text(md_path, "\n".join(md) + "\n")
  _atomic_write_json(js_path, _jsonable(table))
  return {"table_md": md_path, "table_json": js_path}
