import keras
import numpy as np
import pytest
from keras import ops
from seg_helpers import symbolic, tiny_backbone
from testing import run_model_saving_test

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
    # The backbone's own serialization may differ in details after a reload.
    loaded = run_model_saving_test(model, x, tmp_path, atol=1e-5, ignore_keys=("backbone",))
    assert isinstance(loaded, UNet) and loaded.skip_layers == model.skip_layers


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
    x = rng.random((1, 32, 32, 3)).astype("float32")
    run_model_saving_test(model, x, tmp_path, atol=1e-5, ignore_keys=("backbone",))
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
    message = str(info.value)
    assert "config key 'model.backbone_weights'" in message and "--set" not in message
    assert "~/.keras" in message or ".keras/models" in message


def test_freeze_plan_by_layer_prefix():
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError
    from kx_vision.tasks import segmentation

    model = UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8)
    config = config_lib.load(segmentation.SegmentationConfig, None, ["freeze_backbone_epochs=2"])
    assert segmentation.SegmentationTask(config).freeze_plan(model, []) == (["backbone"], 2)
    config = config_lib.load(segmentation.SegmentationConfig, None,
                             ["freeze_backbone_epochs=1", "freeze_layers=backbone,middle_"])
    names, epochs = segmentation.SegmentationTask(config).freeze_plan(model, [])
    assert names[0] == "backbone" and {"middle_1_conv", "middle_2_bn"} <= set(names) and epochs == 1
    config = config_lib.load(segmentation.SegmentationConfig, None, ["freeze_backbone_epochs=1", "freeze_layers=nope"])
    with pytest.raises(ConfigError, match="freeze_layers"):
        segmentation.SegmentationTask(config).freeze_plan(model, [])


def numpy_lesson_unet_block(x, skip, transpose_kernel, transpose_bias, skip_kernel, skip_bias, gamma, beta, mean,
                            variance, epsilon):
    """The lesson's UnetBlock.forward in NumPy: bn(relu(cat(tr_conv(up_p), x_conv(x_p)))), BN at inference."""
    n, h, w, _ = x.shape
    # A 2x2 stride-2 transposed conv writes x[i, j] @ kernel[a, b] to output pixel (2i + a, 2j + b);
    # Keras stores its kernel as (height, width, out, in).
    up = np.einsum("nijc,aboc->niajbo", x, transpose_kernel).reshape(n, 2 * h, 2 * w, -1) + transpose_bias
    lateral = np.einsum("nhwc,co->nhwo", skip, skip_kernel[0, 0]) + skip_bias
    joined = np.maximum(np.concatenate([up, lateral], axis=-1), 0.0)
    return (joined - mean) / np.sqrt(variance + epsilon) * gamma + beta


def test_lesson_unet_block_matches_numpy(rng):
    from kx_vision.models.unet import apply_lesson_unet_block

    deep, skip_in = keras.Input((None, None, 6)), keras.Input((None, None, 5))
    block = keras.Model([deep, skip_in], apply_lesson_unet_block(deep, skip_in, 8, name="up1"))
    names = [layer.name for layer in block.layers[2:]]
    assert names == ["up1_up_transpose", "up1_skip_conv", "up1_concat", "up1_relu", "up1_bn"]
    bn = block.get_layer("up1_bn")
    # Random values everywhere (BN statistics too), so no term can be dropped unnoticed.
    for layer in block.layers[2:]:
        for variable in layer.weights:
            value = rng.normal(size=variable.shape)
            variable.assign((np.abs(value) + 0.5 if "variance" in variable.path else value).astype("float32"))
    x = rng.normal(size=(2, 3, 4, 6)).astype("float32")
    skip = rng.normal(size=(2, 6, 8, 5)).astype("float32")
    y = ops.convert_to_numpy(block([x, skip], training=False))
    transpose, lateral = block.get_layer("up1_up_transpose"), block.get_layer("up1_skip_conv")
    weights = [ops.convert_to_numpy(v) for v in (transpose.kernel, transpose.bias, lateral.kernel, lateral.bias,
                                                 bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)]
    assert weights[0].shape == (2, 2, 4, 6) and weights[2].shape == (1, 1, 5, 4)  # n_out // 2 each
    np.testing.assert_allclose(y, numpy_lesson_unet_block(x, skip, *weights, bn.epsilon), rtol=1e-4, atol=1e-4)


