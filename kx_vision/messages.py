"""What kx_vision tells its user: one channel for messages, the `kx_vision` logger.

`say(message)` logs at INFO on the `kx_vision` logger. Unless the application configures that logger
itself (gives it a handler), its one handler prints each message as a plain line on standard output,
as a command line prints, in scripts, notebooks and tests alike (the stream is looked up at each
message, so a redirected `sys.stdout` receives it). Silence it with
`logging.getLogger("kx_vision").setLevel(logging.WARNING)`, or send it elsewhere by replacing the handler.

Warnings (something is off, the work goes on) go through `warnings.warn`, errors are exceptions.
"""

import logging
import sys

logger = logging.getLogger("kx_vision")


class _PlainStdout(logging.Handler):
    """Prints the message alone, on the current `sys.stdout`."""

    def emit(self, record):
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging's own policy for a failed write
            self.handleError(record)


if not logger.handlers:  # unless the application set up the logger before importing kx_vision
    logger.addHandler(_PlainStdout())
    logger.propagate = False  # printed once, not again by a root handler
if logger.level == logging.NOTSET:
    logger.setLevel(logging.INFO)


def say(message):
    """Tell the user `message` (a line or a few): the `kx_vision` logger, at INFO."""
    logger.info(message)
