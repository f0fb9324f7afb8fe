"""What a dataset folder holds after reading and label mapping.

``python -m mer_jax.data.summary --dataset casme2 --root DIR --task 3class|5class
[--protocol paper|megc2019] [--skip-bad] [--json]`` prints per-class and per-subject
counts after mapping, and how many rows were read, mapped, excluded by the mapping
(per own label) and skipped (with the reasons). ``--json`` prints the same as one
object with keys ``per_class``, ``per_subject``, ``read``, ``mapped``, ``excluded``,
``excluded_labels``, ``skipped`` (a list of ``{"item", "reason"}``), ``class_names``,
``dataset``, ``task``, ``protocol``, ``not_in_official_list``.

With ``--protocol megc2019`` (3 classes, CASME II / SAMM / SMIC-HS) the official MEGC 2019 composite list
(:mod:`mer_jax.data.official`) decides which clips count and their labels, and the summary compares the copy
with the list: ``official_list`` = ``{listed, found, missing, extra, relabelled, comparable}``, where
``comparable`` is True only when the copy gives exactly the list, clip for clip and label for label.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional

from mer_jax.data import mappings, official, readers
from mer_jax.data.types import DISPLAY_NAMES
from mer_jax.errors import run_cli


def summarize(result: readers.ReadResult, dataset: str, task: str, protocol: str = "paper") -> dict:
  """Counts after mapping ``result`` (a reader's output) with (task, protocol)."""
  names = mappings.class_names(task, dataset, protocol)
  per_class = {n: 0 for n in names}
  per_subject: dict[str, int] = {}
  per_subject_class: dict[str, dict[str, int]] = {}
  excluded_labels: dict[str, int] = {}
  mapped = not_listed = 0
  for s in result.samples:
    idx, why = official.sample_class(s, task, protocol)
    if idx is None:
      if why == official.NOT_LISTED:
        not_listed += 1
      else:
        excluded_labels[s.label] = excluded_labels.get(s.label, 0) + 1
      continue
    mapped += 1
    per_class[names[idx]] += 1
    per_subject[s.subject] = per_subject.get(s.subject, 0) + 1
    psc = per_subject_class.setdefault(s.subject, {n: 0 for n in names})
    psc[names[idx]] += 1
  out = {
    "dataset": dataset,
    "task": task,
    "protocol": protocol,
    "class_names": list(names),
    "read": result.read,
    "mapped": mapped,
    "excluded": sum(excluded_labels.values()),
    "excluded_labels": dict(sorted(excluded_labels.items())),
    "not_in_official_list": not_listed,
    "skipped": [{"item": i, "reason": r} for i, r in result.skipped],
    "per_class": per_class,
    "per_subject": dict(sorted(per_subject.items())),
    "per_subject_class": dict(sorted(per_subject_class.items())),
  }
  if official.applies(dataset, task, protocol):
    out["official_list"] = official.compare(dataset, result.samples).to_dict()
  return out


def format_text(s: dict) -> str:
  lines = [
    f"{DISPLAY_NAMES.get(s['dataset'], s['dataset'])} ({s['task']}, protocol {s['protocol']})",
    f"  read {s['read']}, mapped {s['mapped']}, excluded {s['excluded']}, "
    + (f"not in the MEGC 2019 list {s['not_in_official_list']}, " if s.get("official_list") else "")
    + f"skipped {len(s['skipped'])}",
  ]
  if s["excluded_labels"]:
    lines.append("  excluded by the mapping: " + ", ".join(f"{k} {v}" for k, v in s["excluded_labels"].items()))
  if s.get("official_list"):
    cmp = official.Comparison(**{k: v for k, v in s["official_list"].items() if k != "comparable"})
    lines.append("  " + cmp.line())
    for what in ("missing", "relabelled", "extra"):
      if cmp.to_dict()[what]:
        lines.append(f"    {what}: " + ", ".join(cmp.to_dict()[what]))
  lines.append("  per class:")
  w = max(len(n) for n in s["class_names"])
  for n, c in s["per_class"].items():
    lines.append(f"    {n:<{w}}  {c}")
  lines.append("  per subject (" + " / ".join(s["class_names"]) + "):")
  for subj, total in s["per_subject"].items():
    by = s["per_subject_class"][subj]
    lines.append(f"    {subj or '(no subject)':<12} {total:>6}   " + " / ".join(str(by[n]) for n in s["class_names"]))
  if s["skipped"]:
    lines.append("  skipped:")
    for k in s["skipped"]:
      lines.append(f"    {k['item']}: {k['reason']}")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mer_jax.data.summary", description=__doc__.split("\n\n")[0])
  ap.add_argument("--dataset", required=True, choices=tuple(readers.READERS))
  ap.add_argument("--root", required=True, help="the dataset folder as unpacked")
  ap.add_argument("--task", default="3class", choices=mappings.TASKS)
  ap.add_argument("--protocol", default="paper", choices=mappings.PROTOCOLS)
  ap.add_argument("--skip-bad", action="store_true", help="count and report bad rows instead of failing")
  ap.add_argument("--json", action="store_true", help="print one JSON object")
  a = ap.parse_args(argv)
  mappings.class_names(a.task, a.dataset, a.protocol)  # ConfigError before any reading
  res = readers.read_dataset(a.dataset, a.root, skip_bad=a.skip_bad)
  s = summarize(res, a.dataset, a.task, a.protocol)
  print(json.dumps(s, indent=1) if a.json else format_text(s))
  return 0


if __name__ == "__main__":
  run_cli(main)
