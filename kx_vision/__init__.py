"""kx_vision: the image-to-image models of fast.ai's 2018 lesson 14, in Keras 3 (TensorFlow and JAX)."""

import os as _os
import sys as _sys

from kx_vision.version import __version__  # noqa: F401


def _started_from_command_line():
    # `python -m kx_vision.X` imports this package while sys.argv[0] is still "-m"; console scripts are kx-vision*.
    argv0 = _sys.argv[0] if _sys.argv else ""
    return argv0 == "-m" or _os.path.basename(argv0).startswith("kx-vision")


if _started_from_command_line():
    # A command imports what it needs after parsing its arguments (`--help` stays instant), and
    # TensorFlow's C++ start-up lines are hidden unless --verbose.
    from kx_vision import cli as _cli

    _cli.quiet_start_from_argv(_sys.argv[1:])
else:
    from kx_vision import layers, losses, metrics, models  # noqa: E402,F401 - registers every serializable object
