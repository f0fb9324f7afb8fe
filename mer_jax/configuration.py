"""Config loading and validation for the command-line entry points.

Configs are ml-collections files (``configs/*.py``) read with absl's ``config_flags``; any field is
overridable as ``--config.model.attention=channel``. Three steps turn user mistakes into one readable
``error:`` line (exit code 2) instead of a traceback:

1. :func:`run_app` checks the ``--config`` file and every ``--config.<path>=<value>`` override itself
   before absl sees the command line (:func:`check_overrides`): a missing file, an unknown key (with a
   difflib suggestion) and a value that does not parse as the field's type are reported here, so the
   messages do not depend on absl's wording;
2. absl loads the config and applies the overrides;
3. each entry point calls :func:`validate` on the loaded config: every enumerated field and value range,
   checked once (:data:`CHOICES`, :data:`RANGES`; the ``evm`` section by
   :func:`mer_jax.evm.options_from_config`).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import numbers
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections.config_flags import tuple_parser

from mer_jax.errors import ConfigError

DEFAULTS_FILE = "mer_jax/config_defaults.py"
SPELLING_HINT = f"check the key's spelling against {DEFAULTS_FILE} (every valid field is listed there)"
ATTENTION_PLACEMENTS = ("block", "layer")  # model.attention_placement (mer_jax.models.backbones)
OPTIMIZERS = ("adam",)  # <section>.optimizer: Adam only (Section 4.2)
MACRO_TASKS = ("3class",)  # pretrain.task: the macro sets map to 3 classes only (Table 2)
TRAIN_SECTIONS = ("pretrain", "finetune")


def require_config(config: ml_collections.ConfigDict | None, flag: str = "--config") -> ml_collections.ConfigDict:
  """Returns ``config`` or raises :class:`ConfigError` telling the user to pass ``flag``."""
  if config is None:
    raise ConfigError(f"{flag} is required, e.g. {flag}=configs/sde_casme2.py")
  return config


# ---------------------------------------------------------------------------------------------------------
# The allowed values, as data
# ---------------------------------------------------------------------------------------------------------


def _model_choices() -> dict[str, tuple]:
  from mer_jax.models.attention import ATTENTION_KINDS
  from mer_jax.models.conv import CONV_IMPLS
  from mer_jax.models.network import BACKBONES, DTYPES

  return {
    "model.backbone": tuple(BACKBONES),
    "model.attention": tuple(ATTENTION_KINDS),
    "model.attention_placement": ATTENTION_PLACEMENTS,
    "model.dtype": tuple(DTYPES),
    "model.conv_impl": CONV_IMPLS,
  }


def _evm_choices() -> dict[str, tuple]:
  from mer_jax.data.preprocess import ORDERS
  from mer_jax.evm import filters
  from mer_jax.evm.magnify import BAND_UNITS, ON_EMPTY_BAND, PYRAMIDS

  return {
    "evm.order": tuple(ORDERS),
    "evm.pyramid": tuple(PYRAMIDS),
    "evm.temporal_filter": tuple(filters.FILTERS),
    "evm.band_units": tuple(BAND_UNITS),
    "evm.on_empty_band": tuple(ON_EMPTY_BAND),
  }


def _data_choices() -> dict[str, tuple]:
  from mer_jax.data.apex import APEX_MODES
  from mer_jax.data.face import NO_FACE_POLICIES
  from mer_jax.data.mappings import PROTOCOLS, TASKS
  from mer_jax.data.types import MACRO_DATASETS, MICRO_DATASETS

  return {
    "data.task": tuple(TASKS),
    "data.protocol": tuple(PROTOCOLS),
    "data.on_no_face": tuple(NO_FACE_POLICIES),
    "data.apex": tuple(APEX_MODES),
    "data.micro[]": tuple(MICRO_DATASETS),
    "data.macro[]": tuple(MACRO_DATASETS),
  }


def _train_choices() -> dict[str, tuple]:
  out = {"pretrain.task": MACRO_TASKS}
  out.update({f"{s}.optimizer": OPTIMIZERS for s in TRAIN_SECTIONS})
  return out


# Section -> its enumerated fields (loaded on use: the values come from the modules that implement them).
_CHOICES: dict[str, Callable[[], dict[str, tuple]]] = {
  "model": _model_choices,
  "evm": _evm_choices,
  "data": _data_choices,
  "pretrain": _train_choices,
  "finetune": _train_choices,
}


def choices(prefix: str = "") -> dict[str, tuple]:
  """Enumerated fields: dotted key -> allowed values, all of them or those under ``prefix`` (e.g. "model").

  Keys ending in ``[]`` hold sequences whose every item must be one of the values.
  """
  out: dict[str, tuple] = {}
  for section, load in _CHOICES.items():
    if not prefix or prefix == section:
      out.update({k: v for k, v in load().items() if not prefix or k.startswith(f"{prefix}.")})
  return out


# Value ranges: dotted key -> (kind, low, high, low inclusive, high inclusive); kind "int" or "number";
# None: unbounded. Keys ending in "[]" apply to every item of a sequence.
_INT, _NUM = "int", "number"
RANGES: dict[str, tuple[str, Optional[float], Optional[float], bool, bool]] = {
  "image_size": (_INT, 1, None, True, False),
  "channels": (_INT, 1, None, True, False),
  "cpu_devices": (_INT, 0, None, True, False),
  "log_every_steps": (_INT, 0, None, True, False),
  "checkpoint_every_epochs": (_INT, 1, None, True, False),
  "bootstrap_samples": (_INT, 0, None, True, False),
  "model.num_classes": (_INT, 2, None, True, False),
  "model.stem_features": (_INT, 1, None, True, False),
  "model.growth_rate": (_INT, 1, None, True, False),
  "model.block_layers[]": (_INT, 1, None, True, False),
  "model.compression": (_NUM, 0, 1, False, True),
  "model.kernel_size": (_INT, 1, None, True, False),
  "model.reduction": (_INT, 1, None, True, False),
  "model.attention_kernel": (_INT, 1, None, True, False),
  "model.leaky_slope": (_NUM, 0, None, True, False),
  "model.head_pool": (_INT, 1, None, True, False),
  "model.residual_bottleneck": (_INT, 1, None, True, False),
  "model.bn_momentum": (_NUM, 0, 1, True, True),
  "model.bn_epsilon": (_NUM, 0, None, False, False),
  "data.face_margin": (_NUM, 0, None, True, False),
  "data.synth_subjects_per_dataset": (_INT, 0, None, True, False),
  "data.synth_clips_per_subject": (_INT, 0, None, True, False),
  "data.synth_macro_images": (_INT, 0, None, True, False),
  "finetune.parallel_folds": (_INT, 0, None, True, False),
}
for _s in TRAIN_SECTIONS:
  RANGES.update(
    {
      f"{_s}.batch_size": (_INT, 1, None, True, False),
      f"{_s}.epochs": (_INT, 1, None, True, False),
      f"{_s}.learning_rate": (_NUM, 0, None, False, False),
      f"{_s}.plateau_factor": (_NUM, 0, 1, False, True),
      f"{_s}.plateau_patience": (_INT, 0, None, True, False),
      f"{_s}.early_stopping_patience": (_INT, 0, None, True, False),
      f"{_s}.val_fraction": (_NUM, 0, 1, True, False),
    }
  )
del _s


def _range_text(kind: str, lo, hi, lo_inc: bool, hi_inc: bool) -> str:
  what = "an integer" if kind == _INT else "a number"
  if lo is not None and hi is not None:
    return f"{what} in {'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"
  if lo is not None:
    return f"{what} {'>=' if lo_inc else '>'} {lo:g}"
  if hi is not None:
    return f"{what} {'<=' if hi_inc else '<'} {hi:g}"
  return what


def _in_range(value: Any, kind: str, lo, hi, lo_inc: bool, hi_inc: bool) -> bool:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  if kind == _INT and not isinstance(value, numbers.Integral):
    return False
  if lo is not None and not (value >= lo if lo_inc else value > lo):
    return False
  if hi is not None and not (value <= hi if hi_inc else value < hi):
    return False
  return True


def _lookup(config, dotted: str) -> tuple[bool, Any]:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False, None
    node = node[part]
  return True, node


def _bad_value(key: str, value: Any, allowed: str, fix: str) -> ConfigError:
  return ConfigError(f"config.{key}={value!r}: {allowed}\n  -> {fix}")


def _fix(key: str, example: Any) -> str:
  """The fix: the override syntax with the field's default (``example`` for fields the defaults lack)."""
  from mer_jax import config_defaults

  found, default = _lookup(config_defaults.get_base_config(), key)
  if found:
    example = f'"{tuple(default)!r}"' if isinstance(default, (tuple, list)) else default
  return (
    f"set it in the config file or override it, e.g. --config.{key}={example}"
    f"{' (the default)' if found else ''}; the fields and their meaning: {DEFAULTS_FILE}"
  )


