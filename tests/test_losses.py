import keras
import numpy as np
import pytest
from keras import ops
from testing import run_serialization_test

from kx_vision.errors import WeightsUnavailableError
from kx_vision.losses import PerceptualLoss, to_caffe


def test_to_caffe_matches_keras_vgg16_preprocessing(rng):
    x = rng.random((2, 5, 4, 3)).astype("float32")
    want = keras.applications.vgg16.preprocess_input(x * 255.0)
    np.testing.assert_allclose(ops.convert_to_numpy(to_caffe(x)), want, atol=1e-3)


def test_perceptual_loss_values(rng):
    loss = PerceptualLoss(weights=None, layer_weights=(0.2, 0.7, 0.1), pixel_weight=0.01)
    a = rng.random((2, 32, 32, 3)).astype("float32")
    b = rng.random((2, 32, 32, 3)).astype("float32")
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    feats_a = [ops.convert_to_numpy(f) for f in loss.build_extractor()(to_caffe(a))]
    feats_b = [ops.convert_to_numpy(f) for f in loss.build_extractor()(to_caffe(b))]
    want = 0.01 * np.abs(a - b).mean() + sum(
        w * np.abs(fa - fb).mean() for w, fa, fb in zip((0.2, 0.7, 0.1), feats_a, feats_b)
    )
    assert float(loss(a, b)) == pytest.approx(want, rel=1e-4)
    assert not loss.build_extractor().trainable_weights


def test_perceptual_loss_serializes():
    # Config only: with weights=None each instance draws its own random VGG16, so values differ by design.
    loss = PerceptualLoss(weights=None, layer_names=("block1_conv2",), layer_weights=(1.0,))
    restored = run_serialization_test(loss)
    assert restored.layer_names == ("block1_conv2",)


def test_perceptual_loss_weights_from_file(tmp_path, rng):
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    loss = PerceptualLoss(weights=str(path), layer_names=("block2_conv2",), layer_weights=(1.0,))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loss.build_extractor().get_layer("block1_conv1").kernel),
        ops.convert_to_numpy(vgg.get_layer("block1_conv1").kernel),
    )
    # VGG16 is needed only when the loss is computed: only then does a missing file fail, naming it and the key.
    missing = PerceptualLoss(weights=str(tmp_path / "missing.h5"))
    with pytest.raises(WeightsUnavailableError, match=r"missing\.h5.*loss\.vgg_weights"):
        missing(rng.random((1, 16, 16, 3)), rng.random((1, 16, 16, 3)))


def test_imagenet_download_failure_is_explained(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    loss = PerceptualLoss(weights="imagenet")  # nothing is fetched until VGG16 is needed
    with pytest.raises(WeightsUnavailableError) as info:
        loss.build_extractor()
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "config key 'loss.name' to l1" in message and "config key 'loss.vgg_weights'" in message
    assert "--set" not in message  # a library error names config keys, not command-line syntax


def test_superres_mse_loss_is_the_mean_squared_error(rng):
    from kx_vision import config as config_lib
    from kx_vision.tasks import superres

    config = config_lib.load(superres.SuperResConfig, None, ["loss.name=mse"])
    loss = superres.SuperResTask(config).build_loss()
    a, b = rng.random((2, 8, 8, 3)).astype("float32"), rng.random((2, 8, 8, 3)).astype("float32")
    assert float(keras.ops.convert_to_numpy(loss(a, b))) == pytest.approx(float(np.mean((a - b) ** 2)), rel=1e-5)
    l1 = superres.SuperResTask(config_lib.load(superres.SuperResConfig, None, ["loss.name=l1"])).build_loss()
    assert float(keras.ops.convert_to_numpy(l1(a, b))) == pytest.approx(float(np.mean(np.abs(a - b))), rel=1e-5)
