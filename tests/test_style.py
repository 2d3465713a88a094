import json

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image
from testing import run_model_saving_test

from kx_vision.layers import ReflectionPadding2D
from kx_vision.losses import StyleTransferLoss, gram_matrix
from kx_vision.metrics import StyleLossPart
from kx_vision.models import StyleTransferNet


@pytest.fixture(scope="module")
def small_net():
    return StyleTransferNet(num_filters=8, num_blocks=5)


@pytest.mark.parametrize("size", [(64, 64), (41, 53), (67, 90)])
def test_output_size_equals_input_size(small_net, rng, size):
    y = ops.convert_to_numpy(small_net(rng.random((2, *size, 3)).astype("float32")))
    assert y.shape == (2, *size, 3) and y.min() >= 0 and y.max() <= 1


def test_batched_gram_matches_numpy_and_differs_from_unbatched(rng):
    f = rng.normal(size=(3, 5, 4, 6)).astype("float32")
    got = ops.convert_to_numpy(gram_matrix(f))
    for i in range(3):
        flat = f[i].reshape(-1, 6)
        np.testing.assert_allclose(got[i], flat.T @ flat / (5 * 4 * 6), rtol=1e-5, atol=1e-6)
    # The lesson's pitfall: a Gram over the flattened batch mixes images.
    mixed = f.reshape(-1, 6).T @ f.reshape(-1, 6) / (5 * 4 * 6)
    assert not np.allclose(got[0], mixed, atol=1e-3)


def test_reflection_padding_and_centre_crop_match_numpy(rng):
    x = rng.random((2, 7, 9, 3)).astype("float32")
    got = ops.convert_to_numpy(ReflectionPadding2D(((2, 3), (4, 1)))(x))
    np.testing.assert_array_equal(got, np.pad(x, [(0, 0), (2, 3), (4, 1), (0, 0)], mode="reflect"))
    crop = ops.convert_to_numpy(keras.layers.Cropping2D(2)(x))
    np.testing.assert_array_equal(crop, x[:, 2:-2, 2:-2])
    layer = ReflectionPadding2D(3)
    assert ReflectionPadding2D.from_config(layer.get_config()).padding == ((3, 3), (3, 3))


def test_network_serializes(tmp_path, rng, small_net):
    net = StyleTransferNet(num_filters=8, num_blocks=2, norm="instance", upsampling="pixel_shuffle")
    loaded = run_model_saving_test(net, rng.random((1, 44, 50, 3)).astype("float32"), tmp_path, atol=1e-5)
    assert loaded.get_config() == net.get_config()


def test_style_loss_parts_and_a_training_step_lowers_the_loss(rng):
    style = rng.random((48, 48, 3)).astype("float32")
    loss = StyleTransferLoss(style, weights=None, tv_weight=0.1)
    x = rng.random((2, 48, 48, 3)).astype("float32")
    parts = {k: ops.convert_to_numpy(v) for k, v in loss.parts(x, x).items()}
    assert np.allclose(parts["content"], 0) and parts["style"].shape == (2,) and (parts["style"] > 0).all()
    # The style term of the style image itself is zero: its Gram matrices are the targets.
    assert float(ops.convert_to_numpy(loss.parts(style[None], style[None])["style"])[0]) == pytest.approx(0, abs=1e-3)
    # Instance norm: evaluation uses no moving statistics, so it sees exactly what training changed.
    net = StyleTransferNet(num_filters=8, num_blocks=2, norm="instance")
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=[StyleLossPart(loss, "style")])
    before = net.evaluate(x, x, verbose=0)[0]
    for _ in range(5):
        net.train_on_batch(x, x)
    assert net.evaluate(x, x, verbose=0)[0] < before
    # A loss built from an array does not carry the array in its config (it cannot be rebuilt from it).
    config = loss.get_config()
    assert config["style_image"] is None and len(json.dumps(config)) < 1000
    with pytest.raises(ValueError, match="built from an array"):
        StyleTransferLoss.from_config(config)


