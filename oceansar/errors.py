"""The errors a user fixes by changing a config value, a file or a command, never the code.

`launch.py` prints a `UserError` as one line naming the field, file or workdir at fault and exits
non-zero without a traceback (`--verbosity=1` shows it). Each class also derives from the builtin a
caller would catch (`ValueError`, `FileNotFoundError`, `RuntimeError`), so library code and tests can
keep catching those. Pure Python: the numpy-only data floor imports it.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave (config, data, workdir), reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A config value that is missing, unknown or invalid; the message starts with its field (`config.x.y:`)."""


class DataError(UserError, ValueError):
    """Data that cannot be read as configured: the message names the file or directory."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A configured file or directory that does not exist (or holds nothing usable)."""


class WorkdirError(UserError, RuntimeError):
    """A workdir that refuses the command: another owner, another run's config, or nothing to resume."""