def check_section(section: Mapping, prefix: str, *, ranges: bool = True) -> None:
  """Checks the enumerated fields and ranges under ``prefix`` (e.g. "model") of one config section.

  Args:
    section: the ``config.<prefix>`` ConfigDict (or mapping); the whole config for ``prefix=""``.
    prefix: its key in the full config; fields absent from ``section`` are not checked.
    ranges: also check the value ranges (:data:`RANGES`), not only the enumerated fields.

  Raises:
    ConfigError: naming ``config.<prefix>.<field>``, its value, the allowed values and the fix.
  """
  wrapper = {prefix: section} if prefix else section
  for key, allowed in choices(prefix).items():
    seq = key.endswith("[]")
    dotted = key[:-2] if seq else key
    found, value = _lookup(wrapper, dotted)
    if not found:
      continue
    items = tuple(value) if seq and isinstance(value, (tuple, list)) else None
    if seq and items is None:
      raise _bad_value(
        dotted, value, f"expected a tuple of names from {list(allowed)}", _fix(dotted, f'"({allowed[0]!r},)"')
      )
    bad = [v for v in items if v not in allowed] if seq else ([] if value in allowed else [value])
    if bad:
      what = f"{bad[0]!r} is not one of {list(allowed)}" if seq else f"use one of {list(allowed)}"
      raise _bad_value(dotted, value, what, _fix(dotted, allowed[0]))
  for key, (kind, lo, hi, lo_inc, hi_inc) in RANGES.items() if ranges else ():
    if prefix and not key.startswith(f"{prefix}."):
      continue
    seq = key.endswith("[]")
    dotted = key[:-2] if seq else key
    found, value = _lookup(wrapper, dotted)
    if not found:
      continue
    values = tuple(value) if seq and isinstance(value, (tuple, list)) else (value,)
    if seq and (not isinstance(value, (tuple, list)) or not value):
      each = _range_text(kind, lo, hi, lo_inc, hi_inc)
      raise _bad_value(dotted, value, f"expected a non-empty tuple, each item {each}", _fix(dotted, '"(5, 10, 10)"'))
    for v in values:
      if not _in_range(v, kind, lo, hi, lo_inc, hi_inc):
        what = _range_text(kind, lo, hi, lo_inc, hi_inc)
        example = lo if lo is not None and lo_inc else hi if hi is not None and hi_inc else 1
        raise _bad_value(dotted, value, f"expected {what}" + (f" (item {v!r})" if seq else ""), _fix(dotted, example))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every enumerated field and value range of a loaded config once, at start-up.

  The allowed values come from :func:`choices` and :data:`RANGES`; the ``evm`` section (types, band,
  the ``band_units`` / ``temporal_filter`` combination) from :func:`mer_jax.evm.options_from_config`,
  which :func:`mer_jax.evm.magnify_from_config` runs on every clip as well.

  Args:
    config: a full config (:func:`mer_jax.config_defaults.get_base_config` schema).

  Returns:
    ``config`` itself, unchanged.

  Raises:
    ConfigError: for the first bad field, naming it (``config.model.attention='x'``), the allowed values
      and the fix.
  """
  check_section(config, "")
  if "evm" in config and config.evm.get("enabled", True):
    from mer_jax.evm import options_from_config

    try:
      options_from_config(config.evm)
    except ConfigError as e:
      raise ConfigError(
        f"config.{e}\n  -> set it in the config file or override it (--config.evm.<field>=...); "
        f"the fields: {DEFAULTS_FILE}, the band readings: docs/evm.md"
      ) from None
  return config


# ---------------------------------------------------------------------------------------------------------
# Command-line overrides, checked before absl parses them
# ---------------------------------------------------------------------------------------------------------

_BOOL = flags.BooleanParser()
_PARSERS: dict[type, tuple[str, Callable[[str], Any]]] = {
  bool: ("bool (true/false)", _BOOL.parse),
  int: ("int", flags.IntegerParser().parse),
  float: ("float", flags.FloatParser().parse),
  tuple: ("tuple, e.g. '(1, 2)' or one --flag per item", tuple_parser.TupleParser().parse),
}


def load_config_file(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
  """``get_config()`` of a config file, as absl's ``config_flags`` loads it.

  Args:
    spec: ``path.py`` or ``path.py:arg`` (``arg`` is passed to ``get_config``).
    flag: the flag's name for messages.

  Returns:
    The ConfigDict the file's ``get_config`` returns.

  Raises:
    ConfigError: the file does not exist, does not load or has no ``get_config``.
  """
  path, *arg = spec.split(":", 1)
  hint = f"pass an existing file, e.g. {flag}=configs/cde.py"
  if not os.path.isfile(path):
    raise ConfigError(f"cannot read the config file {path}\n  -> {hint}")
  try:
    mod_spec = importlib.util.spec_from_file_location(f"_mer_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    config = module.get_config(*arg)
  except Exception as e:  # the file is the user's: any failure in it is a config error
    raise ConfigError(
      f"the config file {path} failed to load ({type(e).__name__}: {e})\n  -> fix the file, or {hint}"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"the config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config


def _field_type(node: ml_collections.ConfigDict, key: str) -> Optional[type]:
  try:
    t = node.get_type(key)
  except (AttributeError, KeyError, TypeError):
    t = type(node[key])
  return None if t is type(None) else t


def check_override(config: ml_collections.ConfigDict, path: str, value: Optional[str], flag: str = "--config") -> Any:
  """Checks one override ``<flag>.<path>=<value>`` against ``config``; returns the parsed value.

  Args:
    config: the loaded config the override applies to.
    path: the dotted field path, e.g. "model.attention".
    value: the text after "=" (None for a bare boolean flag ``--config.x`` / ``--noconfig.x``).
    flag: the config flag's name for messages.

  Returns:
    The value as the field's type would hold it (absl's own parsers: bool, int, float, tuple; str as is).

  Raises:
    ConfigError: an unknown key (with the closest field name), a section or value used as the other,
      or a value that does not parse as the field's type.
  """
  shown = f"{flag}.{path}"
  node, parts = config, path.split(".")
  for i, part in enumerate(parts):
    here = ".".join(parts[:i])
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {shown!r} ('{here}' is a value, not a section)\n  -> {SPELLING_HINT}")
    if part not in node:
      close = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1, cutoff=0.6)
      did = f" (Did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"unknown config key {shown!r}{did}\n  -> {SPELLING_HINT}")
    if i == len(parts) - 1:
      break
    node = node[part]
  leaf = parts[-1]
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(
      f"{shown} is a section, not a field: override one of its fields "
      f"({', '.join(f'{shown}.{k}' for k in list(current.keys())[:4])}, ...)"
    )
  ftype = _field_type(node, leaf)
  if value is None:
    if ftype is bool:
      return True
    raise ConfigError(f"{shown} needs a value of type {_type_name(ftype)}: {shown}=<value>")
  if ftype is None or ftype is str or ftype not in _PARSERS:
    return value
  name, parse = _PARSERS[ftype]
  try:
    return parse(value)
  except (ValueError, TypeError, SyntaxError, flags.Error):
    raise ConfigError(
      f"wrong type for config key {shown!r}: {value!r} is not of type {name} (the field's "
      f"type; default {current!r})\n  -> give a value of the field's type (see {DEFAULTS_FILE})"
    ) from None


def _type_name(t: Optional[type]) -> str:
  return _PARSERS[t][0] if t in _PARSERS else (t.__name__ if t else "any")


_OVERRIDE = r"^--?(no)?{}\.([^=]+)(=(.*))?$"


def find_overrides(argv: Sequence[str], flag: str = "config") -> tuple[Optional[str], list[tuple[str, Optional[str]]]]:
  """The config file and the overrides of ``--<flag>`` on a command line.

  Args:
    argv: command-line arguments (without the program name).
    flag: the config flag's name.

  Returns:
    (the ``--<flag>`` value or None, [(dotted path, value text or None)] in order). ``--no<flag>.x`` gives
    value "false"; ``--<flag>.x VALUE`` (space-separated) takes the next argument unless it starts with "-".
  """
  spec, out = None, []
  pattern = re.compile(_OVERRIDE.format(re.escape(flag)))
  i = 0
  while i < len(argv):
    arg = argv[i]
    m = re.match(rf"^--?{re.escape(flag)}(=(.*))?$", arg)
    if m:
      if m.group(1) is not None:
        spec = m.group(2)
      elif i + 1 < len(argv):
        spec = argv[i + 1]
        i += 1
    else:
      m = pattern.match(arg)
      if m:
        path, value = m.group(2), m.group(4)
        if m.group(1):
          value = "false"
        elif value is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
          value = argv[i + 1]
          i += 1
        out.append((path, value))
    i += 1
  return spec, out


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Iterable[str] | Mapping[str, Any], flag: str = "--config"
) -> ml_collections.ConfigDict:
  """A copy of ``config`` with overrides applied, each checked by :func:`check_override`.

  Args:
    config: the loaded config (not modified).
    overrides: command-line style ``["--config.model.attention=none", ...]`` or ``{"model.attention": "none"}``
      (values of the field's type, or text parsed as the command line would).
    flag: the config flag's name for messages.

  Returns:
    A new, unlocked ConfigDict.
  """
  if isinstance(overrides, Mapping):
    return _apply(config, list(overrides.items()), flag)
  return _apply(config, find_overrides(list(overrides), flag.lstrip("-"))[1], flag)


def _apply(config: ml_collections.ConfigDict, items: Sequence[tuple[str, Any]], flag: str) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  tuples: dict[str, list] = {}
  for path, value in items:
    parsed = check_override(out, path, value if value is None or isinstance(value, str) else str(value), flag)
    if not isinstance(value, str) and value is not None:
      parsed = value
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
      node = node[p]
    if isinstance(node[leaf], tuple) and isinstance(value, str) and not value.lstrip().startswith(("(", "[")):
      tuples.setdefault(path, []).extend(parsed)  # --config.data.micro=casme2 --config.data.micro=samm
      parsed = tuple(tuples[path])
    node[leaf] = parsed
  return out


def check_overrides(argv: Sequence[str], flag: str = "config") -> Optional[ml_collections.ConfigDict]:
  """Loads ``--<flag>``'s file and checks every ``--<flag>.<path>`` override on ``argv``.

  Args:
    argv: command-line arguments (without the program name).
    flag: the config flag's name.

  Returns:
    The loaded config (overrides not applied: absl applies them), or None when ``--<flag>`` is absent.

  Raises:
    ConfigError: see :func:`load_config_file` and :func:`check_override`.
  """
  spec, overrides = find_overrides(argv, flag)
  if spec is None:
    return None
  config = load_config_file(spec, f"--{flag}")
  _apply(config, overrides, f"--{flag}")
  return config


def parse_known_overrides(ap, argv: Optional[Sequence[str]] = None) -> tuple[Any, list[str]]:
  """(args, overrides): an ``argparse`` parser's own arguments, and the ``--config.<field>=<value>`` overrides
  (for :func:`apply_overrides`, or to pass on to the runs a script starts); any other unknown argument is a
  usage error (``ap.error``, exit 2).
  """
  args, extra = ap.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    ap.error(f"unrecognised arguments {bad} (besides the options above, only --config.<field>=<value> overrides)")
  return args, extra


def run_app(main, config_flags_names: Sequence[str] = ("config",)) -> None:
  """``absl.app.run(main)`` with config/flag errors reported as one line + hint, exit code 2.

  Args:
    main: the absl main, ``main(argv)``.
    config_flags_names: the names of the ``config_flags.DEFINE_config_file`` flags whose file and overrides
      are checked (:func:`check_overrides`) before absl parses the command line.
  """
  try:
    for name in config_flags_names:
      if name in flags.FLAGS:
        check_overrides(sys.argv[1:], name)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    argv = flags.FLAGS(sys.argv)
    for name in list(flags.FLAGS):
      # A config that failed to load is a proxy raising IOError on first attribute access: trigger it here.
      hasattr(getattr(flags.FLAGS, name), "to_dict")
  except (flags.Error, OSError, KeyError, AttributeError, TypeError, ValueError) as e:
    # Anything the checks above did not foresee: absl's own text, first line, with the general hint.
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip().splitlines()
    print(
      f"error: {text[0] if text else type(e).__name__}\n  -> see {DEFAULTS_FILE} for the valid fields and "
      "their types, and configs/ for the config files",
      file=sys.stderr,
    )
    sys.exit(2)
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  app.run(lambda _argv: main(argv), argv=[sys.argv[0]])
