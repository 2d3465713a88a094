"""User-facing errors: the command-line entry points print their message, without a traceback.

Every error the package raises on purpose is a `KxVisionError`; a bad argument or input is also a `ValueError`
(`except ValueError` keeps working).
"""


class KxVisionError(Exception):
    """A problem with the user's input (a file, a folder, a config key) explained in one message."""


class DataError(KxVisionError, ValueError):
    """A missing, empty, corrupt or unsuitable data file or folder."""


class UnreadableFileError(DataError):
    """A file that cannot be decoded: corrupt, truncated, or not an image at all. Loaders of many files
    skip these with a warning and count them; other `DataError`s (a mask of the wrong kind, sizes that
    disagree) stop the run."""


class TooLargeImageError(DataError):
    """An image beyond Pillow's decompression-bomb limit (`kx_vision.data.images.pixel_limit`)."""


class ConfigError(KxVisionError, ValueError):
    """An unknown config key or a value of the wrong type."""


class ArgumentError(KxVisionError, ValueError):
    """A bad argument or input of a Python call, named as a Python caller writes it (`scale=4`).

    `arguments` lists the argument names the message uses; the command line rewrites `name=value` and
    `` `name` `` into its own flags (`--scale 4`, `--scale`)."""

    def __init__(self, message, arguments=()):
        super().__init__(message)
        self.arguments = tuple(arguments)


class WeightsUnavailableError(KxVisionError, RuntimeError):
    """Pretrained weights that were asked for could not be loaded (e.g. no network)."""


class TrainingDiverged(KxVisionError):
    """The training loss became NaN or infinite (`kx_vision.training.trainer`); the message says what was kept."""
