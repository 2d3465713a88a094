"""What every command-line entry point shares: quiet start-up, one error handler, one-line warnings, and
`kx-vision`, the one console script (`kx-vision train superres ...` is `python -m kx_vision.train superres ...`).

Imports nothing heavy, so that `--help` stays instant: Keras, TensorFlow and JAX are imported by
the commands themselves, after their arguments are parsed.
"""

import contextlib
import errno
import importlib.util
import os
import re
import sys
import warnings

from kx_vision.errors import KxVisionError


def add_verbose_argument(parser):
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's and XLA's start-up logs (hidden by default)")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null (C++ libraries write there directly, past `sys.stderr`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_quiet_started = False


def quiet_start(verbose=False, tensorflow=True):
    """Hide TensorFlow's C++ start-up lines (`cuInit ... UNKNOWN ERROR (303)`, `cudart_stub`,
    `cpu_feature_guard`, absl's pre-init warning), alarming on a machine without a GPU and of no use
    to a user. `TF_CPP_MIN_LOG_LEVEL` hides the later ones; the first are written before TensorFlow
    reads it, so TensorFlow is imported (and its devices listed) here with stderr silenced.
    Python warnings and errors are not affected. Call before anything imports TensorFlow."""
    global _quiet_started
    _quiet_started = True
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not tensorflow or "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    try:
        with _native_stderr_silenced():
            import tensorflow as tf

            tf.config.list_physical_devices()
    except Exception:  # noqa: BLE001 - a broken TensorFlow is reported where it is used, not here
        pass


def _os_error_message(error):
    where = error.filename or "a file"
    if error.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {where}; files written before are intact: "
                "free some space and run the same command again (training resumes from its last finished epoch)")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {error.strerror} (choose another output folder, or fix its permissions)"
    if error.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"{where}: {error.strerror}"
    return None


# The last line of the Python traceback TensorFlow copies into an error raised inside the input pipeline.
_WRAPPED_ERROR = re.compile(r"^kx_vision\.errors\.\w+: (.+)$", re.MULTILINE)


def _wrapped_message(error):
    """The message of a kx_vision error raised inside a tf.data pipeline (`tf.numpy_function` /
    `py_function`: an unreadable stream, a too-small image found while streaming), which TensorFlow
    re-raises as its own `InvalidArgumentError` with the Python traceback pasted into the text; else None."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    found = _WRAPPED_ERROR.findall(str(error))
    return found[-1].strip() if found else None


def command_line_words(error):
    """The message of `error` with the Python arguments it names (`ArgumentError.arguments`) written as
    this command line's flags: `scale=4` -> `--scale 4`, `` `scale` `` -> `--scale`."""
    message = str(error)
    for name in getattr(error, "arguments", ()):
        flag = "--" + name.replace("_", "-")
        message = re.sub(rf"(?<![\w.-]){re.escape(name)}=(\S*)",
                         lambda m, flag=flag: f"{flag} {m.group(1)}" if m.group(1) else flag, message)
        message = message.replace(f"`{name}`", flag)
    return message


def _in_kx_vision(module_name):
    return module_name == "kx_vision" or module_name.startswith("kx_vision.")


def _issued_by_kx_vision(category, frame):
    """Whether the warning being formatted is kx_vision's own: of a kx_vision category, or issued by kx_vision
    code. `frame` is the formatter's caller; the issuer is the first frame below the `warnings` machinery (not
    the file the warning names, which `stacklevel` may put in Keras, TensorFlow or the caller's code)."""
    if _in_kx_vision(getattr(category, "__module__", "")):
        return True
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", "_py_warnings"):
        frame = frame.f_back
    return frame is not None and _in_kx_vision(frame.f_globals.get("__name__", ""))


@contextlib.contextmanager
def plain_warnings():
    """kx_vision's own warnings as one line, `warning: text`, instead of Python's `file:line: Category: text`
    and source line; the warnings of other libraries keep Python's format."""
    python_format = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if _issued_by_kx_vision(category, sys._getframe(1)):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        if warnings.formatwarning is formatwarning:
            warnings.formatwarning = python_format


def run(command, interrupted="interrupted"):
    """Run `command()` and turn the errors a user can act on into one line on stderr and an exit code:
    0 (done), 2 (bad input, or a file that cannot be written), 130 (Ctrl-C). `command` may return
    an exit code of its own; kx_vision's warnings print as one line meanwhile (`plain_warnings`). Run as a
    command (`python -m kx_vision.X`, `kx-vision`), TensorFlow starts quietly (`quiet_start_from_argv`) unless
    the command did that itself."""
    if not _quiet_started and _command().startswith(("kx_vision", "kx-vision")):
        quiet_start_from_argv(sys.argv[1:])
    try:
        with plain_warnings():
            code = command()
    except KxVisionError as error:
        print(f"error: {command_line_words(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except Exception as error:
        # A file that cannot be written, or one of our errors wrapped by TensorFlow; anything else keeps its traceback.
        message = _os_error_message(error) if isinstance(error, OSError) else _wrapped_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0 if code is None else code


def _command():
    """The entry point being run: `kx_vision.train` for `python -m kx_vision.train`, the script's name
    (`kx-vision-train`) for a console script, else ''."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return os.path.basename(argv[0]) if argv else ""


def quiet_start_from_argv(argv):
    """`quiet_start` for a command about to parse `argv`. `--help` must be instant, so it imports
    nothing (train's help lists the tasks' config keys, which need no framework); `prepare` never
    needs TensorFlow."""
    command = _command().replace("kx-vision-", "kx_vision.")
    if command == "kx-vision":  # the one console script: `kx-vision COMMAND ...`
        command, argv = f"kx_vision.{argv[0] if argv else ''}", argv[1:]
    helping = bool({"-h", "--help"} & set(argv))
    quiet_start("--verbose" in argv, tensorflow=not helping and command != "kx_vision.prepare")


# `kx-vision COMMAND ...`: each command is a module with a `main(argv)`, imported by the function beside its help.
# The imports are real (ruff and the import-floor test see them) but run only when their command runs, not at
# the top of this file: every command imports `cli` (for `run`), so a top-level import would be circular and
# would make `python -m kx_vision.train` execute train.py twice (as `__main__` and as `kx_vision.train`); and
# `kx-vision --help` imports no command (NumPy, YAML), so it stays instant.
def _train():
    from kx_vision import train

    return train


def _evaluate():
    from kx_vision import evaluate

    return evaluate


def _predict():
    from kx_vision import predict

    return predict


def _export():
    from kx_vision import export

    return export


def _prepare():
    from kx_vision import prepare

    return prepare


COMMANDS = {
    "train": (_train, "train a task (superres, segmentation, style)"),
    "evaluate": (_evaluate, "score a model (or bicubic) on image folders or tfds"),
    "predict": (_predict, "run a model on images (any size, tiled), writing PNGs"),
    "export": (_export, "export a model: TensorFlow SavedModel, ONNX, LiteRT or OpenVINO (--format)"),
    "prepare": (_prepare, "resize a folder, or cut HR images into crops"),
}


def main(argv=None):
    """The `kx-vision` console script: dispatch to a command's `main`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: kx-vision COMMAND [--help] ...\n\ncommands:\n{lines}\n\n"
              "The Keras backend is chosen with KERAS_BACKEND (tensorflow or jax).")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    command, _ = COMMANDS[argv[0]]
    return command().main(argv[1:])
