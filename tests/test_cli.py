"""The one console script, `kx-vision COMMAND`, and the shared error handler."""

import errno
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO
from tests_helpers import one_line_error

from kx_vision import cli
from kx_vision.errors import TooLargeImageError, UnreadableFileError


def test_kx_vision_lists_its_commands(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in ("train", "evaluate", "predict", "export", "prepare"))
    assert cli.main(["--help"]) == 0
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_commands_are_modules_imported_only_when_they_run():
    assert {name: command().__name__ for name, (command, _) in cli.COMMANDS.items()} == {
        name: f"kx_vision.{name}" for name in ("train", "evaluate", "predict", "export", "prepare")}
    code = ("import sys; from kx_vision import cli; cli.main(['--help']); "
            "print(sorted(m for m in sys.modules if m in ('numpy', 'keras') or m.split('.')[-1] in cli.COMMANDS))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "[]", done.stderr  # --help stays instant


def test_kx_vision_dispatches_to_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "superres", "--help"])
    assert info.value.code == 0
    assert "data.patch_size" in capsys.readouterr().out  # train's help, with the task's config keys
    assert cli.main(["train", "superres", "--set", "data.patch_sise=8"]) == 2
    assert "unknown config key 'data.patch_sise' (did you mean 'data.patch_size'?)" in capsys.readouterr().err


def test_one_error_handler_for_every_command(capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.keras")

    assert cli.run(full) == 2
    assert capsys.readouterr().err.startswith("error: no space left on the device while writing /runs/x/model.keras")

    def interrupted():
        raise KeyboardInterrupt

    assert cli.run(interrupted, interrupted="stopped") == 130

    def other():
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):  # not something a user can act on: the traceback is kept
        cli.run(other)


def test_an_error_raised_inside_the_input_pipeline_is_one_line(capsys):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.errors import DataError

    def read(index):
        raise DataError(f"training image example {int(index)} is 40x12, smaller than the 16x16 patch size")

    dataset = tf.data.Dataset.range(3).map(lambda i: tf.numpy_function(read, [i], tf.int64)).prefetch(1)
    assert cli.run(lambda: next(iter(dataset))) == 2
    err = capsys.readouterr().err
    assert err == "error: training image example 0 is 40x12, smaller than the 16x16 patch size\n"

    def broken():  # TensorFlow's own errors keep their traceback
        return tf.reshape(tf.range(3), (2, 2))

    with pytest.raises(tf.errors.InvalidArgumentError):
        cli.run(broken)


def _diverged():
    from kx_vision.training.trainer import TrainingDiverged

    return TrainingDiverged("training diverged in epoch 2 (the loss is nan)")


@pytest.mark.parametrize("error", [
    lambda: UnreadableFileError("cannot read image x.png: truncated"),
    lambda: TooLargeImageError("x.png is 20000x20000 pixels"),
    _diverged,
], ids=["unreadable", "too_large", "diverged"])
def test_every_error_of_the_package_is_one_line(capsys, error):
    def command():
        raise error()

    assert cli.run(command) == 2
    assert one_line_error(capsys) == f"error: {error()}"


def test_an_unreadable_file_found_inside_the_input_pipeline_is_one_line(capsys):
    # TensorFlow pastes the error's qualified class name into its own; the handler knows kx_vision.errors'.
    tf = pytest.importorskip("tensorflow")

    def read(index):
        raise UnreadableFileError(f"cannot read image {int(index)}.png: truncated")

    dataset = tf.data.Dataset.range(3).map(lambda i: tf.numpy_function(read, [i], tf.int64))
    assert cli.run(lambda: next(iter(dataset))) == 2
    assert one_line_error(capsys) == "error: cannot read image 0.png: truncated"


# A process of its own: pytest records warnings instead of formatting them.
WARNING_SCRIPT = """
import warnings
from kx_vision import cli
from kx_vision.training.optimizers import warmup_steps

def plan():  # warmup_steps warns with stacklevel=3: the warning names this script's file, not kx_vision's
    return warmup_steps(100, 10)

def command():
    plan()
    warnings.warn("from another library")

cli.run(command)
warnings.warn("after the command")
"""


def test_a_warning_of_kx_vision_is_one_line_while_a_command_runs():
    done = subprocess.run([sys.executable, "-c", WARNING_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert ("warning: optimizer.warmup_steps=100 is more than a quarter of the 10 planned steps; warming up over 2 "
            "steps instead") in lines
    assert "<string>:11: UserWarning: from another library" in lines  # another's keeps Python's format
    assert "<string>:14: UserWarning: after the command" in lines  # and so does everything once the command ends


@pytest.mark.skipif(shutil.which("kx-vision") is None, reason="the kx-vision console script is installed by "
                    "`pip install -e .` (it is, in CI)")
def test_installed_console_script_runs_a_command():
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run(["kx-vision", "train", "superres", "--help"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0 and "loss.name" in result.stdout
