"""MEGC 2019 composite scorer for anyone's predictions.

  python -m mer_jax.score PREDICTIONS [--truth LIST] [--allow-missing] [--json] [--plots DIR]

PREDICTIONS is one of

* a CSV ``dataset,subject,clip,prediction`` (header optional; prediction a class name ``negative`` /
  ``positive`` / ``surprise`` or its index 0 / 1 / 2; dataset ``casme2`` / ``samm`` / ``smic``, also spelt
  ``CASME II``, ``SMIC-HS``, ...);
* a mer_jax ``results.json`` (or the benchmark workdir holding it): the per-fold predictions it stores;
* a mer_jax LOSO ``finetune/predictions.json`` (``clip_ids``, ``subjects``, ``sources``, ``y_pred``).

LIST is the ground truth: by default the official MEGC 2019 composite list shipped with mer_jax
(:func:`mer_jax.data.official.megc2019_composite`, 442 clips), or any CSV ``dataset,subject,clip,label``.
Names are matched in the list's spelling (:func:`mer_jax.data.official.megc_key`: SAMM ``006`` -> ``6``,
SMIC-HS ``s1_ne_01`` -> ``s01_ne_01``).

Scores, as MEGC 2019 defines them: ONE confusion matrix over all clips (all LOSO folds pooled), UF1 = mean
per-class F1, UAR = mean per-class recall (:mod:`mer_jax.metrics`, the package's only implementation); per
dataset from that dataset's rows only. Printed as text (tables, per-class recall / F1, confusion matrices), or
as JSON with ``--json``; ``--plots DIR`` writes the row-normalised confusion matrices as PNGs.

Every prediction must match a ground-truth clip, once; every ground-truth clip needs a prediction unless
``--allow-missing`` (then the clips present are scored and the count of missing ones is reported). Bad input
ends in one ``error:`` line naming the file and row, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from mer_jax import metrics
from mer_jax.data import official
from mer_jax.data.mappings import THREE_CLASSES
from mer_jax.data.types import DISPLAY_NAMES
from mer_jax.errors import DataError, run_cli

COMPOSITE = "composite"
OFFICIAL = "official MEGC 2019 composite list"
DATASET_ALIASES = {
  "casme2": "casme2",
  "casmeii": "casme2",
  "casme_ii": "casme2",
  "casme ii": "casme2",
  "casme-ii": "casme2",
  "casme_2": "casme2",
  "samm": "samm",
  "smic": "smic",
  "smic-hs": "smic",
  "smic_hs": "smic",
  "smichs": "smic",
  "smic hs": "smic",
}


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One predicted clip: key in the list's spelling, class index (THREE_CLASSES order), where it was read."""

  key: tuple[str, str, str]
  label: int
  where: str
  truth: Optional[int] = None  # the true label the file itself records (mer_jax JSON), checked against the list


def _dataset(name: str, where: str) -> str:
  d = DATASET_ALIASES.get(str(name).strip().lower())
  if d is None:
    raise DataError(f"{where}: unknown dataset {name!r}; expected one of casme2, samm, smic")
  return d


def _label(value: Any, where: str, class_names: Sequence[str] = THREE_CLASSES) -> int:
  """A class name or index -> index into THREE_CLASSES (``class_names`` maps an index to its name first)."""
  v = str(value).strip().lower()
  named = ""
  if v.lstrip("-").isdigit():
    i = int(v)
    if 0 <= i < len(class_names):
      v = str(class_names[i]).lower()
      named = f" ({v!r} in the file's classes)" if v not in THREE_CLASSES else ""
  if v in THREE_CLASSES:
    return THREE_CLASSES.index(v)
  raise DataError(
    f"{where}: unknown label {value!r}{named}; expected 0/1/2 or one of {', '.join(THREE_CLASSES)} "
    "(the MEGC 2019 composite task)"
  )


def _key(dataset: str, subject: str, clip: str, where: str) -> tuple[str, str, str]:
  d = _dataset(dataset, where)
  subject = str(subject)
  if subject.lower().startswith(d + "/"):  # mer_jax subjects are dataset-prefixed: casme2/sub01
    subject = subject[len(d) + 1 :]
  return official.megc_key(d, subject, str(clip))


# ---------------------------------------------------------------------------------------------
# Reading predictions
# ---------------------------------------------------------------------------------------------


