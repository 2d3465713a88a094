"""User-facing errors: the command-line entry points print their message, without a traceback."""


class KxVisionError(Exception):
    """A problem with the user's input (a file, a folder, a config key) explained in one message."""


class DataError(KxVisionError, ValueError):
    """A missing, empty, corrupt or unsuitable data file or folder."""


class ConfigError(KxVisionError, ValueError):
    """An unknown config key or a value of the wrong type."""


class WeightsUnavailableError(KxVisionError, RuntimeError):
    """Pretrained weights that were asked for could not be loaded (e.g. no network)."""
