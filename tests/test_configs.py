"""configs/*.py as data over one base, and mer_jax.configuration's one validation pass.

Each benchmark config is pinned field by field against the shared base (mer_jax/config_defaults.py): a config
may differ from the base only where listed here. The validation tests check the messages users see (the key,
the allowed values, the fix) and that command-line overrides are checked without absl's error text.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from mer_jax import config_defaults, configuration
from mer_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")

# The benchmark configs' EVM reading: the MIT IIR with the band read as per-frame rates (r2, r1) = (0.1, 0.4).
BENCHMARK_EVM = {"temporal_filter": "iir", "band_units": "mit_rates"}
MICRO3 = ("casme2", "samm", "smic")

# config -> every field that differs from get_base_config() (dotted key -> value).
EXPECTED = {
  "cde": {
    "name": "cde",
    "data.task": "3class",
    "data.micro": MICRO3,
    "data.protocol": "megc2019",
    "model.num_classes": 3,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
  "sde_casme2": {
    "name": "sde_casme2",
    "data.task": "5class",
    "data.micro": ("casme2",),
    "model.num_classes": 5,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
  "sde_samm": {
    "name": "sde_samm",
    "data.task": "5class",
    "data.micro": ("samm",),
    "model.num_classes": 5,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
  "sde_smic": {
    "name": "sde_smic",
    "data.task": "3class",
    "data.micro": ("smic",),
    "data.apex": "spot",
    "model.num_classes": 3,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
  "pretrain_macro": {
    "name": "pretrain_macro",
    "data.task": "3class",
    "data.micro": (),
    "model.num_classes": 3,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
  "synth_demo": {
    "name": "synth_demo",
    "data.synthetic": True,
    "data.task": "3class",
    "data.micro": MICRO3,
    "data.macro": ("ck", "rafdb", "fer2013"),
    "image_size": 48,
    "model.num_classes": 3,
    "model.stem_features": 8,
    "model.growth_rate": 8,
    "model.block_layers": (2, 2, 2),
    "model.head_pool": 3,
    "model.reduction": 4,
    "model.bn_momentum": 0.9,
    "pretrain.epochs": 15,
    "pretrain.plateau_patience": 4,
    "pretrain.early_stopping_patience": 6,
    "finetune.batch_size": 16,
    "finetune.epochs": 20,
    "finetune.plateau_patience": 4,
    "finetune.early_stopping_patience": 6,
    "finetune.parallel_folds": 0,
    "checkpoint_every_epochs": 5,
    "bootstrap_samples": 200,
    **{f"evm.{k}": v for k, v in BENCHMARK_EVM.items()},
  },
}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _config(name: str) -> ml_collections.ConfigDict:
  return importlib.import_module(f"configs.{name}").get_config()


# Spotting benchmark configs: each one's fields that differ from config_defaults.get_spot_bench_config("cas_long").
SPOT_EXPECTED = {
  "spot_cas_long": {},
  "spot_samm_lv": {"dataset": "samm_lv"},
  "spot_synth_demo": {"dataset": "both", "synth.enabled": True},
}


def test_every_config_file_is_pinned():
  files = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))
  assert files == sorted([*EXPECTED, *SPOT_EXPECTED])


@pytest.mark.parametrize("name", sorted(SPOT_EXPECTED))
def test_spotting_config_equals_its_base_except_its_listed_fields(name):
  from mer_jax import spot_bench
  from mer_jax.spotting import loso
  from mer_jax.spotting.spotter import SpotParams

  got = _flat(_config(name).to_dict())
  base = _flat(config_defaults.get_spot_bench_config("cas_long").to_dict())
  assert set(got) == set(base)
  want = {**base, **SPOT_EXPECTED[name]}
  assert {k: (v, want[k]) for k, v in got.items() if v != want[k] or type(v) is not type(want[k])} == {}
  # the base is the spotter's defaults and the LOSO module's grid, and it passes the benchmark's checks
  cfg = _config(name)
  if not cfg.synth.enabled:
    cfg.root = "/data/somewhere"
  params, space, counts = spot_bench.spot_settings(cfg)
  assert params == SpotParams()
  assert space == loso.SPOT_GRID and counts == tuple(loso.BASELINE_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_equals_the_base_except_its_listed_fields(name):
  got = _flat(_config(name).to_dict())
  base = _flat(config_defaults.get_base_config().to_dict())
  assert set(got) == set(base)  # the same schema: no field added or dropped
  want = {**base, **EXPECTED[name]}
  assert {k: (v, want[k]) for k, v in got.items() if v != want[k] or type(v) is not type(want[k])} == {}


def test_the_evm_reading_is_chosen_in_one_place(monkeypatch):
  """Switching BENCHMARK_EVM_READING switches every benchmark config (and nothing else)."""
  assert config_defaults.BENCHMARK_EVM_READING == "mit_rates"
  assert config_defaults.EVM_READINGS["mit_rates"] == BENCHMARK_EVM
  monkeypatch.setattr(config_defaults, "BENCHMARK_EVM_READING", "hz")
  for name in EXPECTED:
    got = _flat(_config(name).to_dict())
    assert (got["evm.band_units"], got["evm.temporal_filter"]) == ("hz", "butterworth"), name
    configuration.validate(_config(name))  # the other reading is a valid config too


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_validates(name):
  cfg = _config(name)
  assert configuration.validate(cfg) is cfg


# -------------------------------------------------------------------------------------------------------
# validate(): every enumerated field and range, one message format
# -------------------------------------------------------------------------------------------------------

ENUMERATED = {
  "model.backbone": ["dense", "residual"],
  "model.attention": ["none", "channel", "spatial", "mixed"],
  "model.attention_placement": ["block", "layer"],
  "model.dtype": ["float32", "bfloat16", "float64"],
  "model.conv_impl": ["auto", "xla", "cpu"],
  "evm.order": ["paper", "fast"],
  "evm.pyramid": ["laplacian", "gaussian"],
  "evm.temporal_filter": ["ideal", "butterworth", "iir"],
  "evm.band_units": ["hz", "mit_rates"],
  "evm.on_empty_band": ["error", "fallback"],
  "data.task": ["3class", "5class"],
  "data.protocol": ["paper", "megc2019"],
  "data.on_no_face": ["fallback", "error"],
  "data.apex": ["annotated", "spot", "middle"],
  "pretrain.task": ["3class"],
  "pretrain.optimizer": ["adam"],
  "finetune.optimizer": ["adam"],
}


def _set(cfg, dotted, value):
  *parents, leaf = dotted.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value


def test_every_enumerated_field_is_checked():
  assert {k.rstrip("[]") for k in configuration.choices()} == set(ENUMERATED) | {"data.micro", "data.macro"}


@pytest.mark.parametrize("key", sorted(ENUMERATED))
def test_bad_enumerated_value_names_key_values_and_fix(key):
  cfg = _config("cde")
  configuration.validate(cfg)
  _set(cfg, key, "nonsense")
  with pytest.raises(ConfigError) as e:
    configuration.validate(cfg)
  msg = str(e.value)
  assert msg.startswith(f"config.{key}='nonsense': use one of {ENUMERATED[key]}\n  -> ")
  default = _flat(config_defaults.get_base_config().to_dict())[key]
  assert f"e.g. --config.{key}={default} (the default)" in msg


@pytest.mark.parametrize(
  "key,bad,needle",
  [
    ("image_size", 0, "an integer >= 1"),
    ("model.num_classes", 1, "an integer >= 2"),
    ("model.block_layers", (), "a non-empty tuple"),
    ("model.block_layers", (5, 0, 10), "an integer >= 1 (item 0)"),
    ("model.compression", 0.0, "a number in (0, 1]"),
    ("model.compression", 1.5, "a number in (0, 1]"),
    ("model.bn_epsilon", 0.0, "a number > 0"),
    ("finetune.learning_rate", 0.0, "a number > 0"),
    ("pretrain.learning_rate", -1.0, "a number > 0"),
    ("finetune.plateau_factor", 0.0, "a number in (0, 1]"),
    ("finetune.val_fraction", 1.0, "a number in [0, 1)"),
    ("finetune.batch_size", 0, "an integer >= 1"),
    ("pretrain.epochs", 0, "an integer >= 1"),
    ("cpu_devices", -1, "an integer >= 0"),
    ("data.face_margin", -0.1, "a number >= 0"),
  ],
)
def test_out_of_range_value_names_key_and_range(key, bad, needle):
  cfg = _config("synth_demo")
  _set(cfg, key, bad)
  with pytest.raises(ConfigError, match=r"^config\." + key.replace(".", r"\.") + "=") as e:
    configuration.validate(cfg)
  assert needle in str(e.value)


def test_dataset_names_are_checked_item_by_item():
  cfg = _config("cde")
  cfg.data.micro = ("casme2", "smic_hs")
  with pytest.raises(
    ConfigError,
    match=r"config\.data\.micro=\('casme2', 'smic_hs'\): 'smic_hs' is not one of "
    r"\['casme2', 'samm', 'smic'\]",
  ):
    configuration.validate(cfg)


def test_evm_section_is_checked_when_enabled_only():
  cfg = _config("cde")
  cfg.evm.band_units, cfg.evm.temporal_filter = "mit_rates", "butterworth"  # a contradiction
  with pytest.raises(
    ConfigError,
    match=r"^config\.evm\.band_units='mit_rates' reads .* set "
    r"evm\.temporal_filter='iir'",
  ):
    configuration.validate(cfg)
  cfg.evm.enabled = False
  configuration.validate(cfg)


def test_build_model_reports_with_the_same_message():
  """The model's own check is the validation module's: one wording for one mistake."""
  from mer_jax.models import build_model

  cfg = _config("synth_demo")
  cfg.model.attention = "self"
  with pytest.raises(ConfigError) as from_validate:
    configuration.validate(cfg)
  with pytest.raises(ConfigError) as from_model:
    build_model(cfg.model)
  assert str(from_model.value) == str(from_validate.value)


# -------------------------------------------------------------------------------------------------------
# Overrides checked before absl (no parsing of absl's messages)
# -------------------------------------------------------------------------------------------------------


def test_unknown_key_with_suggestion():
  argv = ["--config=configs/cde.py", "--config.model.atention=none"]
  with pytest.raises(ConfigError) as e:
    configuration.check_overrides(argv)
  assert str(e.value).splitlines()[0] == "unknown config key '--config.model.atention' (Did you mean 'attention'?)"
  assert "mer_jax/config_defaults.py" in str(e.value)


@pytest.mark.parametrize(
  "arg,first_line",
  [
    ("--config.nosuchsection.x=1", "unknown config key '--config.nosuchsection.x'"),
    (
      "--config.model.attention.kind=x",
      "unknown config key '--config.model.attention.kind' ('model.attention' is a value, not a section)",
    ),
    (
      "--config.image_size=big",
      "wrong type for config key '--config.image_size': 'big' is not of type int (the field's type; default 112)",
    ),
    (
      "--config.evm.alpha=strong",
      "wrong type for config key '--config.evm.alpha': 'strong' is not of type float (the field's type; default 15.0)",
    ),
    (
      "--config.evm.enabled=maybe",
      "wrong type for config key '--config.evm.enabled': 'maybe' is not of type bool "
      "(true/false) (the field's type; default True)",
    ),
  ],
)
def test_bad_override_first_line(arg, first_line):
  with pytest.raises(ConfigError) as e:
    configuration.check_overrides(["--config=configs/cde.py", arg])
  assert str(e.value).splitlines()[0] == first_line


def test_good_overrides_parse_as_absl_would():
  base = _config("cde")
  got = configuration.apply_overrides(
    base,
    [
      "--config.model.attention=channel",
      "--config.evm.alpha=20",
      "--config.evm.enabled=false",
      "--noconfig.checkpoint_async",
      "--config.model.block_layers=(1, 2, 3)",
      "--config.data.micro=casme2",
      "--config.data.micro=samm",
      "--config.seed",
      "7",
    ],
  )
  assert (got.model.attention, got.evm.alpha, got.evm.enabled, got.checkpoint_async) == ("channel", 20.0, False, False)
  assert (got.model.block_layers, got.data.micro, got.seed) == ((1, 2, 3), ("casme2", "samm"), 7)
  assert base.model.attention == "mixed" and base.data.micro == MICRO3  # the input is not modified


def test_missing_config_file():
  with pytest.raises(
    ConfigError,
    match=r"^cannot read the config file configs/nope\.py\n  -> pass an existing "
    r"file, e.g\. --config=configs/cde\.py$",
  ):
    configuration.check_overrides(["--config", "configs/nope.py"])
  assert configuration.check_overrides(["--workdir=x"]) is None  # no --config: nothing to check here


def test_ablation_variants_are_valid_override_data():
  from experiments import ablation, evm_ablation

  base = config_defaults.get_base_config()
  for overrides in list(ablation.VARIANTS.values()) + [ov for _, ov in evm_ablation.VARIANTS]:
    assert isinstance(overrides, dict)
    configuration.apply_overrides(base, overrides)  # every key exists, every value fits
  ablation.check_variants("configs/synth_demo.py", list(ablation.VARIANTS), ["--config.finetune.epochs=2"])
  with pytest.raises(ConfigError, match=r"^variant 'attention-none': config\.model\.attention_kernel=0"):
    ablation.check_variants("configs/synth_demo.py", ["attention-none"], ["--config.model.attention_kernel=0"])


# -------------------------------------------------------------------------------------------------------
# Small ones: python -m mer_jax.evm --fps 0, docstrings of jitted functions
# -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["0", "-5", "nan"])
def test_evm_cli_rejects_a_non_positive_frame_rate(tmp_path, fps):
  from mer_jax import video_io

  clip = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
  video_io.write_clip(clip, tmp_path / "in")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "mer_jax.evm",
      "--input",
      str(tmp_path / "in"),
      "--output",
      str(tmp_path / "out"),
      f"--fps={fps}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=REPO,
    env=ENV,
  )
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  shown = f"{float(fps):g}"
  assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")] == [
    f"error: --fps={shown}: the frame rate must be a positive number of frames per second; "
    "pass --fps=<rate> (e.g. 200 for CASME II)"
  ]
  assert not os.path.exists(tmp_path / "out")


def test_jitted_entry_points_carry_their_own_docstrings():
  from mer_jax.evm import magnify, magnify_jit
  from mer_jax.train.state import jit_init

  assert "Args:" in magnify_jit.__doc__ and "Returns:" in magnify_jit.__doc__
  assert "Args:" in jit_init.__doc__ and "Returns:" in jit_init.__doc__
  assert magnify_jit.__wrapped__.__doc__ == magnify_jit.__doc__ != magnify.__doc__
