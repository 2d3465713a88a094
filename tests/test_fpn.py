import keras
import numpy as np
import pytest
from keras import ops
from seg_helpers import symbolic, tiny_backbone
from testing import run_model_saving_test

from kx_vision.models import FPN


def tiny_fpn(**kwargs):
    return FPN(**{"num_classes": 5, "backbone": tiny_backbone(), "pyramid_filters": 16,
                  "segmentation_filters": 8, **kwargs})


def test_fpn_structure_follows_lin_and_kirillov():
    model = tiny_fpn()
    # Taps at strides 4, 8, 16 (the stride-2 one is not a level) and the output at 32: P2..P5.
    assert model.skip_layers == ["stage1_conv", "stage2_conv", "stage3_conv"]
    assert model.pyramid_levels == [2, 3, 4, 5]
    names = {layer.name for layer in model.layers}
    assert {"p5_lateral", "p4_up", "p4_lateral", "p4_add", "p2_add", "merge", "classifier", "final_up"} <= names
    # Segmentation branches: P5 three conv + x2 stages, P4 two, P3 one, P2 one conv and no upsampling.
    for level, stages in {5: 3, 4: 2, 3: 1, 2: 1}.items():
        convs = sorted(n for n in names if n.startswith(f"segmentation_p{level}_") and n.endswith("_conv"))
        ups = [n for n in names if n.startswith(f"segmentation_p{level}_") and n.endswith("_up")]
        assert len(convs) == stages and len(ups) == level - 2, level
    assert model.get_layer("p3_lateral").kernel.shape == (1, 1, 24, 16)  # C3 (24 channels) -> 16
    assert model.get_layer("final_up").size == 4
    assert model.get_layer("merge").output.shape[-1] == 8
    assert tiny_fpn(merge="concat").get_layer("merge").output.shape[-1] == 4 * 8


@pytest.mark.parametrize("size", [(360, 480), (37, 53)])
def test_fpn_output_size_and_probabilities(size, rng):
    model = tiny_fpn()
    y = ops.convert_to_numpy(model(rng.random((1, *size, 3)).astype("float32")))
    assert y.shape == (1, *size, 5)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    binary = tiny_fpn(num_classes=1)
    yb = ops.convert_to_numpy(binary(rng.random((1, *size, 3)).astype("float32")))
    assert yb.shape == (1, *size, 1) and (yb > 0).all() and (yb < 1).all()


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "mobilenetv2"])
def test_fpn_over_applications_any_size(name):
    with symbolic():
        model = FPN(num_classes=12, backbone=name, backbone_weights=None, pyramid_filters=32, segmentation_filters=16)
        assert model.pyramid_levels == [2, 3, 4, 5]
        for size in [(360, 480), (37, 53)]:
            assert tuple(model.compute_output_spec(keras.KerasTensor((2, *size, 3))).shape) == (2, *size, 12)
    assert FPN.__name__ in keras.saving.get_registered_name(FPN)


def test_fpn_config_and_keras_round_trip(tmp_path, rng):
    model = tiny_fpn(merge="concat", pad_to=64)
    config = model.get_config()
    assert {k: config[k] for k in ("num_classes", "pyramid_filters", "segmentation_filters", "merge", "pad_to")} == \
        {"num_classes": 5, "pyramid_filters": 16, "segmentation_filters": 8, "merge": "concat", "pad_to": 64}
    clone = FPN.from_config(config)
    assert clone.get_config() == config and clone.count_params() == model.count_params()
    x = rng.random((1, 37, 53, 3)).astype("float32")
    # The backbone's own serialization may differ in details after a reload (as for the U-Net).
    loaded = run_model_saving_test(model, x, tmp_path, atol=1e-5, ignore_keys=("backbone",))
    assert loaded.skip_layers == model.skip_layers


def test_fpn_named_backbone_config_never_downloads(monkeypatch):
    from keras.src.utils import file_utils

    with symbolic():
        model = FPN(num_classes=2, backbone="mobilenetv2", backbone_weights=None, pyramid_filters=16,
                    segmentation_filters=8)
        monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: pytest.fail("tried to download weights"))
        clone = FPN.from_config(model.get_config())
        assert clone.skip_layers == model.skip_layers and clone.count_params() == model.count_params()


def test_fpn_training_lowers_the_loss(rng):
    model = tiny_fpn(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x = rng.random((2, 64, 64, 3)).astype("float32")
    labels = np.zeros((2, 64, 64, 1), "int64")  # a learnable layout: left, top right and bottom right
    labels[:, :32, 32:] = 1
    labels[:, 32:, 32:] = 2
    history = model.fit(x, labels, batch_size=2, epochs=8, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history


def test_fpn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="merge"):
        tiny_fpn(merge="sum")
    image = keras.Input((None, None, 3))
    shallow = keras.Model(image, keras.layers.Conv2D(8, 3, strides=2, padding="same")(image))
    with pytest.raises(ValueError, match="stride 4"):
        FPN(backbone=shallow)


def test_fpn_exports_for_any_image_size(tmp_path, rng):
    # Keras's bilinear UpSampling2D cannot be traced for unknown sizes on TensorFlow; the FPN's own
    # bilinear layer can, so the SavedModel serves any size from either backend.
    tf = pytest.importorskip("tensorflow")
    from kx_vision.export import export_model

    model = tiny_fpn(num_classes=3)
    loaded = tf.saved_model.load(export_model(model, tmp_path / "fpn"))
    for size in [(32, 64), (45, 61)]:
        x = rng.random((2, *size, 3)).astype("float32")
        np.testing.assert_allclose(np.asarray(loaded.serve(x)), ops.convert_to_numpy(model(x)), atol=1e-5)
