"""User-facing errors.

Anything a user can cause (a missing folder, a bad label file, a corrupt image,
a clip too short for the temporal filter, an unknown config key) raises
:class:`UserError` with a message that names the offending file/key and says
what to do. Command-line entry points catch it and print the message without a
traceback (see :func:`run_cli`).
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
  """An error caused by input the user controls; its message is shown as-is."""


class DataError(UserError):
  """A dataset folder, label file or image is missing, malformed or unreadable."""


class ConfigError(UserError):
  """A configuration key or value is invalid."""


class EVMError(UserError):
  """The clip cannot be magnified with the requested settings (e.g. empty passband)."""


def run_cli(main: Callable[[], int | None]) -> None:
  """Runs ``main`` and turns a :class:`UserError` into ``error: ...`` on stderr and exit code 2."""
  try:
    code = main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(code or 0)
