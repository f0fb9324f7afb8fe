"""experiments/evm_ablation.py: the plan (skips, duplicates, shared pretraining) and the summary, without training."""

from __future__ import annotations

import json
import math
import os

import ml_collections
import pytest

from experiments import evm_ablation as ea
from mer_jax import config_defaults, reporting


def _config(with_order: bool):
  c = config_defaults.get_base_config()
  c.evm.temporal_filter = "butterworth"
  if with_order and "order" not in c.evm:
    c.evm.order = "fast"
  if not with_order and "order" in c.evm:
    del c.evm["order"]
  return c


def test_variants_needing_a_missing_field_are_skipped_with_a_note():
  run, alias, skipped = ea.plan_variants(_config(with_order=False))
  assert [n for n, _ in run] == ["no-evm", "hz", "mit-rates"]
  assert set(skipped) == {"hz-paper", "hz-fast", "mit-rates-paper", "mit-rates-fast"}
  assert all("evm.order do not exist" in why for why in skipped.values())
  assert alias == {}


def test_duplicate_settings_run_once():
  cfg = _config(with_order=True)
  default = cfg.evm.order
  run, alias, skipped = ea.plan_variants(cfg)
  assert skipped == {}
  # hz / mit-rates leave evm.order at its default: the same runs as the variants naming that order
  assert alias == {f"hz-{default}": "hz", f"mit-rates-{default}": "mit-rates"}
  assert [n for n, _ in run] == ["no-evm", "hz", "mit-rates"] + [
    n for n in ("hz-paper", "hz-fast", "mit-rates-paper", "mit-rates-fast") if not n.endswith(default)
  ]


def test_only_the_first_variant_pretrains_and_data_is_shared(tmp_path):
  wd = str(tmp_path)
  first = ea.command("py", "configs/synth_demo.py", wd, 3, "no-evm", {"evm.enabled": False}, None, [])
  other = ea.command(
    "py",
    "configs/synth_demo.py",
    wd,
    3,
    "mit-rates",
    {"evm.band_units": "mit_rates", "evm.temporal_filter": "iir"},
    "no-evm",
    ["--config.x=1"],
  )
  assert not any("pretrained_checkpoint" in a for a in first)
  assert f"--config.pretrained_checkpoint={os.path.join(wd, 'seed3', 'no-evm', 'pretrain')}" in other
  for cmd in (first, other):
    assert "--config.seed=3" in cmd
    assert f"--config.data.roots.smic={os.path.join(wd, 'seed3', 'synthme', 'smic')}" in cmd
    assert f"--config.data.cache_dir={os.path.join(wd, 'seed3', 'tfds')}" in cmd
  assert other[-3:] == ["--config.evm.temporal_filter=iir", other[-2], "--config.x=1"]


def test_summary_mean_and_sample_std_over_seeds(tmp_path):
  per_seed = {
    "a": {0: {"uf1": 0.5, "uar": 0.4, "accuracy": 0.6}, 1: {"uf1": 0.7, "uar": 0.6, "accuracy": 0.8}, 2: None},
    "b": {0: {"uf1": 0.3, "uar": 0.3, "accuracy": 0.3}},
  }
  s = ea.summarise(per_seed)
  assert s["a"]["uf1"][0] == pytest.approx(0.6) and s["a"]["uf1"][1] == pytest.approx(math.sqrt(0.02))
  assert s["a"]["uf1"][2] == 2
  assert s["b"]["uar"][2] == 1 and math.isnan(s["b"]["uar"][1])
  md = ea.table_markdown(
    ["a", "b", "c", "d"], s, {"c": "a"}, {"d": "field missing"}, {"a": "A", "b": "B", "c": "C", "d": "D"}, per_seed
  )
  assert "| a | A | 0.6000 +- 0.1414 |" in md
  assert "| c | C (same settings as a: its runs) | 0.6000 +- 0.1414 |" in md
  assert "| d | skipped: field missing |" in md
  assert "seed 2: missing" in md


def test_read_metrics_takes_the_whole_set(tmp_path):
  res = {"aggregate": {reporting.MIXED: {"uf1": 0.25, "uar": 0.5, "accuracy": 0.75}, "casme2": {"uf1": 1.0}}}
  (tmp_path / reporting.RESULTS_JSON).write_text(json.dumps(res))
  assert ea.read_metrics(str(tmp_path)) == {"uf1": 0.25, "uar": 0.5, "accuracy": 0.75}
  assert ea.read_metrics(str(tmp_path / "missing")) is None


def test_bad_arguments():
  with pytest.raises(SystemExit):
    ea.parse_args(["--workdir=x", "--amplitude", "0", "1"])
  with pytest.raises(SystemExit):
    ea.parse_args(["--workdir=x", "--not-a-config=1"])
  with pytest.raises(SystemExit, match="unknown variant"):
    ea.plan_variants(ml_collections.ConfigDict(_config(True)), only=["hz", "nope"])


def test_dry_run_plan_pretrains_once_per_seed(tmp_path, capsys):
  assert (
    ea.main(
      [
        f"--workdir={tmp_path}",
        "--seeds=0,1",
        "--variants=no-evm,hz,mit-rates",
        "--dry-run",
        "--config.finetune.epochs=1",
      ]
    )
    == 0
  )
  cmds = [ln for ln in capsys.readouterr().out.splitlines() if "mer_jax.main" in ln]
  assert len(cmds) == 6
  for seed in (0, 1):
    mine = [c for c in cmds if f"--config.seed={seed} " in c]
    pretrains = [c for c in mine if "pretrained_checkpoint" not in c]
    assert len(mine) == 3 and len(pretrains) == 1 and "--config.evm.enabled=False" in pretrains[0]
    want = f"--config.pretrained_checkpoint={os.path.join(str(tmp_path), f'seed{seed}', 'no-evm', 'pretrain')}"
    assert all(want in c for c in mine if c is not pretrains[0])
  assert all(c.endswith("--config.finetune.epochs=1") for c in cmds)