def test_style_loss_from_a_path_round_trips_with_its_layer_choice(tmp_path, rng):
    path = tmp_path / "style.png"
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(path)
    loss = StyleTransferLoss(str(path), weights=None, style_size=32, content_layers=["block3_conv3"],
                             style_layers=["block1_conv2", "block3_conv3"], style_layer_weights=[0.5, 2.0])
    assert [tuple(g.shape) for g in loss.style_grams] == [(64, 64), (256, 256)]
    # Round trip: the same config (weights=None gives a fresh random VGG16, so values differ).
    restored = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
    assert isinstance(restored, StyleTransferLoss) and restored.get_config() == loss.get_config()
    assert restored.content_layers == ("block3_conv3",) and restored.style_layer_weights == (0.5, 2.0)
    # The style term is the weighted sum of the per-layer Gram terms: with one layer's weight at 0 it is the other's.
    x = rng.random((2, 32, 32, 3)).astype("float32")
    keras.utils.set_random_seed(3)  # the same random VGG16 for both (the style Gram matrices are computed with it)
    only_first = StyleTransferLoss(str(path), weights=None, style_size=32, content_layers=["block3_conv3"],
                                   style_layers=["block1_conv2", "block3_conv3"], style_layer_weights=[0.5, 0.0])
    keras.utils.set_random_seed(3)
    first = StyleTransferLoss(str(path), weights=None, style_size=32, content_layers=["block3_conv3"],
                              style_layers=["block1_conv2"], style_layer_weights=[1.0])
    np.testing.assert_array_equal(only_first.extractor.get_weights()[0], first.extractor.get_weights()[0])
    a = ops.convert_to_numpy(only_first.parts(x, x[::-1])["style"])
    b = ops.convert_to_numpy(first.parts(x, x[::-1])["style"])
    np.testing.assert_allclose(a, 0.5 * b, rtol=1e-4)
    # Older configs spell a single content layer `content_layer`.
    legacy = {**loss.get_config(), "content_layer": "block2_conv2"}
    legacy.pop("content_layers")
    assert StyleTransferLoss.from_config(legacy).content_layers == ("block2_conv2",)


def test_style_config_keys_reach_the_loss(tmp_path, rng):
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError
    from kx_vision.losses import LESSON_CONTENT_LAYERS, LESSON_STYLE_LAYER_WEIGHTS, LESSON_STYLE_LAYERS
    from kx_vision.tasks import style as style_task

    path = tmp_path / "style.png"
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    config = config_lib.load(style_task.StyleConfig, None, [f"style_image={path}", "loss.vgg_weights=null",
                                                            "loss.style_size=32"])
    loss = style_task.StyleTask(config).build_loss()  # the lesson's choice by default
    assert loss.content_layers == LESSON_CONTENT_LAYERS and loss.style_layers == LESSON_STYLE_LAYERS
    assert loss.style_layer_weights == LESSON_STYLE_LAYER_WEIGHTS
    config = config_lib.load(style_task.StyleConfig, None, [
        f"style_image={path}", "loss.vgg_weights=null", "loss.style_size=32", "loss.content_layers=block2_conv2",
        "loss.style_layers=block1_conv2,block2_conv2", "loss.style_layer_weights=1,3", "loss.tv_weight=0.5"])
    loss = style_task.StyleTask(config).build_loss()
    assert loss.content_layers == ("block2_conv2",) and loss.style_layer_weights == (1.0, 3.0) and loss.tv_weight == 0.5
    for bad, message in (("loss.style_layers=block9_conv1", "must list VGG16 layers"),
                         ("loss.style_layer_weights=1,2,3", "one weight per style layer")):
        config = config_lib.load(style_task.StyleConfig, None, [f"style_image={path}", bad])
        with pytest.raises(ConfigError, match=message):
            style_task.StyleTask(config).check_config()


@pytest.mark.skipif(keras.backend.backend() == "jax", reason=(
    "end-to-end CLI orchestration runs once per CI, in the TensorFlow run (backend numerics: test_parity; "
    "training under JAX: test_train, test_data_arrays, test_distribute); JAX on CPU takes minutes here"))
def test_train_and_predict_style_cli(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from kx_vision import predict, train

    style = tmp_path / "style.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(style)
    args = ["style", "--output", str(tmp_path / "run"), "--set", f"style_image={style}", "--set", "loss.vgg_weights=null",
            "--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "data.crop_size=48", "--set", "model.num_filters=8",
            "--set", "model.num_blocks=2", "--set", "loss.style_size=48", "--set", "jit_compile=false"]
    assert train.main(args) == 0
    assert "validation loss parts: content" in capsys.readouterr().out
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((45, 61, 3)) * 255).astype(np.uint8)).save(photo)
    assert predict.main(["style", "--model", str(tmp_path / "run" / "model.keras"), "--input", str(photo),
                         "--output", str(tmp_path / "out")]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "photo_styled.png")).shape == (45, 61, 3)
    assert train.main(["style", "--output", str(tmp_path / "r2")]) == 2
    assert "'style_image' is required" in capsys.readouterr().err


def test_task_defaults_are_the_losses_lesson_constants():
    from kx_vision import losses
    from kx_vision.tasks import style as style_task

    # One definition (kx_vision.config, which the task's config and the losses both import).
    assert style_task.LESSON_CONTENT_LAYERS == losses.LESSON_CONTENT_LAYERS
    assert style_task.LESSON_STYLE_LAYERS == losses.LESSON_STYLE_LAYERS
    assert style_task.LESSON_STYLE_LAYER_WEIGHTS == losses.LESSON_STYLE_LAYER_WEIGHTS
    assert set(style_task.LESSON_STYLE_LAYERS) <= set(losses.VGG16_LAYERS)
