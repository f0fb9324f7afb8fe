"""experiments/ablation.py: commands, skipping finished runs, table assembly (with a stand-in trainer)."""

import json
import os
import shlex
import stat
import sys

import pytest

from experiments import ablation
from mer_jax import config_defaults

# A stand-in for `python -m mer_jax.main`: records its argv and writes a results.json whose
# Mixed accuracy encodes the attention override, so the assembled table can be checked.
FAKE = r"""#!{python}
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\n")
if args.get("config.model.attention") == "spatial" and os.environ.get("FAKE_FAIL_SPATIAL"):
  sys.exit(3)
acc = {{"none": 0.5, "channel": 0.6, "spatial": 0.7}}.get(args.get("config.model.attention"), 0.9)
agg = {{s: {{"accuracy": acc, "uf1": acc - 0.01, "uar": acc - 0.02}} for s in ("Mixed", "casme2", "samm", "smic")}}
os.makedirs(args["workdir"], exist_ok=True)
json.dump({{"label": "x", "sources": ["casme2", "samm", "smic"], "aggregate": agg, "seed": 0,
           "git_commit": "f", "test_fold_early_stopping": False, "bootstrap": {{}}}},
          open(os.path.join(args["workdir"], "results.json"), "w"))
"""


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
  path = tmp_path / "fake_python"
  path.write_text(FAKE.format(python=sys.executable))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  log = tmp_path / "calls.jsonl"
  monkeypatch.setenv("FAKE_LOG", str(log))
  return str(path), log


def _calls(log):
  return [json.loads(ln) for ln in _read(log).splitlines()] if os.path.exists(log) else []


def test_dry_run_prints_valid_override_commands(capsys, tmp_path):
  root = str(tmp_path / "abl")
  assert (
    ablation.main(["--workdir", root, "--config=configs/synth_demo.py", "--dry-run", "--config.finetune.epochs=2"]) == 0
  )
  out = capsys.readouterr().out
  cmds = [shlex.split(ln) for ln in out.splitlines() if not ln.startswith("#")]
  assert len(cmds) == len(ablation.VARIANTS)
  base = config_defaults.get_base_config()
  workdirs = set()
  for cmd in cmds:
    assert cmd[1:3] == ["-m", "mer_jax.main"] and "--config=configs/synth_demo.py" in cmd
    assert cmd[-1] == "--config.finetune.epochs=2"  # extra overrides reach every run
    workdirs.add(next(a for a in cmd if a.startswith("--workdir=")))
    for a in cmd:
      if a.startswith("--config."):
        key, value = a[len("--config.") :].split("=", 1)
        node = base
        for part in key.split(".")[:-1]:
          node = node[part]
        assert key.split(".")[-1] in node, f"{key} is not a config field"  # schema drift guard
  assert len(workdirs) == len(cmds)  # sibling workdirs, one per variant
  assert not os.path.exists(root)  # a dry run creates nothing
  assert "table11_attention_kinds/table.md" in out and "Spatial attention only <- " in out
  evm = next(c for c in cmds if "--config.evm.enabled=False" in c)
  assert f"--config.pretrained_checkpoint={os.path.join(root, 'proposed', 'pretrain')}" in evm


def test_runs_variants_skips_finished_and_assembles_tables(fake_python, tmp_path):
  python, log = fake_python
  root = str(tmp_path / "abl")
  assert ablation.main(["--workdir", root, "--sets", "attention", "--python", python]) == 0
  calls = _calls(log)
  assert len(calls) == 4  # proposed + none/channel/spatial
  assert calls[0][3] == f"--workdir={os.path.join(root, 'proposed')}"  # the baseline runs first
  table = _read(os.path.join(root, "table11_attention_kinds", "table.md"))
  rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "Method" not in ln and "CI" not in ln]
  assert [r.split(" | ")[0][2:] for r in rows] == [
    "No attention",
    "Channel attention only",
    "Spatial attention only",
    "Mixed attention (proposed)",
  ]
  assert [r.split(" | ")[3] for r in rows] == ["50.00", "60.00", "70.00", "90.00"]  # Mixed Acc (%)
  assert "w/o Attention" in _read(os.path.join(root, "ablation.md"))
  # Again: every run is finished, nothing starts.
  assert ablation.main(["--workdir", root, "--sets", "attention", "--python", python]) == 0
  assert len(_calls(log)) == 4


def test_failed_run_stops_or_is_listed_missing(fake_python, tmp_path, monkeypatch, capsys):
  python, log = fake_python
  monkeypatch.setenv("FAKE_FAIL_SPATIAL", "1")
  root = str(tmp_path / "abl")
  assert ablation.main(["--workdir", root, "--sets", "attention", "--python", python]) == 1
  assert "variant 'attention-spatial' failed" in capsys.readouterr().err
  assert ablation.main(["--workdir", root, "--sets", "attention", "--python", python, "--keep-going"]) == 1
  table = _read(os.path.join(root, "table11_attention_kinds", "table.md"))
  assert "Missing (not run or not finished): Spatial attention only" in table
  with pytest.raises(SystemExit):
    ablation.main(["--workdir", root, "--sets", "nonsense", "--dry-run"])
