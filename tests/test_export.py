import os
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from seg_helpers import tiny_backbone
from tests_helpers import export_expectations

from kx_vision.export import export_model, main
from kx_vision.models import EDSR, StyleTransferNet, UNet

tf = pytest.importorskip("tensorflow")  # SavedModel export needs TensorFlow on either backend

MODELS = {
    "edsr": (lambda: EDSR(scale=2, num_blocks=1, num_filters=8), [(12, 16), (9, 13)]),
    "unet": (lambda: UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8), [(32, 64), (45, 61)]),
    "style": (lambda: StyleTransferNet(num_filters=8, num_blocks=1), [(24, 24), (27, 31)]),
}


JAX = keras.backend.backend() == "jax"


IMAGE_MODELS = {"edsr", "style"}  # exported with outputs clipped to [0, 1] and a uint8 image endpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported from this backend, with inputs at two sizes and what the endpoints must return,
    computed from the Keras model: image models' outputs clipped to [0, 1] (`serve`) and as rounded uint8
    (`serve_uint8`), segmentation probabilities as they are."""
    folder = tmp_path_factory.mktemp("exported")
    rng = np.random.default_rng(0)
    found = {}
    for name, (build, sizes) in MODELS.items():
        keras.utils.set_random_seed(0)
        model = build()
        inputs, outputs, uint8, uint8_outputs, raw = export_expectations(model, sizes, rng, name in IMAGE_MODELS)
        path = export_model(model, folder / name)
        np.savez(folder / f"{name}.npz", *inputs, *outputs)
        found[name] = (path, inputs, outputs, uint8, uint8_outputs, raw)
    return folder, found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_saved_model_matches_keras_at_two_sizes(name, exported):
    path, inputs, outputs, uint8, uint8_outputs, _ = exported[1][name]
    loaded = tf.saved_model.load(path)
    # TFSMLayer exists on the TensorFlow backend only (see the next test for JAX exports).
    layer = None if JAX else keras.layers.TFSMLayer(path, call_endpoint="serve")
    for x, want, x8, want8 in zip(inputs, outputs, uint8, uint8_outputs):
        np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(x))), want, atol=1e-4)
        if layer is not None:
            np.testing.assert_allclose(np.asarray(layer(x)), want, atol=1e-4)
        got8 = np.asarray(loaded.serve_uint8(tf.constant(x8)))
        assert got8.dtype == want8.dtype and got8.shape == want8.shape
        if name in IMAGE_MODELS:  # rounded: a value within 1e-4 of a half may round either way
            assert np.abs(got8.astype(int) - want8).max() <= 1 and np.mean(got8 == want8) > 0.99
        else:
            np.testing.assert_allclose(got8, want8, atol=1e-4)


def test_image_outputs_are_clipped(exported):
    """The random EDSR's raw outputs go well outside [0, 1]; both endpoints clip them (uint8: to 0 and
    255, not wrapped around), while segmentation probabilities come out as they are."""
    path, inputs, _, uint8, _, raw = exported[1]["edsr"]
    assert raw[0].min() < -0.1 and raw[0].max() > 1.1
    loaded = tf.saved_model.load(path)
    served = np.asarray(loaded.serve(tf.constant(inputs[0])))
    assert served.min() == 0.0 and served.max() == 1.0
    np.testing.assert_array_equal(served == 0, raw[0] <= 0)
    got8 = np.asarray(loaded.serve_uint8(tf.constant(uint8[0])))
    assert got8.dtype == np.uint8 and got8.min() == 0 and got8.max() == 255
    unet_path, unet_inputs, unet_outputs, *_ = exported[1]["unet"]
    unet = tf.saved_model.load(unet_path)  # kept: its variables go with it
    probabilities = np.asarray(unet.serve(tf.constant(unet_inputs[0])))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, unet_outputs[0], atol=1e-4)


TFSM_CHECK = """
import sys, numpy as np, keras
folder, names = sys.argv[1], sys.argv[2:]
for name in names:
    arrays = np.load(f"{folder}/{name}.npz")
    half = len(arrays.files) // 2
    layer = keras.layers.TFSMLayer(f"{folder}/{name}", call_endpoint="serve")
    for i in range(half):
        got = keras.ops.convert_to_numpy(layer(arrays[f"arr_{i}"]))
        np.testing.assert_allclose(got, arrays[f"arr_{i + half}"], atol=1e-4, err_msg=name)
print("ok")
"""


@pytest.mark.skipif(not JAX, reason="TensorFlow exports are checked with TFSMLayer in-process")
def test_jax_exports_load_in_tfsmlayer(exported):
    import subprocess
    import sys

    folder, found = exported
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", TFSM_CHECK, str(folder), *sorted(found)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_cli_refuses_overwrite_and_lambda(tmp_path, capsys):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    model.save(tmp_path / "edsr.keras")
    out = tmp_path / "sm"
    assert main([str(tmp_path / "edsr.keras"), str(out)]) == 0
    assert main([str(tmp_path / "edsr.keras"), str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([str(tmp_path / "edsr.keras"), str(out), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edsr.keras", "sm"]  # no temporary folder left
    inputs = keras.Input((4,))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    lambda_model.save(tmp_path / "lambda.keras")
    assert main([str(tmp_path / "lambda.keras"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load it with safe_mode on" in err and not (tmp_path / "x").exists()


def test_readme_serving_snippet_runs(tmp_path, monkeypatch, rng):
    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Export and serve"):]
    snippet = section[section.index("```python") + len("```python"):]
    snippet = snippet[:snippet.index("```")]
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    export_model(model, tmp_path / "exported" / "edsr_x2")
    photo = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    upscaled = np.asarray(Image.open(tmp_path / "photo_x2.png"))
    want = ops.convert_to_numpy(model(photo[None].astype("float32") / 255))[0]
    assert upscaled.shape == (18, 22, 3) and (want < 0).any() and (want > 1).any()
    assert np.abs(upscaled.astype(float) - np.clip(want, 0, 1) * 255).max() <= 0.51