def test_lesson_unet_decoder(tmp_path, rng):
    model = UNet(num_classes=4, backbone=tiny_backbone(), decoder="lesson", max_filters=16)
    config = model.get_config()
    assert (config["decoder"], config["upsampling"], config["last_cross"], config["blur"]) == \
        ("lesson", "transpose", False, False)
    names = {layer.name for layer in model.layers}
    assert {"backbone_relu", "decoder_0_skip_conv", "decoder_3_bn"} <= names
    assert not {n for n in names if n.startswith(("middle", "last_cross")) or n.endswith("_skip_bn")}
    assert model.decoder_filters == [16] * len(model.skip_layers)
    # The tiny backbone's shallowest skip is at half resolution: the lesson's up5 is the classifier.
    assert isinstance(model.get_layer("classifier"), keras.layers.Conv2DTranspose)
    x = rng.random((2, 37, 53, 3)).astype("float32")
    y = ops.convert_to_numpy(model(x))
    assert y.shape == (2, 37, 53, 4)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    model.save(tmp_path / "lesson.keras")
    loaded = keras.saving.load_model(tmp_path / "lesson.keras")
    assert loaded.get_config()["decoder"] == "lesson"
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), y, atol=1e-5)
    with symbolic():  # the lesson's ResNet: skips at /2 .. /16, one x2 transposed conv to the classes
        resnet = UNet(num_classes=12, backbone="resnet50", backbone_weights=None, decoder="lesson")
        assert resnet.decoder_filters == [256] * 4
        assert tuple(resnet.compute_output_spec(keras.KerasTensor((1, 360, 480, 3))).shape) == (1, 360, 480, 12)
        vgg = UNet(num_classes=2, backbone="vgg16", backbone_weights=None, decoder="lesson", max_filters=16)
        assert isinstance(vgg.get_layer("classifier"), keras.layers.Conv2D)  # vgg16's first skip is full size
        assert tuple(vgg.compute_output_spec(keras.KerasTensor((1, 45, 61, 3))).shape) == (1, 45, 61, 2)


def test_unet_decoder_options_are_checked():
    with pytest.raises(ValueError, match="decoder"):
        UNet(backbone=tiny_backbone(), decoder="fastai_v1")
    with pytest.raises(ValueError, match="last cross"):
        UNet(backbone=tiny_backbone(), decoder="lesson", last_cross=True)
    with pytest.raises(ValueError, match="even"):
        UNet(backbone=tiny_backbone(), decoder="lesson", max_filters=15)
    default = UNet(backbone=tiny_backbone(), max_filters=8).get_config()
    assert (default["decoder"], default["upsampling"], default["last_cross"], default["blur"]) == \
        ("fastai", "pixel_shuffle", True, False)


@pytest.mark.parametrize("decoder", ["fastai", "lesson"])
def test_unet_blur_smooths_every_upsampling(decoder, rng):
    model = UNet(num_classes=3, backbone=tiny_backbone(), decoder=decoder, blur=True, max_filters=8)
    assert model.get_config()["blur"] is True
    blurs = [layer.name for layer in model.layers if layer.name.endswith("_blur")]
    ups = [layer.name for layer in model.layers if layer.name.endswith(("_shuffle", "_transpose"))]
    if decoder == "lesson":
        ups.append("classifier")
    assert len(blurs) == len(ups) >= 5
    x = rng.random((1, 40, 36, 3)).astype("float32")
    # fastai's order: up, ReLU, blur; the lesson's: transposed conv, blur, then (after the concat) ReLU.
    source = "decoder_3_up_transpose" if decoder == "lesson" else "decoder_3_up_relu"
    before, after = keras.Model(model.input, [model.get_layer(source).output,
                                              model.get_layer("decoder_3_up_blur").output])(x)
    padded = np.pad(ops.convert_to_numpy(before), ((0, 0), (1, 0), (1, 0), (0, 0)), mode="edge")
    reference = (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:] + padded[:, 1:, 1:]) / 4
    np.testing.assert_allclose(ops.convert_to_numpy(after), reference, rtol=1e-5, atol=1e-6)
    assert ops.convert_to_numpy(model(x)).shape == (1, 40, 36, 3)


def test_task_builds_each_architecture_and_decoder():
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError
    from kx_vision.models import FPN
    from kx_vision.tasks import segmentation, superres

    def build(*assignments):
        config = config_lib.load(segmentation.SegmentationConfig, None, [
            "model.backbone=simple", "model.max_filters=8", "num_classes=3", "ignore_class=null", *assignments])
        task = segmentation.SegmentationTask(config)
        task.check_config()
        return task.build_model()

    assert isinstance(build("model.architecture=fpn"), FPN)
    lesson = build("model.decoder=lesson").get_config()
    assert lesson["decoder"] == "lesson" and lesson["upsampling"] == "transpose"  # the lesson's own upsampling
    fastai = build("model.blur=true").get_config()
    assert fastai["decoder"] == "fastai" and fastai["upsampling"] == "pixel_shuffle" and fastai["blur"] is True
    with pytest.raises(ConfigError, match="must be even with model.decoder=lesson"):
        build("model.decoder=lesson", "model.max_filters=7")
    edsr = superres.SuperResTask(config_lib.load(superres.SuperResConfig, None, ["model.blur=true"])).build_model()
    assert edsr.get_config()["blur"] is True
