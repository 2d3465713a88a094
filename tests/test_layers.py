import keras
import numpy as np
import pytest
from keras import ops
from testing import run_layer_test, run_model_saving_test, run_serialization_test

from kx_vision.layers import (
    ICNR,
    BilinearUpSampling2D,
    Blur2D,
    PixelShuffle,
    ResidualBlock,
    apply_pixel_shuffle_upsample,
)


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
    [lambda: PixelShuffle(3, name="ps"), lambda: ResidualBlock(6, kernel_size=3, residual_scale=0.5),
     lambda: Blur2D(name="blur"), lambda: BilinearUpSampling2D(3, name="up")],
)
def test_layer_config_and_keras_round_trip(tmp_path, rng, layer):
    layer = layer()
    channels = 18 if isinstance(layer, PixelShuffle) else 6
    x = rng.normal(size=(1, 5, 7, channels)).astype("float32")
    run_layer_test(layer, x)  # eager and symbolic shapes, config round trip, registration
    inputs = keras.Input((None, None, channels))
    model = keras.Model(inputs, layer(inputs))
    run_model_saving_test(model, x, tmp_path)  # no custom_objects: the layers are registered


def test_icnr_serializes():
    init = ICNR(3, initializer="glorot_uniform")
    assert run_serialization_test(init).scale == 3
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(restored, ICNR) and restored.get_config() == init.get_config()


@pytest.mark.parametrize("size,before,after", [(5, 2, 3), (7, 0, 6), (4, 3, 0), (9, 8, 8)])
def test_reflected_indices_match_numpy(size, before, after):
    # The gather path used when sizes are symbolic (jax2tf export for any image size).
    from kx_vision.layers.reflection import _reflected_indices

    got = ops.convert_to_numpy(_reflected_indices(size, before, size + before + after))
    np.testing.assert_array_equal(got, np.pad(np.arange(size), (before, after), mode="reflect"))


def numpy_blur(y):
    """fastai's `nn.ReplicationPad2d((1, 0, 1, 0))` then `nn.AvgPool2d(2, stride=1)`, channels-last."""
    p = np.pad(y, ((0, 0), (1, 0), (1, 0), (0, 0)), mode="edge")
    return (p[:, :-1, :-1] + p[:, 1:, :-1] + p[:, :-1, 1:] + p[:, 1:, 1:]) / 4


def test_blur_pads_top_left_and_averages_2x2(rng):
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    y = ops.convert_to_numpy(Blur2D()(x))
    np.testing.assert_allclose(y, numpy_blur(x), rtol=1e-6, atol=1e-6)
    # By hand, so a shared mistake in the reference cannot hide: the corner repeats itself, the first row
    # averages left neighbours only, an inner pixel its upper-left 2x2 window.
    np.testing.assert_allclose(y[:, 0, 0], x[:, 0, 0], atol=1e-6)
    np.testing.assert_allclose(y[:, 0, 3], (x[:, 0, 2] + x[:, 0, 3]) / 2, atol=1e-6)
    np.testing.assert_allclose(y[:, 3, 4], x[:, 2:4, 3:5].mean(axis=(1, 2)), atol=1e-6)
    assert Blur2D().compute_output_shape((None, None, 7, 3)) == (None, None, 7, 3)


def checkerboard_energy(y, r):
    """Mean squared difference between each of the r x r sub-grids `y[:, i::r, j::r]` and their mean,
    relative to the image's variance: 0 for an image with no period-r pattern."""
    grids = np.stack([y[:, i::r, j::r] for i in range(r) for j in range(r)])
    return float(grids.var(axis=0).mean() / y.var())


def test_blur_removes_the_checkerboard_of_a_trained_looking_kernel(rng):
    # A random (not ICNR) kernel: the 4 sub-kernels differ, as they drift apart in training, and the
    # pixel shuffle of a smooth image shows a 2x2 checkerboard. The blur is pad + average of exactly that
    # output, and every 2x2 window holds one pixel of each sub-grid: the pattern goes away.
    rows, cols = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 16), indexing="ij")
    smooth = np.stack([np.sin(3 * rows + 2 * cols), np.cos(2 * rows), rows * cols, cols], -1)[None]
    smooth = smooth.astype("float32")

    def upsampler(blur):
        image = keras.Input((None, None, 4))
        return keras.Model(image, apply_pixel_shuffle_upsample(image, 3, 2, name="up", blur=blur))

    plain, blurred = upsampler(False), upsampler(True)
    assert [layer.name for layer in blurred.layers][-1] == "up_blur"
    kernel = rng.normal(0, 0.5, size=(3, 3, 4, 12)).astype("float32")
    for model in (plain, blurred):
        model.get_layer("up_conv").set_weights([kernel, np.zeros(12, "float32")])
    y_plain = ops.convert_to_numpy(plain(smooth))
    y_blurred = ops.convert_to_numpy(blurred(smooth))
    np.testing.assert_allclose(y_blurred, numpy_blur(y_plain), rtol=1e-5, atol=1e-6)
    # Measured away from the borders, where the conv's zero padding and the blur's replicated edge
    # make differences of their own.
    inner = (slice(None), slice(4, -4), slice(4, -4))
    before, after = checkerboard_energy(y_plain[inner], 2), checkerboard_energy(y_blurred[inner], 2)
    assert before > 0.3, before  # the kernel really makes a checkerboard (measured 0.9)
    assert after < 0.02 * before, (before, after)  # measured 0.0075


def numpy_bilinear_upsample(x, r):
    """Half-pixel bilinear upsampling, one axis at a time: output row `o` samples input position
    `(o + 0.5) / r - 0.5`, clamped to the image."""
    for axis in (1, 2):
        n = x.shape[axis]
        position = np.clip((np.arange(n * r) + 0.5) / r - 0.5, 0, n - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n - 1)
        weight = (position - low).reshape([-1 if a == axis else 1 for a in range(4)])
        x = np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight
    return x


@pytest.mark.parametrize("r", [2, 3, 4])
def test_bilinear_upsampling_matches_numpy_and_keras_resize(rng, r):
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    y = ops.convert_to_numpy(BilinearUpSampling2D(r)(x))
    assert y.shape == (2, 5 * r, 7 * r, 3)
    np.testing.assert_allclose(y, numpy_bilinear_upsample(x, r), rtol=1e-5, atol=1e-5)
    resized = ops.image.resize(x, (5 * r, 7 * r), interpolation="bilinear", antialias=False)
    np.testing.assert_allclose(y, ops.convert_to_numpy(resized), rtol=1e-5, atol=1e-5)
    assert BilinearUpSampling2D(r).compute_output_shape((None, None, 7, 3)) == (None, None, 7 * r, 3)
