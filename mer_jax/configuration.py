"""Config loading for the command-line entry points.

Configs are ml-collections files (``configs/*.py``) read with absl's
``config_flags``; any field is overridable as ``--config.model.attention=channel``.
:func:`run_app` runs an absl main so that a bad ``--config`` path, an unknown
key or a value of the wrong type ends in one readable line and exit code 2,
not a traceback.
"""

from __future__ import annotations

import logging
import re
import sys

import ml_collections
from absl import app
from absl import flags
from absl import logging as absl_logging

from mer_jax.errors import ConfigError


def require_config(config: ml_collections.ConfigDict | None, flag: str = "--config") -> ml_collections.ConfigDict:
  """Returns ``config`` or raises :class:`ConfigError` telling the user to pass ``flag``."""
  if config is None:
    raise ConfigError(f"{flag} is required, e.g. {flag}=configs/sde_casme2.py")
  return config


def _explain_flag_error(err: Exception) -> str:
  text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
  text = str(text).strip()
  if isinstance(err, KeyError):
    text = text.strip("'\"")
  text = text.replace("\\n", " ").replace("\n", " ")
  text = text.replace("\\'", "'").replace("\\\"", '"')
  msg = re.sub(r"\s+", " ", text) or repr(err)
  unknown = re.fullmatch(r"""["']*(\w+)["']*\s*(Did you mean.*)?""", msg)
  if unknown:
    key = unknown.group(1)
    args = [a.split("=")[0] for a in sys.argv[1:] if re.search(rf"\.{key}(=|$)", a.split("=")[0])]
    msg = f"unknown config key {args[0] if args else key!r}" + (f" ({unknown.group(2).rstrip(chr(39))})" if unknown.group(2) else "")
  if unknown or isinstance(err, KeyError) or "Could not find" in msg:
    hint = "check the key's spelling against mer_jax/config_defaults.py (every valid field is listed there)"
  elif "type" in msg.lower():
    hint = "give a value of the field's type (see mer_jax/config_defaults.py)"
  else:
    hint = "see mer_jax/config_defaults.py for the valid fields and their types"
  return f"{msg}\n  -> {hint}"


def run_app(main) -> None:
  """``absl.app.run(main)`` with config/flag errors reported as one line + hint, exit code 2."""
  try:
    argv = flags.FLAGS(sys.argv)
    for name in list(flags.FLAGS):
      # A config that failed to load is a proxy raising IOError on first attribute access: trigger it here.
      hasattr(getattr(flags.FLAGS, name), "to_dict")
  except flags.Error as e:
    print(f"error: {_explain_flag_error(e)}", file=sys.stderr)
    sys.exit(2)
  except (FileNotFoundError, IOError) as e:
    missing = re.findall(r"\n\s+(\S+\.py)\n", str(e))
    what = missing[0] if missing else str(e).splitlines()[0]
    print(f"error: cannot read the config file {what}\n  -> pass an existing file, e.g. --config=configs/cde.py",
          file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    print(f"error: {_explain_flag_error(e)}", file=sys.stderr)
    sys.exit(2)
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  app.run(lambda _argv: main(argv), argv=[sys.argv[0]])
