import keras
import numpy as np
import pytest
from keras import ops
from seg_helpers import symbolic, tiny_backbone

from kx_vision.backbones import build_backbone, find_skip_layers
from kx_vision.models import UNet, UpsampleHeadNet

EXPECTED_SKIPS = {
    "resnet50": ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"],
    "vgg16": ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"],
    "mobilenetv2": ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"],
}


# Building big applications is symbolic here: inside a StatelessScope Keras defers variable
# initialisation, which on JAX would otherwise compile one random kernel per weight shape (minutes).


@pytest.mark.parametrize("name", sorted(EXPECTED_SKIPS))
def test_skip_layers_found_automatically(name):
    with symbolic():
        backbone, _ = build_backbone(name, weights=None)
        assert [n for n, _, _ in find_skip_layers(backbone)] == EXPECTED_SKIPS[name]


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "mobilenetv2", "efficientnetb0"])
def test_dynamic_unet_over_applications_any_size(name):
    with symbolic():
        model = UNet(num_classes=12, backbone=name, backbone_weights=None, max_filters=32)
        assert len(model.decoder_filters) == len(model.skip_layers) >= 4
        for size in [(360, 480), (45, 61), (64, 64)]:
            spec = model.compute_output_spec(keras.KerasTensor((2, *size, 3)))
            assert tuple(spec.shape) == (2, *size, 12)


@pytest.mark.parametrize("upsampling", ["pixel_shuffle", "transpose"])
def test_unet_forward_odd_size_and_probabilities(upsampling, rng):
    model = UNet(num_classes=5, backbone=tiny_backbone(), upsampling=upsampling, max_filters=16)
    assert model.skip_layers == ["stage0_relu", "stage1_relu", "stage2_relu", "stage3_relu"] or \
        len(model.skip_layers) == 4
    y = ops.convert_to_numpy(model(rng.random((2, 37, 53, 3)).astype("float32")))
    assert y.shape == (2, 37, 53, 5)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    binary = UNet(num_classes=1, backbone=tiny_backbone(), max_filters=16)
    yb = ops.convert_to_numpy(binary(rng.random((1, 40, 40, 3)).astype("float32")))
    assert yb.shape == (1, 40, 40, 1) and (yb >= 0).all() and (yb <= 1).all()


def test_unet_keras_round_trip_without_custom_objects(tmp_path, rng):
    model = UNet(num_classes=3, backbone=tiny_backbone(), max_filters=16)
    x = rng.random((1, 33, 35, 3)).astype("float32")
    model.save(tmp_path / "unet.keras")
    loaded = keras.saving.load_model(tmp_path / "unet.keras")
    assert isinstance(loaded, UNet) and loaded.skip_layers == model.skip_layers
    without_backbone = lambda c: {k: v for k, v in c.items() if k != "backbone"}  # noqa: E731
    assert without_backbone(loaded.get_config()) == without_backbone(model.get_config())
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=1e-5)


def test_named_backbone_config_round_trip_never_downloads(monkeypatch):
    from keras.src.utils import file_utils

    with symbolic():
        model = UNet(num_classes=2, backbone="mobilenetv2", backbone_weights=None, max_filters=16)
        monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: pytest.fail("tried to download weights"))
        clone = UNet.from_config(model.get_config())
        assert clone.skip_layers == model.skip_layers and clone.count_params() == model.count_params()


def test_upsample_head_net(tmp_path, rng):
    model = UpsampleHeadNet(num_classes=4, backbone=tiny_backbone(), filters=8)
    y = ops.convert_to_numpy(model(rng.random((1, 45, 70, 3)).astype("float32")))
    assert y.shape == (1, 45, 70, 4)
    model.save(tmp_path / "naive.keras")
    loaded = keras.saving.load_model(tmp_path / "naive.keras")
    x = rng.random((1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=1e-5)
    with symbolic():
        spec = UpsampleHeadNet(num_classes=12, backbone="resnet50", backbone_weights=None).compute_output_spec(
            keras.KerasTensor((1, 360, 480, 3)))
        assert tuple(spec.shape) == (1, 360, 480, 12)


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(rng):
    model = UNet(num_classes=3, backbone=tiny_backbone(), max_filters=16)
    model.set_backbone_trainable(False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    before = [ops.convert_to_numpy(w).copy() for w in model.backbone.weights]
    decoder_before = ops.convert_to_numpy(model.get_layer("classifier").kernel).copy()
    x = rng.random((2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 32, 32, 1))
    model.fit(x, y, epochs=2, verbose=0)
    for a, w in zip(before, model.backbone.weights):  # kernels *and* BN moving mean/variance
        np.testing.assert_array_equal(a, ops.convert_to_numpy(w))
    assert not np.array_equal(decoder_before, ops.convert_to_numpy(model.get_layer("classifier").kernel))
    model.set_backbone_trainable(True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before[0], ops.convert_to_numpy(model.backbone.weights[0]))


def test_imagenet_backbone_download_failure_is_explained(monkeypatch):
    from keras.src.utils import file_utils

    from kx_vision.errors import WeightsUnavailableError

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info, symbolic():
        UNet(num_classes=2, backbone="mobilenetv2", backbone_weights="imagenet")
    assert "model.backbone_weights" in str(info.value) and "~/.keras" in str(info.value) or ".keras/models" in str(info.value)


def test_freeze_plan_by_layer_prefix():
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError
    from kx_vision.tasks import segmentation

    model = UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8)
    config = config_lib.load(segmentation.SegmentationConfig, None, ["freeze_backbone_epochs=2"])
    assert segmentation.freeze_plan(model, config, []) == (["backbone"], 2)
    config = config_lib.load(segmentation.SegmentationConfig, None,
                             ["freeze_backbone_epochs=1", "freeze_layers=backbone,middle_"])
    names, epochs = segmentation.freeze_plan(model, config, [])
    assert names[0] == "backbone" and {"middle_1_conv", "middle_2_bn"} <= set(names) and epochs == 1
    config = config_lib.load(segmentation.SegmentationConfig, None, ["freeze_backbone_epochs=1", "freeze_layers=nope"])
    with pytest.raises(ConfigError, match="freeze_layers"):
        segmentation.freeze_plan(model, config, [])
