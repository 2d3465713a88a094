"""What `python -m kx_vision.export` does when things are not as they should be: `--force` pointed at a folder
that is not an earlier export, a full disk, a read-only folder, temporary folders left by killed exports,
files that are not models, and `--help` (issue 17). The refusals happen before any model is loaded."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from tests_helpers import dead_pid, one_line_error

from kx_vision.export import clean_stale_temporaries, main

tf = pytest.importorskip("tensorflow")  # SavedModel export needs TensorFlow on either backend

PACKAGE = Path(__file__).resolve().parents[1] / "kx_vision"


def tree(folder):
    """Every file and folder under `folder` with the files' contents, to show that nothing changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def fake_export(folder, content=b"earlier export"):
    """A folder shaped like a SavedModel (what `--force` may replace)."""
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(content)
    (folder / "variables" / "variables.index").write_bytes(content)
    return folder


# --- --force never deletes what is not an earlier export ---


def training_run(root, model_file):
    """A training run's folder: what `export run/model.keras run --force` wiped."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.keras").write_bytes(model_file.read_bytes())
    (run / "checkpoints" / "best.keras").write_bytes(b"best")
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n")
    return run


def test_force_refuses_the_folder_holding_the_model(tmp_path, model_file, capsys):
    run = training_run(tmp_path, model_file)
    before = tree(tmp_path)
    assert main([str(run / "model.keras"), str(run), "--force"]) == 2
    err = one_line_error(capsys)
    assert str(run) in err and "holds the model being exported" in err
    assert tree(tmp_path) == before


def test_force_refuses_a_folder_that_is_not_an_export(tmp_path, model_file, capsys):
    run = training_run(tmp_path, model_file)
    (run / "model.keras").unlink()  # the model comes from elsewhere: the folder is still not an export
    before = tree(tmp_path)
    assert main([str(model_file), str(run), "--force"]) == 2
    err = one_line_error(capsys)
    assert str(run) in err and "not an exported SavedModel" in err and "choose another output folder" in err
    assert tree(tmp_path) == before


def test_force_refuses_the_current_folder(tmp_path, model_file, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    export = fake_export(tmp_path / "exported")
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main([str(model_file), ".", "--force"]) == 2
    assert "current folder" in one_line_error(capsys)
    # A SavedModel that holds the current folder is not replaced either (the shell would be left nowhere).
    monkeypatch.chdir(export / "variables")
    assert main([str(model_file), str(export), "--force"]) == 2
    assert "current folder" in one_line_error(capsys)
    assert tree(tmp_path) == before


def test_force_refuses_an_export_with_other_files_and_a_file(tmp_path, model_file, capsys):
    export = fake_export(tmp_path / "sm")
    (export / "my_notes.md").write_text("keep me")
    (tmp_path / "a_file").write_text("x")
    before = tree(tmp_path)
    assert main([str(model_file), str(export), "--force"]) == 2
    err = one_line_error(capsys)
    assert "my_notes.md" in err and "would delete" in err
    assert main([str(model_file), str(tmp_path / "a_file"), "--force"]) == 2
    assert "is not a folder" in one_line_error(capsys)
    assert tree(tmp_path) == before


def test_force_replaces_an_earlier_export_and_an_empty_folder_is_used(tmp_path, model_file, capsys):
    export = fake_export(tmp_path / "sm")
    assert main([str(model_file), str(export)]) == 2  # without --force an earlier export is kept
    assert "exists; pass --force" in one_line_error(capsys)
    assert main([str(model_file), str(export), "--force"]) == 0
    assert (export / "saved_model.pb").read_bytes() != b"earlier export"
    assert tf.saved_model.load(str(export)).serve(tf.zeros((1, 5, 6, 3))).shape == (1, 10, 12, 3)
    (tmp_path / "empty").mkdir()
    assert main([str(model_file), str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "sm"]  # no temporary folder left


# --- a full disk or a read-only folder: one line, nothing changed ---

DISK_ERRORS = {
    "oserror_enospc": lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path),
    # What TensorFlow raises when the disk fills while it writes the variables (seen on a 1 MB tmpfs).
    "tf_resource_exhausted": lambda path: tf.errors.ResourceExhaustedError(
        None, None, f"{path}/variables/variables_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; "
                    "No space left on device [Op:SaveV2]"),
    # And when the folder is on a read-only file system.
    "tf_permission_denied": lambda path: tf.errors.PermissionDeniedError(None, None, f"{path}; Read-only file system"),
}
REASONS = {"oserror_enospc": "No space left on device", "tf_resource_exhausted": "No space left on device",
           "tf_permission_denied": "Read-only file system"}


@pytest.mark.parametrize("case", sorted(DISK_ERRORS))
def test_write_failure_is_one_line_and_changes_nothing(case, tmp_path, model_file, capsys, monkeypatch):
    def write_out(self, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"), exist_ok=True)  # half-written, as a real failure leaves it
        Path(path, "variables", "variables.data-00000-of-00001").write_bytes(b"partial")
        raise DISK_ERRORS[case](path)

    # keras.export.ExportArchive() makes an instance of the backend's subclass: patch the writer there.
    # (Not tf.saved_model.save: TensorFlow's lazy API modules rebind it when jax2tf is first imported.)
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", write_out)
    out = tmp_path / "exports"
    fake_export(out / "sm")
    before = tree(tmp_path)
    assert main([str(model_file), str(out / "sm"), "--force"]) == 2
    err = one_line_error(capsys)
    assert str(out / "sm") in err and REASONS[case] in err and "nothing was changed" in err
    assert tree(tmp_path) == before
    # Folders the export created for itself go too.
    assert main([str(model_file), str(out / "new" / "deeper" / "sm")]) == 2
    assert "nothing was changed" in one_line_error(capsys)
    assert tree(tmp_path) == before


def test_read_only_folder(tmp_path, model_file, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_text("x")
        except PermissionError:
            pass
        else:
            pytest.skip("running as root: chmod does not stop writes (test_write_failure_is_one_line_and_"
                        "changes_nothing[tf_permission_denied] covers what a read-only file system raises)")
        assert main([str(model_file), str(folder / "sm")]) == 2
        err = one_line_error(capsys)
        assert str(folder / "sm") in err and "Permission denied" in err and "nothing was changed" in err
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# --- temporary folders of killed exports ---


def test_stale_temporaries_are_removed_and_a_live_export_is_left_alone(tmp_path, model_file, capsys):
    dead, live = dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = tmp_path / f".tmp-{dead}-sm"
        (stale / "variables").mkdir(parents=True)
        (stale / "variables" / "variables.data-00000-of-00001").write_bytes(b"partial")
        fake_export(tmp_path / f".old-{dead}-sm")  # killed after the new export was in place
        fake_export(tmp_path / f".tmp-{dead}-other")  # another target's
        running = fake_export(tmp_path / f".tmp-{live.pid}-sm")  # an export still running
        kept = [tmp_path / f".tmp-{live.pid}-last.keras", tmp_path / f".notes.tmp-{dead}"]  # a live write, not ours
        kept[0].write_bytes(b"checkpoint")
        kept[1].write_text("a file")
        fake_export(tmp_path / "sm")
        assert main([str(model_file), str(tmp_path / "sm"), "--force"]) == 0
        err = capsys.readouterr().err
        assert err.count("left by an export that was killed") == 3, err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [".notes.tmp-" + str(dead), f".tmp-{live.pid}-last.keras", f".tmp-{live.pid}-sm", "sm"])
        assert (running / "saved_model.pb").read_bytes() == b"earlier export"
    finally:
        live.kill()
        live.wait()


def test_export_killed_between_its_renames_is_restored(tmp_path, model_file, capsys):
    """Killed after moving the earlier export aside and before moving the new one in: the earlier export is
    put back (and then, without --force, kept)."""
    dead = dead_pid()
    fake_export(tmp_path / f".old-{dead}-sm")
    fake_export(tmp_path / f".tmp-{dead}-sm", content=b"complete or not, unknown")
    assert main([str(model_file), str(tmp_path / "sm")]) == 2
    captured = capsys.readouterr().err
    assert "restored" in captured and "exists; pass --force" in captured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() == b"earlier export"
    assert clean_stale_temporaries(tmp_path) == []


# --- files that are not what export needs ---


def test_a_model_that_does_not_take_images_is_refused(tmp_path, capsys):
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "dense.keras")
    assert main([str(tmp_path / "dense.keras"), str(tmp_path / "sm")]) == 2
    err = one_line_error(capsys)
    assert "takes image models" in err and "(None, 4)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.keras"]


def test_a_garbage_keras_file_is_not_called_missing(tmp_path, capsys):
    (tmp_path / "model.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    assert main([str(tmp_path / "model.keras"), str(tmp_path / "sm")]) == 2
    err = one_line_error(capsys)
    assert str(tmp_path / "model.keras") in err and "not found" not in err.lower()


# --- help ---


def test_help_describes_format_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tf_saved_model: a TensorFlow SavedModel folder" in out
    assert "default: tf_saved_model" in out and "default: auto" in out
    assert "serve_uint8" in out and "earlier export" in out


HELP_IMPORTS = """
import sys, types
if sys.argv[1] == "module-only":  # kx_vision.export alone, whatever the package's __init__ imports
    package = types.ModuleType("kx_vision")
    package.__path__ = [sys.argv[2]]
    sys.modules["kx_vision"] = package
import runpy
sys.argv = ["export", "--help"]
try:
    runpy.run_module("kx_vision.export", run_name="__main__")
except SystemExit as exit_:
    assert exit_.code == 0
print("HEAVY", sorted(name for name in ("keras", "tensorflow", "jax") if name in sys.modules))
"""


def heavy_imports_of_help(*args):
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    return done.stdout.split("HEAVY")[-1].strip()


def test_help_imports_no_framework():
    assert heavy_imports_of_help("module-only", str(PACKAGE)) == "[]"


def test_python_m_export_help_imports_no_framework():
    done = subprocess.run([sys.executable, "-c", "import sys, kx_vision; print('keras' in sys.modules)"],
                          capture_output=True, text=True, timeout=300)
    if done.stdout.strip() == "True":
        pytest.skip("kx_vision/__init__.py imports Keras (and so TensorFlow) eagerly, before any command parses "
                    "its arguments (issue 17, item 8)")
    assert heavy_imports_of_help("package") == "[]"
