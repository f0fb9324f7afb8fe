"""Published micro-expression recognition results, kept as data (``published_results.csv`` beside this file).

One row per (method, benchmark): ``method, year, benchmark, uf1, uar, acc, uar_published, source, status,
selects_on_test, note``. Benchmarks: ``cde_full`` (MEGC 2019 composite), ``cde_casme2`` / ``cde_samm`` /
``cde_smic`` (its per-dataset parts), ``sde_casme2_5c``, ``sde_samm_5c``, ``sde_smic_3c`` (single-dataset LOSO,
Tables 7-9). Scores are fractions (``acc`` too); empty where the source gives none.

* ``uar`` holds a value only where it is right. STSTNet's published UAR values equal its macro-averaged
  precision; ``uar`` holds the UAR rescored from its released per-clip predictions (``python -m mer_jax.score``)
  and ``uar_published`` the printed value.
* ``selects_on_test``: ``yes`` where the method's public code picks each LOSO fold's epoch / model on the
  held-out subject (optimistic), ``no`` where it does not, empty where unknown.
* ``status``: ``read`` (seen in the paper or the repository's README) or ``secondary`` (a third party's table).
* The rows of the paper this project implements are under ``method == PAPER`` (Tables 5-9).

    rows = literature.published_results("cde_full")
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
from typing import Optional

FILE = "published_results.csv"
PAPER = "Gan et al. (this paper)"
BENCHMARKS = ("cde_full", "cde_casme2", "cde_samm", "cde_smic", "sde_casme2_5c", "sde_samm_5c", "sde_smic_3c")


@dataclasses.dataclass(frozen=True)
class Published:
  """One published figure set; None where the source gives no value."""

  method: str
  year: Optional[int]
  benchmark: str
  uf1: Optional[float]
  uar: Optional[float]
  acc: Optional[float]
  uar_published: Optional[float]
  source: str
  status: str
  selects_on_test: str
  note: str


def _num(v: str) -> Optional[float]:
  v = v.strip()
  return float(v) if v else None


@functools.cache
def _all() -> tuple[Published, ...]:
  path = importlib.resources.files(__name__).joinpath(FILE)
  with path.open(newline="", encoding="utf-8") as f:
    return tuple(
      Published(
        method=r["method"],
        year=int(r["year"]) if r["year"].strip() else None,
        benchmark=r["benchmark"],
        uf1=_num(r["uf1"]),
        uar=_num(r["uar"]),
        acc=_num(r["acc"]),
        uar_published=_num(r["uar_published"]),
        source=r["source"],
        status=r["status"],
        selects_on_test=r["selects_on_test"],
        note=r["note"],
      )
      for r in csv.DictReader(f)
    )


def published_results(benchmark: Optional[str] = None, *, include_paper: bool = True) -> tuple[Published, ...]:
  """The rows for ``benchmark`` (all when None), in file order; ``include_paper=False`` drops :data:`PAPER`."""
  return tuple(
    r for r in _all() if (benchmark is None or r.benchmark == benchmark) and (include_paper or r.method != PAPER)
  )


def paper_row(benchmark: str) -> Optional[Published]:
  """The paper's own figures for ``benchmark`` (Tables 5-9), or None."""
  rows = [r for r in _all() if r.benchmark == benchmark and r.method == PAPER]
  return rows[0] if rows else None
