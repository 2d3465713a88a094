import keras
import numpy as np
import pytest
from keras import ops
from testing import run_model_saving_test, run_serialization_test

from kx_vision.models import EDSR


def test_edsr_baseline_parameter_count_matches_pytorch_peer():
    # ../shared/bench/torch_edsr.py: EDSR(scale=2, blocks=16, f=64) has 1,369,859 parameters.
    assert EDSR(scale=2, num_blocks=16, num_filters=64).count_params() == 1_369_859


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_edsr_any_input_size(scale):
    model = EDSR(scale=scale, num_blocks=1, num_filters=8)
    y = model(np.zeros((2, 7, 5, 3), "float32"))
    assert tuple(y.shape) == (2, 7 * scale, 5 * scale, 3)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def test_edsr_output_is_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = EDSR(scale=2, num_blocks=1, num_filters=8)
        y = model(np.zeros((1, 6, 6, 3), "float32"))
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
        assert model.get_layer("block_0").compute_dtype == "bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_edsr_rejects_unsupported_scale():
    with pytest.raises(ValueError, match="scale"):
        EDSR(scale=5)


def test_x2_layers_seed_x4_by_name():
    x2 = EDSR(scale=2, num_blocks=2, num_filters=8)
    x4 = EDSR(scale=4, num_blocks=2, num_filters=8)
    names2 = {layer.name for layer in x2.layers}
    names4 = {layer.name for layer in x4.layers}
    assert names2 <= names4 and names4 - names2 == {"upsample_1_conv", "upsample_1_shuffle"}
    for name in names2:
        for a, b in zip(x2.get_layer(name).weights, x4.get_layer(name).weights):
            assert a.shape == b.shape


def test_edsr_config_and_keras_round_trip(tmp_path, rng):
    model = EDSR(scale=3, num_blocks=2, num_filters=8, residual_scale=0.2, rgb_mean=None)
    config = model.get_config()
    assert config["scale"] == 3 and config["residual_scale"] == 0.2 and config["rgb_mean"] is None
    run_serialization_test(model)
    run_model_saving_test(model, rng.random((1, 6, 9, 3)).astype("float32"), tmp_path)


def test_edsr_starts_close_to_nearest_neighbour_upsampling():
    # ICNR makes each sub-pixel block constant at initialisation, through every x2 stage.
    model = EDSR(scale=4, num_blocks=1, num_filters=8)
    upsampler = keras.Model(model.input, model.get_layer("upsample_1_shuffle").output)
    out = ops.convert_to_numpy(upsampler(np.random.rand(1, 6, 6, 3).astype("float32")))
    # The second stage's 2x2 blocks are constant (the first stage's are, before a 3x3 conv mixes them).
    inner = out.reshape(1, 12, 2, 12, 2, -1)
    assert (inner.max(axis=(2, 4)) - inner.min(axis=(2, 4))).max() < 1e-5
    assert out.std() > 0


def test_edsr_blur_is_off_by_default_and_smooths_each_shuffle(rng, tmp_path):
    plain = EDSR(scale=4, num_blocks=1, num_filters=8)
    assert plain.get_config()["blur"] is False
    assert not [layer.name for layer in plain.layers if "blur" in layer.name]
    blurred = EDSR(scale=4, num_blocks=1, num_filters=8, blur=True)
    assert [layer.name for layer in blurred.layers if "blur" in layer.name] == ["upsample_0_blur", "upsample_1_blur"]
    # The blur has no weights: a model trained without it loads into one with it, layer for layer.
    blurred.set_weights(plain.get_weights())
    x = rng.random((1, 6, 7, 3)).astype("float32")
    for i in range(2):
        shuffled, smoothed = keras.Model(blurred.input, [blurred.get_layer(f"upsample_{i}_shuffle").output,
                                                         blurred.get_layer(f"upsample_{i}_blur").output])(x)
        padded = np.pad(ops.convert_to_numpy(shuffled), ((0, 0), (1, 0), (1, 0), (0, 0)), mode="edge")
        reference = (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:] + padded[:, 1:, 1:]) / 4
        np.testing.assert_allclose(ops.convert_to_numpy(smoothed), reference, rtol=1e-5, atol=1e-6)
    y_plain, y_blurred = ops.convert_to_numpy(plain(x)), ops.convert_to_numpy(blurred(x))
    assert y_blurred.shape == y_plain.shape == (1, 24, 28, 3) and np.abs(y_blurred - y_plain).max() > 1e-4
    blurred.save(tmp_path / "blur.keras")
    loaded = keras.saving.load_model(tmp_path / "blur.keras")
    assert loaded.get_config() == blurred.get_config() and loaded.get_config()["blur"] is True
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), y_blurred, atol=1e-6)
