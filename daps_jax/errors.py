"""User-facing errors: bad config, data, checkpoint or weights input.

Every error a user can fix derives from `UserError`; the entry points (`main`,
`evaluate`, `compare`) catch it once and print its message alone, with no
traceback. Its message names the field, file or flag and the fix.
"""


class UserError(ValueError):
  """Input that cannot be used; the message says what to change."""


class ConfigError(UserError):
  """A config value or combination that cannot run; the message names the field."""


def check(ok: bool, field: str, message: str) -> None:
  """Raises ConfigError('config.<field>: <message>') unless `ok`."""
  if not ok:
    raise ConfigError(f'config.{field}: {message}')


class DataError(UserError):
  """The data asked for is unknown, missing, or malformed."""


class CheckpointError(UserError):
  """A checkpoint that cannot be restored into this run's state."""


class DivergedError(UserError):
  """Training produced non-finite state; the last good checkpoint is kept."""
