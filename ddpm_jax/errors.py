"""The project's own exception types (a leaf module: every layer may raise them)."""


class InvalidConfigError(ValueError):
  """A config that cannot run, with every problem found (the command line prints it alone)."""