def read_predictions(path: str) -> list[Prediction]:
  """The predictions in ``path`` (CSV, results.json or its workdir, LOSO predictions.json), in file order.

  Raises DataError naming the file and row (or fold) for an unreadable file, a malformed row, an unknown
  dataset or label.
  """
  if os.path.isdir(path):
    from mer_jax import reporting

    path = reporting.find_results_json(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read the predictions {path}: {getattr(e, 'strerror', None) or e}") from None
  if path.lower().endswith(".json") or text.lstrip().startswith("{"):
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return _from_json(path, obj)
  return _from_csv(path, text)


def _from_csv(path: str, text: str) -> list[Prediction]:
  out = []
  for n, row in enumerate(csv.reader(text.splitlines()), start=1):
    if not row or all(not c.strip() for c in row):
      continue
    where = f"{path}, row {n}"
    if n == 1 and [c.strip().lower() for c in row[:3]] == ["dataset", "subject", "clip"]:
      continue  # a header row
    if len(row) != 4:
      raise DataError(f"{where}: expected 4 columns dataset,subject,clip,prediction, got {len(row)}: {row}")
    out.append(Prediction(_key(row[0], row[1].strip(), row[2].strip(), where), _label(row[3], where), where))
  if not out:
    raise DataError(f"the predictions file {path} has no rows")
  return out


def _from_json(path: str, obj: Any) -> list[Prediction]:
  if isinstance(obj, Mapping) and isinstance(obj.get("folds"), list):  # results.json
    names = obj.get("class_names") or THREE_CLASSES
    out = []
    for i, f in enumerate(obj["folds"]):
      try:
        clips, sources, preds, subject = f["clip_ids"], f["clip_sources"], f["y_pred"], f["subject"]
      except (KeyError, TypeError):
        raise DataError(
          f"{path}, fold {i}: lacks clip_ids / clip_sources / y_pred / subject; is it a mer_jax results.json?"
        ) from None
      for j, (c, s, p) in enumerate(zip(clips, sources, preds)):
        where = f"{path}, fold {i} ({subject}), clip {j} ({c})"
        truth = _label(f["y_true"][j], where, names) if "y_true" in f else None
        out.append(Prediction(_key(s, subject, c, where), _label(p, where, names), where, truth))
    return out
  if isinstance(obj, Mapping) and {"clip_ids", "subjects", "sources", "y_pred"} <= set(obj):  # predictions.json
    n = len(obj["clip_ids"])
    bad = [k for k in ("subjects", "sources", "y_pred") if len(obj[k]) != n]
    if bad:
      raise DataError(f"{path}: clip_ids has {n} entries but {', '.join(bad)} differ in length")
    names = obj.get("class_names") or THREE_CLASSES
    truths = obj.get("y_true") or [None] * n
    return [
      Prediction(
        _key(s, subj, c, w := f"{path}, entry {j} ({c})"),
        _label(p, w, names),
        w,
        None if t is None else _label(t, w, names),
      )
      for j, (c, subj, s, p, t) in enumerate(
        zip(obj["clip_ids"], obj["subjects"], obj["sources"], obj["y_pred"], truths)
      )
    ]
  raise DataError(
    f"{path}: JSON that is neither a mer_jax results.json (key 'folds') nor a LOSO predictions.json "
    "(keys clip_ids, subjects, sources, y_pred); or give a CSV dataset,subject,clip,prediction"
  )


# ---------------------------------------------------------------------------------------------
# Matching and scoring
# ---------------------------------------------------------------------------------------------


def read_truth(path: Optional[str] = None) -> tuple[tuple[official.OfficialClip, ...], str]:
  """(rows, name): the official composite list (``path`` None) or the CSV ``path``."""
  if path is None:
    return official.megc2019_composite(), OFFICIAL
  return official.read_list(path), path


def match(
  truth: Sequence[official.OfficialClip], preds: Sequence[Prediction], truth_name: str, *, allow_missing: bool = False
) -> dict:
  """Pairs every prediction with its ground-truth clip.

  Returns {"y_true" [n], "y_pred" [n], "datasets" [n], "keys", "missing": [keys]} in ground-truth order.
  Raises DataError for a repeated prediction key, a key not in the ground truth, a true label recorded in the
  predictions file (mer_jax JSON) that differs from the ground truth's, or (unless
  ``allow_missing``) a ground-truth clip without a prediction.
  """
  index = {c.key: c for c in truth}
  seen: dict[tuple[str, str, str], Prediction] = {}
  for p in preds:
    if p.key in seen:
      raise DataError(f"{p.where}: {'/'.join(p.key)} is predicted twice (first at {seen[p.key].where})")
    if p.key not in index:
      raise DataError(
        f"{p.where}: {'/'.join(p.key)} is not in the ground truth ({truth_name}); check the "
        "dataset / subject / clip names (SAMM 006 -> 6, SMIC-HS s1 -> s01 are mapped)"
      )
    if p.truth is not None and p.truth != index[p.key].label:
      raise DataError(
        f"{p.where}: {'/'.join(p.key)} is {THREE_CLASSES[p.truth]} in that file but "
        f"{THREE_CLASSES[index[p.key].label]} in the ground truth ({truth_name}); the run used other "
        "labels than the list (data.protocol=megc2019 uses the list's)"
      )
    seen[p.key] = p
  missing = [c.key for c in truth if c.key not in seen]
  if missing and not allow_missing:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise DataError(
      f"{'/'.join(missing[0])} (ground truth {truth_name}){more} {'have' if more else 'has'} no "
      f"prediction in "
      f"{preds[0].where.split(', ')[0] if preds else 'the predictions'}; pass --allow-missing to "
      "score the clips that are there"
    )
  rows = [c for c in truth if c.key in seen]
  return {
    "y_true": np.asarray([c.label for c in rows], np.int64),
    "y_pred": np.asarray([seen[c.key].label for c in rows], np.int64),
    "datasets": np.asarray([c.dataset for c in rows], dtype=object),
    "keys": [c.key for c in rows],
    "missing": missing,
  }


def score(y_true: np.ndarray, y_pred: np.ndarray, datasets: np.ndarray) -> dict:
  """{"composite": scores, <dataset>: scores}; scores = :func:`mer_jax.metrics.from_confusion` of the pooled
  confusion matrix of those rows (accuracy, uf1, uar, per-class recall / F1 / precision, confusion, support)."""
  k = len(THREE_CLASSES)
  by = metrics.by_source(y_true, y_pred, np.asarray(datasets).astype(str), k)
  out = {COMPOSITE: by.pop("Mixed")}
  out.update(by)
  return out


def evaluate(predictions: str, truth: Optional[str] = None, *, allow_missing: bool = False) -> dict:
  """Reads, matches and scores; the dict ``--json`` prints."""
  rows, truth_name = read_truth(truth)
  preds = read_predictions(predictions)
  m = match(rows, preds, truth_name, allow_missing=allow_missing)
  return {
    "predictions": predictions,
    "truth": truth_name,
    "class_names": list(THREE_CLASSES),
    "num_truth": len(rows),
    "num_scored": int(len(m["y_true"])),
    "num_missing": len(m["missing"]),
    "missing": ["/".join(k) for k in m["missing"]],
    "scores": score(m["y_true"], m["y_pred"], m["datasets"]),
  }


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _name(key: str) -> str:
  return "Composite" if key == COMPOSITE else DISPLAY_NAMES.get(key, key)


def format_text(res: Mapping[str, Any]) -> str:
  names = res["class_names"]
  missing = (
    f"; {res['num_missing']} ground-truth clips have no prediction and are NOT scored (--allow-missing)"
    if res["num_missing"]
    else ""
  )
  lines = [
    f"predictions: {res['predictions']}",
    f"ground truth: {res['truth']} ({res['num_truth']} clips)",
    f"scored: {res['num_scored']} clips{missing}",
    "",
    f"{'':<10} {'n':>5} {'UF1':>7} {'UAR':>7} {'Acc':>7}",
  ]
  for key, s in res["scores"].items():
    lines.append(f"{_name(key):<10} {s['num_samples']:>5} {s['uf1']:>7.4f} {s['uar']:>7.4f} {s['accuracy']:>7.4f}")
  width = max(len(n) for n in names) + 2
  for key, s in res["scores"].items():
    lines += ["", f"{_name(key)}: per class (recall / F1 / support), confusion (rows true, columns predicted)"]
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in names) + f"{'recall':>9}{'F1':>9}{'n':>6}")
    for i, n in enumerate(names):
      row = s["confusion"][i]
      lines.append(
        f"{n:<{width}}"
        + "".join(f"{v:>{width}}" for v in row)
        + f"{s['per_class_recall'][i]:>9.4f}{s['per_class_f1'][i]:>9.4f}{s['support'][i]:>6}"
      )
  return "\n".join(lines)


