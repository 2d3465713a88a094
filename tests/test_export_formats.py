"""ONNX, LiteRT and OpenVINO exports (issue 27): every model family round-trips through its runtime within 1e-4 of
the Keras model at two input sizes; the LiteRT file holds builtin operators only (the pixel shuffle one
DEPTH_TO_SPACE) and no tensor of rank above 4; quantised variants are smaller and close; `predict --runtime`
writes what the Keras path writes, and `--runtime auto` runs a .keras model in the fastest installed runtime on an
export it makes once into the cache. Keras converts these formats from the TensorFlow backend only: on JAX, the
export says so in one line, and the exports of the same `.keras` file (made by a TensorFlow subprocess) match
the JAX model. The runtimes are the optional extra `.[export]`: without one, its tests skip."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image
from seg_helpers import tiny_backbone
from tests_helpers import export_expectations, one_line_error

from kx_vision import export, predict
from kx_vision.errors import ArgumentError, KxVisionError
from kx_vision.inference import runtimes
from kx_vision.models import EDSR, FPN, StyleTransferNet, UNet

pytest.importorskip("tensorflow")  # the converters run on TensorFlow graphs, from either backend
TF = keras.backend.backend() == "tensorflow"
FORMATS = runtimes.FORMATS
MODULES = {"onnx": "onnxruntime", "litert": "ai_edge_litert.interpreter", "openvino": "openvino"}

MODELS = {
    "edsr": (lambda: EDSR(scale=2, num_blocks=1, num_filters=8), [(12, 16), (9, 13)]),
    "style": (lambda: StyleTransferNet(num_filters=8, num_blocks=1), [(24, 24), (27, 31)]),
    "unet": (lambda: UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8), [(32, 64), (45, 61)]),
    "fpn": (lambda: FPN(num_classes=4, backbone=tiny_backbone(), pyramid_filters=16, segmentation_filters=8),
            [(32, 64), (45, 61)]),
}
IMAGE_MODELS = {"edsr", "style"}  # outputs clipped to [0, 1]
UINT8_CHECKED = {"edsr", "unet"}  # exported with their uint8 endpoint too (an image model and a segmentation one)

# Made by a TensorFlow-backend process from `.keras` files that the JAX session saved (Keras cannot convert
# these models from JAX): argv = folder, names...
EXPORT_IN_TENSORFLOW = """
import sys, keras
from kx_vision.export import export_model
from kx_vision.models.loading import load_model
folder, names = sys.argv[1], sys.argv[2:]
for name in names:
    model = load_model(f"{folder}/{name}.keras")
    for format in ("onnx", "litert", "openvino"):
        export_model(model, f"{folder}/{name}_{format}", format=format, uint8_endpoint=name in ("edsr", "unet"))
