"""User-facing configuration errors, printed by the CLI without a traceback."""


class ConfigError(ValueError):
    """A bad parameter or config value. The message names the field and the allowed values."""
