"""What `predict` and `evaluate` do when things are not as they should be (issue 17, items 8, 9, 15, 16, 17):
`--help` without Keras, a model of another task, a file that is not a model, an output that is a file or
cannot be written, a full disk, inputs that share a stem, unreadable inputs in a folder, temporaries left
by a killed run, and the decompression-bomb limit."""

import errno
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from seg_helpers import tiny_backbone
from tests_helpers import dead_pid, one_line_error

from kx_vision import evaluate, predict
from kx_vision.data.images import load_image, pixel_limit
from kx_vision.errors import DataError
from kx_vision.inference import tiling
from kx_vision.models import EDSR, StyleTransferNet, UNet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    EDSR(scale=2, num_blocks=1, num_filters=8).save(folder / "edsr.keras")
    UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8).save(folder / "unet.keras")
    StyleTransferNet(num_filters=4, num_blocks=1).save(folder / "style.keras")
    return folder


@pytest.fixture
def photos(tmp_path, rng):
    """Two 24x20 RGB images and their 3-class masks."""
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{name}.png")
        Image.fromarray(rng.integers(0, 3, (20, 24), dtype=np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    return tmp_path


def superres(model, source, output, *extra):
    return predict.main(["superres", "--model", str(model), "--input", str(source), "--output", str(output),
                         "--tile", "0", *extra])


# --- item 8: --help imports no framework ---

SITE = """
import atexit, os, sys

def _report():
    with open(os.environ["KX_HEAVY_IMPORTS"], "w") as f:
        f.write(" ".join(sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules)))

atexit.register(_report)
"""


def heavy_imports(tmp_path, args, backend):
    """Frameworks imported by `python -m <args>`, as a user runs it (a sitecustomize reports at exit)."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE)
    report = tmp_path / "heavy.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "KX_HEAVY_IMPORTS": str(report), "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    return report.read_text().split(), done.stdout


@pytest.mark.parametrize("args", [
    ["kx_vision.predict", "--help"], ["kx_vision.predict", "superres", "--help"],
    ["kx_vision.predict", "segmentation", "--help"], ["kx_vision.predict", "style", "--help"],
    ["kx_vision.evaluate", "--help"], ["kx_vision.evaluate", "superres", "--help"],
    ["kx_vision.evaluate", "segmentation", "--help"],
])
def test_help_imports_no_framework(tmp_path, args):
    # Under JAX the package start-up imports nothing itself, so this sees what the command imports.
    heavy, _ = heavy_imports(tmp_path, args, "jax")
    assert heavy == []


def test_help_under_the_default_backend_imports_no_framework(tmp_path):
    heavy, _ = heavy_imports(tmp_path, ["kx_vision.predict", "superres", "--help"],
                             os.environ.get("KERAS_BACKEND", "tensorflow"))
    assert heavy == []


# --- item 9: defaults and class names in the help and the report ---


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        predict.main(["superres", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 256)" in out and "(default: 64)" in out and "Exit status" in out
    with pytest.raises(SystemExit):
        evaluate.main(["segmentation", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 1)" in out and "config.yaml" in out


def test_evaluate_segmentation_names_the_classes_of_the_training_run(models, photos, capsys):
    run = photos / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = run / "checkpoints" / "best.keras"
    model.write_bytes((models / "unet.keras").read_bytes())
    (run / "config.yaml").write_text("num_classes: 3\nignore_class: null\nclass_names: [sky, road, car]\n")
    args = ["segmentation", "--model", str(model), "--images", str(photos / "in"), "--masks", str(photos / "masks"),
            "--num-classes", "3"]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert f"class names from {run / 'config.yaml'}" in out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["sky", "road", "car"]
    # --class-names wins; a count that does not fit is refused.
    assert evaluate.main(args + ["--class-names", "x,y,z"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:5]] == ["x", "y", "z"]
    assert evaluate.main(args + ["--class-names", "x,y"]) == 2
    assert "--class-names has 2 names but there are 3 classes" in one_line_error(capsys)
    # A config of another number of classes is not this model's: indices.
    (run / "config.yaml").write_text("num_classes: 11\nclass_names: [a, b, c, d, e, f, g, h, i, j, k]\n")
    assert evaluate.main(args) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:4]] == ["0", "1", "2"]


# --- item 15: one message instead of a traceback ---

WRONG_TASK = [
    (predict, ["superres"], "unet.keras", "a segmentation model (UNet, 3 classes)", "a super-resolution model"),
    (predict, ["superres"], "style.keras", "a style-transfer network", "a super-resolution model"),
    (predict, ["segmentation"], "edsr.keras", "a x2 super-resolution model (EDSR)", "a segmentation model"),
    (predict, ["segmentation"], "style.keras", "a style-transfer network", "a segmentation model"),
    (predict, ["style"], "edsr.keras", "a x2 super-resolution model (EDSR)", "a style-transfer network"),
    (predict, ["style"], "unet.keras", "a segmentation model (UNet, 3 classes)", "a style-transfer network"),
    (evaluate, ["superres", "--scale", "2"], "unet.keras", "a segmentation model", "a super-resolution model"),
    (evaluate, ["segmentation", "--num-classes", "3"], "edsr.keras", "a x2 super-resolution model",
     "a segmentation model"),
]


@pytest.mark.parametrize("module, command, model, what, expected", WRONG_TASK)
def test_a_model_of_another_task_is_named(models, photos, capsys, module, command, model, what, expected):
    path = models / model
    if module is predict:
        args = [*command, "--model", str(path), "--input", str(photos / "in"), "--output", str(photos / "out")]
    elif command[0] == "superres":
        args = [command[0], "--model", str(path), "--data", str(photos / "in"), *command[1:]]
    else:
        args = [command[0], "--model", str(path), "--images", str(photos / "in"), "--masks", str(photos / "masks"),
                *command[1:]]
    assert module.main(args) == 2
    err = one_line_error(capsys)
    assert f"{path} is {what}" in err and f"`{module.__name__.split('.')[-1]} {command[0]}` expects {expected}" in err
    assert not (photos / "out").exists()


def test_a_foreign_model_with_the_wrong_output_is_named(photos, tmp_path, capsys):
    # Any Keras model is accepted, and its output checked: this one keeps the input's size.
    inputs = keras.Input((None, None, 3))
    path = tmp_path / "same_size.keras"
    keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs)).save(path)
    assert superres(path, photos / "in", photos / "out", "--scale", "2") == 2
    err = one_line_error(capsys)
    assert f"{path} returned an output of shape (1, 20, 24, 3) for an input of shape (1, 20, 24, 3)" in err
    assert "a x2 super-resolution model returns (1, 40, 48, 3)" in err


@pytest.mark.parametrize("content, problem", [
    (np.random.default_rng(0).bytes(4096), "not a zip archive"),
    (None, "not a zip archive"),  # a truncated .keras file
])
def test_a_file_that_is_not_a_model_is_not_called_missing(models, photos, capsys, content, problem):
    path = photos / "model.keras"
    whole = (models / "edsr.keras").read_bytes()
    path.write_bytes(content if content is not None else whole[: len(whole) // 2])
    assert superres(path, photos / "in", photos / "out") == 2
    err = one_line_error(capsys)
    assert f"{path} is not a valid .keras file ({problem}" in err and "not found" not in err.lower()
    assert evaluate.main(["superres", "--model", str(path), "--data", str(photos / "in")]) == 2
    assert f"{path} is not a valid .keras file" in one_line_error(capsys)


def test_output_that_is_a_file_is_refused(models, photos, capsys):
    (photos / "out.png").write_bytes(b"mine")
    assert superres(models / "edsr.keras", photos / "in", photos / "out.png") == 2
    assert f"--output {photos / 'out.png'} is a file" in one_line_error(capsys)
    assert (photos / "out.png").read_bytes() == b"mine"


def test_read_only_output_folder(models, photos, capsys):
    out = photos / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable (see the PermissionError test below)")
        assert superres(models / "edsr.keras", photos / "in", out) == 2
        err = one_line_error(capsys)
        assert f"cannot write {out / 'a_x2.png'}: Permission denied" in err and "nothing was written" in err
    finally:
        out.chmod(0o700)
    assert os.listdir(out) == []


@pytest.mark.parametrize("code, message", [
    (errno.EACCES, "cannot write {target}: Permission denied (the 1 output file(s) written before it are complete"),
    (errno.EROFS, "cannot write {target}: Read-only file system"),
    (errno.ENOSPC, "no space left on the device while writing {target}; the 1 output file(s) written before it "
                   "are complete and no half-written file is left"),
])
def test_write_errors_leave_earlier_outputs_and_no_temporaries(models, photos, monkeypatch, capsys, code, message):
    out = photos / "out"
    real_save = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the second output: half written, then the disk is full (or the folder read-only)
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(code, os.strerror(code), str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    assert superres(models / "edsr.keras", photos / "in", out) == 2
    assert message.format(target=out / "b_x2.png") in one_line_error(capsys)
    assert sorted(os.listdir(out)) == ["a_x2.png"]  # complete, and nothing hidden left beside it
    assert np.asarray(Image.open(out / "a_x2.png")).shape == (40, 48, 3)


# --- item 16: no output replaces another; unreadable inputs are skipped and counted ---


def test_inputs_sharing_a_stem_get_distinct_outputs(models, tmp_path, rng, capsys):
    src = tmp_path / "in"
    src.mkdir()
    jpg, png = (rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2))
    Image.fromarray(jpg).save(src / "photo.jpg", quality=95)
    Image.fromarray(png).save(src / "photo.png")
    Image.fromarray(png).save(src / "Other.PNG")
    out = tmp_path / "out"
    assert superres(models / "edsr.keras", src, out) == 0
    assert sorted(os.listdir(out)) == ["Other_x2.png", "photo.jpg_x2.png", "photo.png_x2.png"]
    fn = tiling.as_predict_fn(keras.saving.load_model(models / "edsr.keras"))
    for name in ("photo.jpg", "photo.png"):
        want = tiling.predict_whole(fn, load_image(src / name).astype(np.float32) / 255)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_x2.png")), want)
    # The same rule for every task's outputs, whatever the case of the names.
    names = predict.output_names(["d/a.png", "d/A.jpg", "d/a.png.jpg", "d/b.png"], ["mask", "overlay"])
    assert names == {"d/a.png": ["a.png_mask.png", "a.png_overlay.png"],
                     "d/A.jpg": ["A.jpg_mask.png", "A.jpg_overlay.png"],
                     "d/a.png.jpg": ["a.png.jpg_mask.png", "a.png.jpg_overlay.png"],
                     "d/b.png": ["b_mask.png", "b_overlay.png"]}


def test_unreadable_inputs_are_skipped_counted_and_exit_1(models, photos, capsys):
    src = photos / "in"
    whole = (src / "a.png").read_bytes()
    (src / "c_truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "d_garbage.jpg").write_bytes(b"not an image")
    out = photos / "out"
    assert superres(models / "edsr.keras", src, out) == 1
    captured = capsys.readouterr()
    assert sorted(os.listdir(out)) == ["a_x2.png", "b_x2.png"]
    assert f"warning: skipping {src / 'c_truncated.png'}" in captured.err
    assert f"warning: skipping {src / 'd_garbage.jpg'}" in captured.err
    assert "skipped 2 of 4 input images" in captured.err and "Traceback" not in captured.err
    # Nothing usable at all: nothing done, exit 2.
    (src / "a.png").write_bytes(b"x")
    (src / "b.png").write_bytes(b"y")
    assert superres(models / "edsr.keras", src, photos / "out2") == 2
    assert "error: none of the 4 input images could be used" in capsys.readouterr().err
    # The segmentation and style commands follow the same policy.
    (src / "a.png").write_bytes(whole)
    assert predict.main(["segmentation", "--model", str(models / "unet.keras"), "--input", str(src),
                         "--output", str(photos / "seg")]) == 1
    assert sorted(os.listdir(photos / "seg")) == ["a_mask.png", "a_overlay.png"]


# --- item 17: temporaries of killed runs; the decompression-bomb limit ---


def test_temporaries_left_by_a_killed_run_are_removed(models, photos, capsys):
    out = photos / "out"
    out.mkdir()
    stale = out / f".tmp-{dead_pid()}-a_x2.png"
    stale.write_bytes(b"half a png")
    live = out / f".tmp-{os.getpid()}-z_x2.png"  # a write still in progress (this process)
    live.write_bytes(b"in progress")
    assert superres(models / "edsr.keras", photos / "in", out) == 0
    assert "removed temporary files that an interrupted run left" in capsys.readouterr().out
    assert not stale.exists() and live.exists()
    assert sorted(os.listdir(out)) == [live.name, "a_x2.png", "b_x2.png"]


def png_header(width, height):
    """A PNG of `width` x `height` with no pixel data: Pillow reads the size from the header alone."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_limit_is_pillows_error_limit_and_the_readme_says_it(models, tmp_path, monkeypatch,
                                                                                 capsys):
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 and pixel_limit() == 2 * Image.MAX_IMAGE_PIXELS
    readme = (REPO / "README.md").read_text()
    assert "~179 MP" in readme and "89 MP" not in readme
    (tmp_path / "bomb.png").write_bytes(png_header(20_000, 9_000))  # 180 megapixels
    assert superres(models / "edsr.keras", tmp_path / "bomb.png", tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "has 180 megapixels, beyond Pillow's decompression-bomb limit of 179 megapixels" in err
    assert "--allow-large-images" in err
    with pytest.raises(DataError, match="limit of 179 megapixels"):  # training reads with the same limit
        load_image(tmp_path / "bomb.png")
    # Between Pillow's warning (89 MP) and its error (179 MP) an image is read, without a warning.
    Image.fromarray(np.zeros((10, 15, 3), np.uint8)).save(tmp_path / "big.png")  # 150 pixels
    Image.fromarray(np.zeros((15, 15, 3), np.uint8)).save(tmp_path / "bigger.png")  # 225 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert superres(models / "edsr.keras", tmp_path / "big.png", tmp_path / "out") == 0
    assert superres(models / "edsr.keras", tmp_path / "bigger.png", tmp_path / "out") == 2
    assert "has 225 pixels, beyond Pillow's decompression-bomb limit of 200 pixels" in one_line_error(capsys)
    assert superres(models / "edsr.keras", tmp_path / "bigger.png", tmp_path / "out", "--allow-large-images") == 0
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit is restored after --allow-large-images