print("ok")
"""


def runtime_or_skip(format):
    pytest.importorskip(MODULES[format], reason=f"the {format} runtime is the optional extra: pip install -e "
                                                 "'.[export]'")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`{name: (folder_of_format, expected)}` for every family and format, with the model's `.keras` file
    beside. From this backend where Keras converts (TensorFlow), else from a TensorFlow subprocess."""
    folder = tmp_path_factory.mktemp("exports")
    rng = np.random.default_rng(0)
    found = {}
    for name, (build, sizes) in MODELS.items():
        keras.utils.set_random_seed(0)
        model = build()
        model.save(folder / f"{name}.keras")
        found[name] = (model, export_expectations(model, sizes, rng, name in IMAGE_MODELS)[:4])
        if TF:
            for format in FORMATS:
                export.export_model(model, folder / f"{name}_{format}", format=format,
                                    uint8_endpoint=name in UINT8_CHECKED)
    if not TF:
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, "-c", EXPORT_IN_TENSORFLOW, str(folder), *MODELS], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    return folder, found


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_matches_keras_at_two_sizes(name, format, exported):
    runtime_or_skip(format)
    folder, found = exported
    predict_fn, export_ = runtimes.load(folder / f"{name}_{format}")
    inputs, outputs, *_ = found[name][1]
    assert export_.card["format"] == format and export_.card["input"]["shape"][:3] == [None, None, None]
    for x, want in zip(inputs, outputs):
        got = predict_fn(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{name} {format} {x.shape}")
    if name == "edsr":  # the random EDSR's outputs leave [0, 1]: the export clips them as the SavedModel does
        raw = ops.convert_to_numpy(found[name][0](inputs[0]))
        assert raw.min() < 0 or raw.max() > 1


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", sorted(UINT8_CHECKED))
def test_uint8_endpoint(name, format, exported):
    runtime_or_skip(format)
    folder, found = exported
    predict_fn, export_ = runtimes.load(folder / f"{name}_{format}", endpoint="serve_uint8")
    _, _, uint8, outputs8 = found[name][1]
    for x8, want8 in zip(uint8, outputs8):
        got8 = predict_fn(x8)
        assert got8.dtype == want8.dtype and got8.shape == want8.shape
        if name in IMAGE_MODELS:  # rounded: a value within 1e-4 of a half may round either way
            assert np.abs(got8.astype(int) - want8).max() <= 1 and np.mean(got8 == want8) > 0.99
        else:
            np.testing.assert_allclose(got8, want8, atol=1e-4)
    assert sorted(os.listdir(export_.folder)) == sorted(
        [runtimes.CARD, *(runtimes.model_file(format, e) for e in runtimes.ENDPOINTS)]
        + ([f"model{s}.bin" for s in ("", "_uint8")] if format == "openvino" else []))


def litert_graph(path):
    """`(operator names, the largest tensor rank)` of a .tflite file, read before any delegate rewrites it."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(
        model_path=str(path), experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    ranks = [len(t["shape_signature"]) for t in interpreter.get_tensor_details()]
    return names, max(ranks)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_litert_uses_builtin_operators_of_rank_four_at_most(name, exported):
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    folder, _ = exported
    builtin = {n for n in vars(BuiltinOperator) if n.isupper()} - {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}
    for file in ("model.tflite", "model_uint8.tflite") if name in UINT8_CHECKED else ("model.tflite",):
        names, rank = litert_graph(folder / f"{name}_litert" / file)
        assert names and set(names) <= builtin, sorted(set(names) - builtin)
        assert rank <= 4
        if name == "edsr":  # the pixel shuffle is one DEPTH_TO_SPACE, not reshapes of rank 6
            assert names.count("DEPTH_TO_SPACE") == 1 and "RESHAPE" not in names and "TRANSPOSE" not in names
        if name == "style":  # its two nearest-neighbour upsamplings too (Keras's tf.repeat would be rank-5 TILEs)
            assert names.count("DEPTH_TO_SPACE") == 2 and "TILE" not in names


def test_the_card_says_what_the_model_is(exported):
    folder, _ = exported
    cards = {name: json.loads((folder / f"{name}_onnx" / runtimes.CARD).read_text()) for name in MODELS}
    assert cards["edsr"]["task"] == "superres" and cards["edsr"]["scale"] == 2 and cards["edsr"]["outputs"] == "image"
    assert cards["unet"]["task"] == "segmentation" and cards["unet"]["num_classes"] == 3
    assert cards["fpn"]["num_classes"] == 4 and cards["fpn"]["outputs"] == "raw"
    assert cards["style"]["task"] == "style" and cards["style"]["min_size"] == 9
    assert {card["keras_backend"] for card in cards.values()} == {"tensorflow"}
    assert cards["unet"]["endpoints"] == {"serve": "model.onnx", "serve_uint8": "model_uint8.onnx"}
    assert cards["fpn"]["endpoints"] == {"serve": "model.onnx"}


# --- predict --runtime ---


def write_image(path, rng, size=(21, 27)):
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("format", FORMATS)
def test_predict_superres_runtime_matches_keras_path_tiled(format, exported, tmp_path, rng, capsys):
    runtime_or_skip(format)
    folder, _ = exported
    write_image(tmp_path / "photo.png", rng, (40, 44))
    # 2 x 2 tiles whose blending margins (overlap // 4) cover the model's receptive field, so the tiles agree
    # where they are blended: the export clips each tile before blending, the Keras path after.
    tiling = ["--tile", "32", "--overlap", "24"]
    keras_args = ["superres", "--model", str(folder / "edsr.keras"), "--input", str(tmp_path / "photo.png")]
    assert predict.main([*keras_args, "--output", str(tmp_path / "keras"), *tiling]) == 0
    runtime_args = ["superres", "--model", str(folder / f"edsr_{format}"), "--input", str(tmp_path / "photo.png")]
    assert predict.main([*runtime_args, "--output", str(tmp_path / "rt"), "--runtime", format, *tiling]) == 0
    assert predict.main([*runtime_args, "--output", str(tmp_path / "default"), *tiling]) == 0  # its own runtime
    assert predict.main([*runtime_args, "--output", str(tmp_path / "auto"), "--runtime", "auto", *tiling]) == 0
    want = np.asarray(Image.open(tmp_path / "keras" / "photo_x2.png")).astype(int)
    for out in ("rt", "default", "auto"):
        got = np.asarray(Image.open(tmp_path / out / "photo_x2.png")).astype(int)
        assert got.shape == want.shape == (80, 88, 3)
        assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


def test_predict_segmentation_and_style_runtime_match_keras(exported, tmp_path, rng):
    runtime_or_skip("onnx")
    folder, _ = exported
    write_image(tmp_path / "street.png", rng, (40, 56))
    for task, name, suffixes in (("segmentation", "unet", ("mask", "overlay")), ("style", "style", ("styled",))):
        common = [task, "--input", str(tmp_path / "street.png")]
        assert predict.main([*common, "--model", str(folder / f"{name}.keras"), "--output", str(tmp_path / "k")]) == 0
        assert predict.main([*common, "--model", str(folder / f"{name}_onnx"), "--output", str(tmp_path / "o"),
                             "--runtime", "onnx"]) == 0
        for suffix in suffixes:
            want = np.asarray(Image.open(tmp_path / "k" / f"street_{suffix}.png")).astype(int)
            got = np.asarray(Image.open(tmp_path / "o" / f"street_{suffix}.png")).astype(int)
            assert got.shape == want.shape and np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


def test_predict_runtime_refusals(exported, tmp_path, rng, capsys):
    folder, _ = exported
    write_image(tmp_path / "photo.png", rng)
    base = ["--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "out")]
    cases = [
        (["superres", "--model", str(folder / "edsr_onnx"), "--runtime", "keras"], "pass --runtime onnx"),
        (["superres", "--model", str(folder / "edsr_onnx"), "--runtime", "litert"], "pass --runtime onnx"),
        (["superres", "--model", str(folder / "unet_onnx"), "--runtime", "onnx"], "expects a super-resolution"),
        (["superres", "--model", str(folder / "edsr_onnx"), "--scale", "3"], "x2 model but --scale 3"),
        (["segmentation", "--model", str(folder / "edsr_litert"), "--runtime", "auto"], "expects a segmentation"),
        (["superres", "--model", str(folder / "edsr.keras"), "--runtime", "onnx"], "is not an exported model"),
    ]
    for argv, message in cases:
        assert predict.main([*argv, *base]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "out").exists()


def test_python_callers_read_python_argument_names(exported):
    folder, _ = exported
    with pytest.raises(ArgumentError, match=r"is a x2 model but scale=3$") as info:
        runtimes.resolve_superres(folder / "edsr_onnx", 3, "auto")
    assert info.value.arguments == ("scale",)
    with pytest.raises(ArgumentError, match=r"pass runtime=onnx \(or auto\)$"):
        runtimes.select(folder / "edsr_onnx", "keras")
    with pytest.raises(ArgumentError, match=r"not LiteRT: pass runtime=onnx"):
        runtimes.load(folder / "edsr_onnx", "litert")


# --- predict --runtime auto: the fastest installed runtime, exported once into the cache ---


def first_installed():
    """The runtime `--runtime auto` must pick here: the first of the ranking that is installed (or keras)."""
    return next(f for f in runtimes.FASTEST_FIRST if f == "keras" or runtimes.installed(runtimes.PACKAGES[f][0]))


def counting_exports(monkeypatch):
    calls = []
    real = runtimes.export_in_subprocess
    monkeypatch.setattr(runtimes, "export_in_subprocess", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_runtime_auto_exports_once_into_the_cache_and_matches_keras(model_file, tmp_path, rng, capsys, monkeypatch):
    format = first_installed()
    if format == "keras":
        pytest.skip("no runtime of the ranking is installed: pip install -e '.[export]'")
    monkeypatch.setenv("KX_VISION_CACHE", str(tmp_path / "cache"))
    calls = counting_exports(monkeypatch)
    write_image(tmp_path / "photo.png", rng, (40, 44))
    common = ["superres", "--model", str(model_file), "--input", str(tmp_path / "photo.png"),
              "--tile", "32", "--overlap", "24"]
    assert predict.main([*common, "--output", str(tmp_path / "keras"), "--runtime", "keras"]) == 0
    capsys.readouterr()
    assert predict.main([*common, "--output", str(tmp_path / "auto1"), "--runtime", "auto"]) == 0
    first = capsys.readouterr().out
    entries = list((tmp_path / "cache" / "exports").glob("edsr-*/*"))
    assert len(calls) == 1 and [e.name for e in entries] == [format], (first, entries)
    assert f"runtime auto: {runtimes.NAMES[format]}; exporting" in first
    card = json.loads((entries[0] / runtimes.CARD).read_text())
    assert card["format"] == format and list(card["endpoints"]) == ["serve"]
    assert not [p for p in entries[0].parent.iterdir() if p.name.startswith(".")]  # no temporary left
    stamps = {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()}

    assert predict.main([*common, "--output", str(tmp_path / "auto2"), "--runtime", "auto"]) == 0
    second = capsys.readouterr().out
    assert len(calls) == 1 and f"cached in {entries[0]}" in second  # reused: not exported again
    assert {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()} == stamps
    want = np.asarray(Image.open(tmp_path / "keras" / "photo_x2.png")).astype(int)
    for out in ("auto1", "auto2"):
        got = np.asarray(Image.open(tmp_path / out / "photo_x2.png")).astype(int)
        assert got.shape == want.shape == (80, 88, 3)
        assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


def test_runtime_auto_falls_back_to_keras_in_one_line(model_file, tmp_path, rng, capsys, monkeypatch):
    monkeypatch.setenv("KX_VISION_CACHE", str(tmp_path / "cache"))
    never = lambda *a, **k: pytest.fail("nothing is exported")  # noqa: E731
    monkeypatch.setattr(runtimes, "export_in_subprocess", never)
    write_image(tmp_path / "photo.png", rng)
    common = ["superres", "--model", str(model_file), "--input", str(tmp_path / "photo.png")]
    assert predict.main([*common, "--output", str(tmp_path / "keras"), "--runtime", "keras"]) == 0
    want = (tmp_path / "keras" / "photo_x2.png").read_bytes()
    capsys.readouterr()

    def auto(reason, tried=False):
        out = tmp_path / f"auto_{len(list(tmp_path.glob('auto_*')))}"
        assert predict.main([*common, "--output", str(out), "--runtime", "auto"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("runtime auto")]
        assert len(lines) == 1 + tried and lines[-1].startswith("runtime auto: Keras, ") and reason in lines[-1], lines
        assert not tried or lines[0].startswith("runtime auto: ONNX Runtime; exporting ")  # said before exporting
        assert (out / "photo_x2.png").read_bytes() == want  # the Keras path itself

    for format in runtimes.FORMATS:  # no runtime of the ranking installed: `import` of each fails
        monkeypatch.setitem(sys.modules, runtimes.PACKAGES[format][0].partition(".")[0], None)
    auto('none of OpenVINO, LiteRT, ONNX Runtime is installed (pip install -e ".[export]")')
    monkeypatch.undo()
    monkeypatch.setenv("KX_VISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtimes, "export_in_subprocess", never)
    installed = runtimes.installed
    monkeypatch.setattr(runtimes, "installed", lambda module: module != "tensorflow" and installed(module))
    monkeypatch.setattr(runtimes, "FASTEST_FIRST", ("onnx", "keras"))
    auto("exporting needs TensorFlow, which is not installed (pip install tensorflow)")  # a JAX-only machine
    monkeypatch.setattr(runtimes, "installed", lambda module: True)
    monkeypatch.setattr(runtimes, "export_in_subprocess", lambda *a, **k: "cannot convert the model: op XYZ")
    auto(f"exporting {model_file} for ONNX Runtime failed: cannot convert the model: op XYZ", tried=True)
    monkeypatch.setattr(runtimes, "FASTEST_FIRST", ("keras", "onnx"))
    auto("which ranks first")
    assert not (tmp_path / "cache").exists()


def test_the_cache_is_where_the_environment_says(monkeypatch, tmp_path, model_file):
    monkeypatch.delenv("KX_VISION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    entry = runtimes.cache_entry(str(model_file), "onnx")
    assert entry.startswith(str(tmp_path / "xdg" / "kx_vision" / "exports" / "edsr-")) and entry.endswith("/onnx")
    monkeypatch.setenv("KX_VISION_CACHE", str(tmp_path / "mine"))
    assert runtimes.cache_entry(str(model_file), "onnx").startswith(str(tmp_path / "mine" / "exports" / "edsr-"))
    preset = runtimes.cache_entry("edsr_8x32_x2", "openvino")  # a shipped preset: its config and weights
    assert os.path.basename(os.path.dirname(preset)).startswith("edsr_8x32_x2-")
    assert runtimes.cache_entry(str(tmp_path / "missing.keras"), "onnx") is None  # the Keras path says why
    assert runtimes.select("bicubic", "auto") is None


def test_missing_runtime_names_the_extra(exported, monkeypatch):
    folder, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(KxVisionError, match=r'needs the package onnxruntime.*pip install -e "\.\[export\]"'):
        runtimes.load(folder / "edsr_onnx")


# --- export: refusals, atomic writes, quantised variants ---


def test_bad_quantisation_is_refused_before_loading(model_file, tmp_path, capsys):
    out = str(tmp_path / "out")
    cases = [
        (["--format", "onnx", "--quantize", "int8", "--calibration-data", str(tmp_path)], "not available for --format onnx"),
        (["--format", "tf_saved_model", "--quantize", "float16"], "not available for --format tf_saved_model"),
        (["--format", "litert", "--quantize", "int8"], "needs --calibration-data FOLDER"),
        (["--format", "litert", "--calibration-data", str(tmp_path)], "used by --quantize int8 only"),
    ]
    for argv, message in cases:
        assert export.main([str(model_file), out, *argv]) == 2
        assert message in one_line_error(capsys)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.skipif(TF, reason="the TensorFlow backend converts every format")
@pytest.mark.parametrize("format", FORMATS)
def test_jax_names_the_backend_that_can(format, model_file, tmp_path, capsys):
    assert export.main([str(model_file), str(tmp_path / "out"), "--format", format]) == 2
    err = one_line_error(capsys)
    assert "needs the TensorFlow backend" in err and "KERAS_BACKEND=tensorflow kx-vision export" in err
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not TF, reason="Keras converts these formats from the TensorFlow backend only")
def test_cli_export_refuses_overwrite_and_a_failed_conversion_changes_nothing(model_file, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "onnx"
    assert export.main([str(model_file), str(out), "--format", "onnx", "--no-uint8-endpoint"]) == 0
    assert sorted(os.listdir(out)) == ["kx_vision.json", "model.onnx"]
    assert export.main([str(model_file), str(out), "--format", "litert"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    before = out.joinpath("model.onnx").read_bytes()

    def broken(endpoint, path, *args):
        open(path, "wb").write(b"half")  # half-written, as a converter that fails may leave it
        raise RuntimeError("Conversion failed: op XYZ is not supported\nmore detail")

    monkeypatch.setitem(export.WRITERS, "litert", broken)
    assert export.main([str(model_file), str(out), "--format", "litert", "--force"]) == 2
    err = one_line_error(capsys)
    assert "cannot convert the model for LiteRT: Conversion failed: op XYZ" in err and "nothing was" in err
    assert sorted(os.listdir(tmp_path)) == ["onnx"] and out.joinpath("model.onnx").read_bytes() == before
    monkeypatch.undo()
    assert export.main([str(model_file), str(out), "--format", "litert", "--force"]) == 0  # an export is replaced
    assert sorted(os.listdir(out)) == ["kx_vision.json", "model.tflite", "model_uint8.tflite"]
    assert sorted(os.listdir(tmp_path)) == ["onnx"]


def test_missing_converter_names_the_extra(model_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    assert export.main([str(model_file), str(tmp_path / "out"), "--format", "onnx"]) == 2
    err = one_line_error(capsys)
    assert ("needs the package tf2onnx" in err and 'pip install -e ".[export]"' in err) or (
        not TF and "needs the TensorFlow backend" in err)


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """An EDSR (a little wider, so its weights outweigh the files' headers) exported float32 and in every
    quantised variant, with an input and its Keras output."""
    if not TF:
        pytest.skip("Keras converts these formats from the TensorFlow backend only")
    from conftest import make_image_folders

    folder = tmp_path_factory.mktemp("quantised")
    keras.utils.set_random_seed(0)
    model = EDSR(scale=2, num_blocks=2, num_filters=32)
    calibration = make_image_folders(folder / "images") / "train"
    variants = [("onnx", "none"), ("onnx", "float16"), ("openvino", "none"), ("openvino", "float16"),
                ("litert", "none"), ("litert", "float16"), ("litert", "dynamic_int8"), ("litert", "int8")]
    for format, quantize in variants:
        export.export_model(model, folder / f"{format}_{quantize}", format=format, quantize=quantize,
                            uint8_endpoint=False, calibration_data=calibration if quantize == "int8" else None)
    x = np.random.default_rng(1).random((1, 20, 24, 3)).astype("float32")
    return folder, x, np.clip(ops.convert_to_numpy(model(x)), 0, 1)


def weight_bytes(folder, format):
    return os.path.getsize(folder / ("model.bin" if format == "openvino" else runtimes.model_file(format)))


@pytest.mark.parametrize("format,quantize,tolerance,ratio", [
    ("onnx", "float16", 0.01, 0.6), ("openvino", "float16", 0.01, 0.6), ("litert", "float16", 0.01, 0.6),
    ("litert", "dynamic_int8", 0.1, 0.4), ("litert", "int8", 0.15, 0.4)])
def test_quantised_variants_are_smaller_and_close(format, quantize, tolerance, ratio, quantised):
    runtime_or_skip(format)
    folder, x, want = quantised
    small, full = folder / f"{format}_{quantize}", folder / f"{format}_none"
    assert weight_bytes(small, format) < ratio * weight_bytes(full, format)
    got = runtimes.load(small)[0](x)
    difference = np.abs(got - want).max()
    assert 1e-6 < difference < tolerance  # quantised (not the float32 model), and close
    assert json.loads((small / runtimes.CARD).read_text())["quantize"] == quantize
    if quantize == "int8":
        names, _ = litert_graph(small / "model.tflite")
        assert "QUANTIZE" in names and "DEPTH_TO_SPACE" in names


def test_deploy_psnr_scores_a_model_and_its_exports(exported, tmp_path, capsys):
    from conftest import REPO, make_image_folders

    runtime_or_skip("onnx")
    runtime_or_skip("litert")
    sys.path.insert(0, str(REPO))
    from benchmarks import deploy_psnr

    folder, _ = exported
    data = make_image_folders(tmp_path) / "train"
    models = [str(folder / "edsr.keras"), str(folder / "edsr_onnx"), str(folder / "edsr_litert")]
    assert deploy_psnr.main([*models, "--data", str(data)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["format"] for r in records] == ["keras", "onnx", "litert"]
    assert all(abs(r["delta_db"]) < 0.01 for r in records) and 0 < records[0]["psnr_y"] < 60


def test_readme_deploy_snippet_runs(exported, tmp_path, monkeypatch, rng):
    from conftest import REPO

    runtime_or_skip("onnx")
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Deploy"):]
    snippet = section[section.index("```python") + len("```python"):]
    snippet = snippet[:snippet.index("```")]
    folder, found = exported
    (tmp_path / "exported").mkdir()
    os.symlink(folder / "edsr_onnx", tmp_path / "exported" / "edsr_x2_onnx")
    photo = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    upscaled = np.asarray(Image.open(tmp_path / "photo_x2.png")).astype(float)
    want = np.clip(ops.convert_to_numpy(found["edsr"][0](photo[None].astype("float32") / 255))[0], 0, 1) * 255
    assert upscaled.shape == (18, 22, 3) and np.abs(upscaled - want).max() <= 0.51
