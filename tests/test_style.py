import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

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
    net.save(tmp_path / "style.keras")
    loaded = keras.saving.load_model(tmp_path / "style.keras")
    x = rng.random((1, 44, 50, 3)).astype("float32")
    assert isinstance(loaded, StyleTransferNet) and loaded.get_config() == net.get_config()
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(net(x)), atol=1e-5)


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
    # Round trip: the same config (weights=None gives a fresh random VGG16, so values differ).
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, StyleTransferLoss) and restored.get_config() == loss.get_config()


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
