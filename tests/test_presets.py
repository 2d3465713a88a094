import fnmatch
import json
import os
import sys

import h5py
import keras
import numpy as np
import pytest
from conftest import REPO, shared_dir
from PIL import Image

import kx_vision
from kx_vision import evaluate, predict
from kx_vision.errors import KxVisionError, WeightsUnavailableError
from kx_vision.inference import tiling
from kx_vision.models import EDSR, StyleTransferNet, presets
from kx_vision.models.loading import load_model_or_preset

CARD = {
    "training_command": "python -m kx_vision.train superres --config configs/edsr_baseline_x2.yaml",
    "data": presets.DATA_291,
    "device": "NVIDIA H100",
    "training_minutes": 4.0,
    "results": {"Set5": {"psnr": 37.612, "ssim": 0.95871}, "Set14": {"psnr": 33.204, "ssim": 0.9141}},
}


def tiny_edsr(rng, scale=2):
    """A tiny EDSR with random weights everywhere (biases too), so a model whose weights were not loaded
    differs from it."""
    model = EDSR(scale=scale, num_blocks=1, num_filters=8)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


@pytest.fixture
def lr_batch(rng):
    return rng.random((1, 12, 10, 3)).astype(np.float32)


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    """An empty stand-in for the package's presets folder."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(presets, "PRESETS_DIR", str(folder))
    return folder


@pytest.fixture
def images_dir(tmp_path):
    """One of the package's public-domain validation photographs (rocket.jpg), downsized to keep tests fast."""
    from kx_vision.tasks.superres import SAMPLE_DIR

    folder = tmp_path / "images"
    folder.mkdir()
    image = Image.open(os.path.join(SAMPLE_DIR, "val", "rocket.jpg")).convert("RGB")
    image.resize((image.width // 6, image.height // 6), Image.BICUBIC).save(folder / "rocket.png")
    return folder


def test_round_trip_float32_is_exact(rng, lr_batch, tmp_path):
    model = tiny_edsr(rng, scale=4)
    path = model.save_to_preset(tmp_path / "p")
    loaded = EDSR.from_preset(path)
    assert type(loaded) is EDSR and loaded.get_config() == model.get_config() and loaded.scale == 4
    np.testing.assert_array_equal(np.asarray(loaded(lr_batch)), np.asarray(model(lr_batch)))
    # The same architecture without the preset's weights is far off: the weights really were loaded.
    fresh = EDSR(scale=4, num_blocks=1, num_filters=8)
    assert np.abs(np.asarray(fresh(lr_batch)) - np.asarray(model(lr_batch))).max() > 1e-2


def stored_arrays(directory):
    """`(dtypes, bytes)` of the arrays in a preset's weights file."""
    arrays = []
    with h5py.File(os.path.join(directory, presets.WEIGHTS_FILE)) as f:
        f.visititems(lambda name, obj: arrays.append(obj) if isinstance(obj, h5py.Dataset) else None)
        return {a.dtype for a in arrays}, sum(a.id.get_storage_size() for a in arrays)


def test_float16_storage_halves_the_file_and_loads_as_float32(rng, lr_batch, tmp_path):
    model = tiny_edsr(rng)
    full = model.save_to_preset(tmp_path / "f32")
    half = model.save_to_preset(tmp_path / "f16", dtype="float16")
    assert stored_arrays(full) == ({np.dtype("float32")}, 4 * model.count_params())
    assert stored_arrays(half) == ({np.dtype("float16")}, 2 * model.count_params())
    loaded = EDSR.from_preset(half)
    assert {w.dtype for w in loaded.weights} == {"float32"}
    for original, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(restored, original.astype(np.float16).astype(np.float32))
    difference = np.abs(np.asarray(loaded(lr_batch)) - np.asarray(model(lr_batch))).max()
    assert 0 < difference < 2e-3  # rounded (not bit-identical), but far below an 8-bit level (3.9e-3)
    assert json.loads((tmp_path / "f16" / presets.METADATA_FILE).read_text())["weights_dtype"] == "float16"


def test_layout_metadata_and_model_card(rng, tmp_path):
    model = tiny_edsr(rng)
    path = model.save_to_preset(tmp_path / "my_x2", card=CARD)
    assert sorted(os.listdir(path)) == sorted(
        [presets.CONFIG_FILE, presets.WEIGHTS_FILE, presets.METADATA_FILE, presets.README_FILE])
    assert os.listdir(tmp_path) == ["my_x2"]  # no temporary folder left behind
    config = json.loads((tmp_path / "my_x2" / presets.CONFIG_FILE).read_text())
    assert config["registered_name"] == "kx_vision>EDSR" and config["config"] == json.loads(
        json.dumps(model.get_config()))
    assert "build_config" not in config and "compile_config" not in config
    metadata = json.loads((tmp_path / "my_x2" / presets.METADATA_FILE).read_text())
    assert metadata["parameter_count"] == model.count_params() == 4531
    assert metadata["kx_vision_version"] == kx_vision.__version__
    assert metadata["keras_version"] == keras.version() and metadata["backend"] == keras.backend.backend()
    assert metadata["weights_dtype"] == "float32" and metadata["class_name"] == "EDSR"
    assert metadata["card"] == CARD and metadata["date_saved"][:2] == "20"
    readme = (tmp_path / "my_x2" / presets.README_FILE).read_text()
    for text in (CARD["training_command"], "non-commercial", "NVIDIA H100", "| Set5 | 37.61 | 0.9587 |",
                 "| Set14 | 33.20 | 0.9141 |", "4,531 parameters", "`num_blocks`: 1"):
        assert text in readme


def test_save_is_atomic_and_refuses_to_overwrite(rng, lr_batch, tmp_path):
    first, second = tiny_edsr(rng), tiny_edsr(rng)
    first.save_to_preset(tmp_path / "p")
    with pytest.raises(KxVisionError, match="exists; pass overwrite=True"):
        second.save_to_preset(tmp_path / "p")
    # A save that fails half-way (the card cannot be written as JSON) leaves the old preset untouched.
    with pytest.raises(KxVisionError, match="not JSON-serialisable"):
        second.save_to_preset(tmp_path / "p", card={"device": object()}, overwrite=True)
    with pytest.raises(KxVisionError, match="dtype must be one of float32, float16"):
        second.save_to_preset(tmp_path / "q", dtype="bfloat16")
    assert os.listdir(tmp_path) == ["p"]
    np.testing.assert_array_equal(np.asarray(EDSR.from_preset(tmp_path / "p")(lr_batch)), np.asarray(first(lr_batch)))
    second.save_to_preset(tmp_path / "p", overwrite=True)
    np.testing.assert_array_equal(np.asarray(EDSR.from_preset(tmp_path / "p")(lr_batch)), np.asarray(second(lr_batch)))
    assert os.listdir(tmp_path) == ["p"]
    # A folder with anything else in it, or a file, is never replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(KxVisionError, match="holds files that are not a preset's \\(notes.txt\\)"):
        second.save_to_preset(tmp_path / "mine", overwrite=True)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(KxVisionError, match="exists and is not a folder"):
        second.save_to_preset(tmp_path / "file", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and (tmp_path / "file").read_text() == "keep"
    # An empty folder (e.g. made by hand beforehand) is simply filled.
    (tmp_path / "empty").mkdir()
    second.save_to_preset(tmp_path / "empty")
    assert len(os.listdir(tmp_path / "empty")) == 4


def test_known_name_without_shipped_weights_says_none_is_available(shipped_dir):
    for name in ("edsr_baseline_x2", "edsr_baseline_x4"):
        with pytest.raises(WeightsUnavailableError) as info:
            EDSR.from_preset(name)
        message = str(info.value)
        assert f"no pretrained weights are available yet for preset '{name}'" in message
        assert f"configs/{name}.yaml" in message


def test_shipped_preset_loads_by_name(rng, lr_batch, shipped_dir):
    model = tiny_edsr(rng)
    model.save_to_preset(shipped_dir / "edsr_baseline_x2", dtype="float16")
    loaded = EDSR.from_preset("edsr_baseline_x2")
    assert np.abs(np.asarray(loaded(lr_batch)) - np.asarray(model(lr_batch))).max() < 2e-3


def test_unknown_name_lists_the_known_presets(tmp_path):
    with pytest.raises(KxVisionError, match="unknown preset 'edsr_x3': known presets are edsr_8x32_x2, "
                                            "edsr_8x32_x4, edsr_baseline_x2, edsr_baseline_x4"):
        EDSR.from_preset("edsr_x3")


@pytest.mark.parametrize("missing", [presets.CONFIG_FILE, presets.WEIGHTS_FILE])
def test_directory_missing_a_file_names_it(rng, tmp_path, missing):
    path = tiny_edsr(rng).save_to_preset(tmp_path / "p")
    os.remove(os.path.join(path, missing))
    with pytest.raises(KxVisionError, match=f"preset directory .*p has no {missing}"):
        EDSR.from_preset(path)


def test_broken_or_foreign_presets_are_refused_clearly(rng, tmp_path):
    # A preset of another model class.
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    presets.save(other, tmp_path / "dense")
    with pytest.raises(KxVisionError, match="not a registered kx_vision model"):
        EDSR.from_preset(tmp_path / "dense")
    # Unreadable JSON.
    path = tiny_edsr(rng).save_to_preset(tmp_path / "p")
    config_path = os.path.join(path, presets.CONFIG_FILE)
    good = open(config_path).read()
    with open(config_path, "w") as f:
        f.write("{not json")
    with pytest.raises(KxVisionError, match="config.json is not a valid JSON file"):
        EDSR.from_preset(path)
    # A config whose architecture does not match the weights.
    config = json.loads(good)
    config["config"]["num_blocks"] = 2
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(KxVisionError, match="model.weights.h5 does not fit the model of its config.json"):
        EDSR.from_preset(path)
    # A config with an argument EDSR does not take.
    config["config"].update(num_blocks=1, scale=5)
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(KxVisionError, match="cannot build the model of .*config.json: ArgumentError: EDSR: scale=5"):
        EDSR.from_preset(path)


def test_a_preset_of_another_kx_vision_model_is_not_an_edsr(tmp_path, lr_batch):
    style = StyleTransferNet(num_filters=4, num_blocks=1)
    presets.save(style, tmp_path / "style")
    with pytest.raises(KxVisionError, match="preset .*style holds a model of class StyleTransferNet, not EDSR"):
        EDSR.from_preset(tmp_path / "style")
    # The generic loader (the command lines' --model) takes it.
    loaded = load_model_or_preset(tmp_path / "style")
    assert type(loaded) is StyleTransferNet
    np.testing.assert_array_equal(np.asarray(loaded(lr_batch)), np.asarray(style(lr_batch)))


def test_evaluate_and_predict_take_a_preset_directory(rng, tmp_path, images_dir, capsys):
    model = tiny_edsr(rng)
    model.save(tmp_path / "m.keras")
    preset = model.save_to_preset(tmp_path / "preset")
    scores = []
    for spec in (str(tmp_path / "m.keras"), preset):
        assert evaluate.main(["superres", "--model", spec, "--data", str(images_dir), "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert scores[1]["psnr"] == scores[0]["psnr"] and scores[1]["scale"] == 2 and scores[1]["images"] == 1
    outputs = []
    for i, spec in enumerate((str(tmp_path / "m.keras"), preset)):
        out = tmp_path / f"out{i}"
        assert predict.main(["superres", "--model", spec, "--input", str(images_dir / "rocket.png"),
                             "--output", str(out), "--tile", "0"]) == 0
        outputs.append(np.asarray(Image.open(out / "rocket_x2.png")))
    source = np.asarray(Image.open(images_dir / "rocket.png"))
    assert outputs[1].shape == (source.shape[0] * 2, source.shape[1] * 2, 3)
    np.testing.assert_array_equal(outputs[1], outputs[0])


def test_cli_preset_names(rng, tmp_path, images_dir, shipped_dir, capsys):
    args = ["--input", str(images_dir / "rocket.png"), "--output", str(tmp_path / "out")]
    assert predict.main(["superres", "--model", "edsr_baseline_x2", *args]) == 2
    err = capsys.readouterr().err
    assert "no pretrained weights are available yet for preset 'edsr_baseline_x2'" in err and "Traceback" not in err
    assert evaluate.main(["superres", "--model", "edsr_x3", "--data", str(images_dir)]) == 2
    known = "edsr_8x32_x2, edsr_8x32_x4, edsr_baseline_x2, edsr_baseline_x4"
    assert f"is not a .keras file, a preset directory, or a known preset ({known})" in capsys.readouterr().err
    assert evaluate.main(["superres", "--model", "edsr_baseline_x4", "--data", str(images_dir), "--scale", "2"]) == 2
    assert "no pretrained weights are available yet for preset 'edsr_baseline_x4'" in capsys.readouterr().err
    # Once shipped, the name works like a file.
    tiny_edsr(rng).save_to_preset(shipped_dir / "edsr_baseline_x2")
    assert predict.main(["superres", "--model", "edsr_baseline_x2", *args]) == 0
    assert (tmp_path / "out" / "rocket_x2.png").exists()


def test_shipped_card_problems_catch_unmeasured_weights(rng, tmp_path):
    model = tiny_edsr(rng)
    path = model.save_to_preset(tmp_path / "edsr_baseline_x2", card={"data": "T91 + BSD200"})
    problems = presets.shipped_card_problems(path)
    for text in ("num_blocks=1, expected 16", "num_filters=8, expected 64", "no training_command", "no device",
                 "no training_minutes", "no measured Set5 psnr", "no measured Set14 psnr", "non-commercial"):
        assert any(text in p for p in problems), (text, problems)
    path = model.save_to_preset(tmp_path / "edsr_baseline_x2", card=CARD, overwrite=True)
    assert presets.shipped_card_problems(path) == ["config.json has num_blocks=1, expected 16",
                                                   "config.json has num_filters=8, expected 64"]
    config_path = os.path.join(path, presets.CONFIG_FILE)
    config = json.loads(open(config_path).read())
    config["config"].update(num_blocks=16, num_filters=64)  # the checker reads the config, not the weights
    with open(config_path, "w") as f:
        json.dump(config, f)
    assert presets.shipped_card_problems(path) == []
    assert presets.shipped_card_problems(tmp_path / "other") == [
        "other is not a known preset (edsr_8x32_x2, edsr_8x32_x4, edsr_baseline_x2, edsr_baseline_x4)"]


def test_every_shipped_preset_is_known_measured_and_packaged():
    """Never ship weights that were not measured: a folder in kx_vision/presets must pass
    `shipped_card_problems`, and pyproject's package data must include its files."""
    if sys.version_info >= (3, 11):
        import tomllib

        patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
            "kx_vision"]
        for file in (presets.CONFIG_FILE, presets.WEIGHTS_FILE, presets.METADATA_FILE, presets.README_FILE):
            assert any(fnmatch.fnmatch(f"presets/edsr_baseline_x2/{file}", p) for p in patterns), file
    for name in presets.shipped_presets():
        assert presets.shipped_card_problems(os.path.join(presets.PRESETS_DIR, name)) == [], name


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", presets.shipped_presets())
def test_shipped_preset_reproduces_its_card_on_set5(name):
    """Each shipped preset's Set5 Y-PSNR on the CPU equals its card's to 0.01 dB."""
    card = json.loads(open(os.path.join(presets.PRESETS_DIR, name, presets.METADATA_FILE)).read())["card"]
    predict_fn, scale = tiling.resolve_superres_model(name, None)
    names, images = evaluate.load_hr_images(str(shared_dir("sr", "Set5")))
    _, mean = evaluate.evaluate(predict_fn, names, images, scale)
    assert mean["psnr"] == pytest.approx(card["results"]["Set5"]["psnr"], abs=0.01)
