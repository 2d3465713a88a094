import keras
import numpy as np
import pytest
from keras import ops

from kx_vision.layers import ICNR, PixelShuffle, ResidualBlock


def numpy_pixel_shuffle(x, r):
    """Depth-column-row (TensorFlow) order: out[h*r+i, w*r+j, c] = in[h, w, (i*r+j)*C + c]."""
    n, h, w, cr2 = x.shape
    c = cr2 // (r * r)
    out = np.empty((n, h * r, w * r, c), x.dtype)
    for i in range(r):
        for j in range(r):
            out[:, i::r, j::r, :] = x[..., (i * r + j) * c : (i * r + j + 1) * c]
    return out


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_numpy(rng, r):
    x = rng.normal(size=(2, 3, 5, 4 * r * r)).astype("float32")
    out = ops.convert_to_numpy(PixelShuffle(r)(x))
    np.testing.assert_array_equal(out, numpy_pixel_shuffle(x, r))
    assert PixelShuffle(r).compute_output_shape((None, None, 7, 4 * r * r)) == (None, None, 7 * r, 4)


def _block_ranges(y, r):
    """Per r x r output block: max - min over the block, for every channel."""
    n, hr, wr, c = y.shape
    blocks = y.reshape(n, hr // r, r, wr // r, r, c)
    return blocks.max(axis=(2, 4)) - blocks.min(axis=(2, 4))


@pytest.mark.parametrize("r", [2, 3])
def test_icnr_gives_constant_blocks_and_repeat_does_not(rng, r):
    c_in, c_out = 4, 3
    x = rng.normal(size=(1, 6, 6, c_in)).astype("float32")
    conv = keras.layers.Conv2D(c_out * r * r, 3, padding="same", kernel_initializer=ICNR(r))
    y = ops.convert_to_numpy(PixelShuffle(r)(conv(x)))
    assert _block_ranges(y, r).max() < 1e-5
    assert y.std() > 0.1  # not trivially constant

    # fastai's ICNR for PyTorch repeats each base channel r*r times: wrong for Keras's order.
    base = ops.convert_to_numpy(conv.kernel)[..., :c_out]
    repeated = np.repeat(base, r * r, axis=-1)
    conv.kernel.assign(repeated)
    y_repeat = ops.convert_to_numpy(PixelShuffle(r)(conv(x)))
    assert _block_ranges(y_repeat, r).max() > 0.1


def test_icnr_rejects_bad_shape():
    with pytest.raises(ValueError, match="multiple of scale"):
        ICNR(2)((3, 3, 4, 6))


def test_residual_block_matches_manual(rng):
    x = rng.normal(size=(2, 8, 8, 6)).astype("float32")
    block = ResidualBlock(6, residual_scale=0.1)
    y = ops.convert_to_numpy(block(x))
    branch = block.conv2(block.conv1(x))
    np.testing.assert_allclose(y, x + 0.1 * ops.convert_to_numpy(branch), rtol=1e-5, atol=1e-6)
    assert not any("normalization" in w.path for w in block.weights)
    with pytest.raises(ValueError, match="channels"):
        ResidualBlock(4)(x)


@pytest.mark.parametrize(
    "layer",
    [lambda: PixelShuffle(3, name="ps"), lambda: ResidualBlock(6, kernel_size=3, residual_scale=0.5)],
)
def test_layer_config_and_keras_round_trip(tmp_path, rng, layer):
    layer = layer()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    inputs = keras.Input((None, None, 18 if isinstance(layer, PixelShuffle) else 6))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    x = rng.normal(size=(1, 5, 7, inputs.shape[-1])).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=1e-6)


def test_icnr_serializes():
    init = ICNR(3, initializer="glorot_uniform")
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(restored, ICNR) and restored.scale == 3
    assert restored.get_config() == init.get_config()


@pytest.mark.parametrize("size,before,after", [(5, 2, 3), (7, 0, 6), (4, 3, 0), (9, 8, 8)])
def test_reflected_indices_match_numpy(size, before, after):
    # The gather path used when sizes are symbolic (jax2tf export for any image size).
    from kx_vision.layers.reflection import _reflected_indices

    got = ops.convert_to_numpy(_reflected_indices(size, before, size + before + after))
    np.testing.assert_array_equal(got, np.pad(np.arange(size), (before, after), mode="reflect"))