def write_plots(res: Mapping[str, Any], folder: str) -> list[str]:
  """confusion_<key>.png per entry and confusion_matrices.png (all side by side) into ``folder``."""
  from mer_jax import reporting

  os.makedirs(folder, exist_ok=True)
  names = res["class_names"]
  paths = []
  for key, s in res["scores"].items():
    paths.append(
      reporting.plot_confusion(
        os.path.join(folder, f"confusion_{key}.png"), np.asarray(s["confusion"]), names, _name(key)
      )
    )
  if len(res["scores"]) > 1:
    paths.append(
      reporting.plot_confusion_panel(
        os.path.join(folder, "confusion_matrices.png"),
        [(_name(k), np.asarray(s["confusion"])) for k, s in res["scores"].items()],
        names,
      )
    )
  return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.score", description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "predictions",
    help="CSV dataset,subject,clip,prediction; a results.json (or its workdir); or a LOSO predictions.json",
  )
  ap.add_argument(
    "--truth",
    default=None,
    help="ground-truth CSV dataset,subject,clip,label (default: the official MEGC 2019 composite list)",
  )
  ap.add_argument("--allow-missing", action="store_true", help="score the clips that have a prediction")
  ap.add_argument("--json", action="store_true", help="print JSON instead of text")
  ap.add_argument("--plots", default=None, metavar="DIR", help="write confusion-matrix PNGs into DIR")
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  res = evaluate(args.predictions, args.truth, allow_missing=args.allow_missing)
  if args.plots:
    res["plots"] = write_plots(res, args.plots)
  if args.json:
    from mer_jax.reporting import _jsonable

    print(json.dumps(_jsonable(res), indent=2))
  else:
    print(format_text(res))
    if args.plots:
      print("\nplots: " + ", ".join(res["plots"]))
  if res["num_missing"]:
    print(
      f"note: {res['num_missing']} of {res['num_truth']} ground-truth clips have no prediction and were not scored",
      file=sys.stderr,
    )
  return 0


if __name__ == "__main__":
  run_cli(main)
