"""Paired super-resolution transforms in `keras.ops`: they run on any backend and on the accelerator.

The tf.data pipeline (`kx_vision.data.superres`) applies the same operations with TensorFlow ops
inside the input graph; `tests/test_data.py` checks that both give the same numbers.
"""

from keras import ops

NUM_DIHEDRAL = 8


def dihedral(images, k):
    """The `k`-th of the 8 symmetries of the square (0 = identity) of `(..., H, W, C)` images.

    `k % 4` quarter turns counter-clockwise, then a left-right flip when `k >= 4`; the same as
    `tf.image.rot90(x, k % 4)` followed by `tf.image.flip_left_right` for `k >= 4`.
    """
    k = int(k)
    if not 0 <= k < NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in [0, 8), got {k}")
    h_axis, w_axis = images.ndim - 3, images.ndim - 2
    for _ in range(k % 4):
        # One counter-clockwise quarter turn: transpose H/W, then flip the new row axis.
        perm = list(range(images.ndim))
        perm[h_axis], perm[w_axis] = perm[w_axis], perm[h_axis]
        images = ops.flip(ops.transpose(images, perm), axis=h_axis)
    if k >= 4:
        images = ops.flip(images, axis=w_axis)
    return images


def bicubic_downscale(images, scale, quantize=True):
    """Bicubic downscaling with antialiasing (MATLAB `imresize` semantics) of `(N, H, W, C)`
    float images in [0, 1]; `H` and `W` must be multiples of `scale`.

    With `quantize` the result is rounded to 8-bit levels, as the LR images of the benchmarks are
    stored as 8-bit files.
    """
    height, width = images.shape[-3], images.shape[-2]
    if height % scale or width % scale:
        raise ValueError(f"image size {height}x{width} is not a multiple of the scale {scale}")
    lr = ops.image.resize(
        ops.convert_to_tensor(images, "float32"),
        (height // scale, width // scale),
        interpolation="bicubic",
        antialias=True,
    )
    return quantize_8bit(lr) if quantize else lr


def bicubic_upscale(images, scale):
    """Bicubic upscaling of `(N, H, W, C)` images by `scale`: the classic baseline."""
    height, width = images.shape[-3], images.shape[-2]
    return ops.image.resize(
        ops.convert_to_tensor(images, "float32"),
        (height * scale, width * scale),
        interpolation="bicubic",
        antialias=True,
    )


def quantize_8bit(images):
    """Clip to [0, 1] and round to the 256 levels of an 8-bit image."""
    return ops.round(ops.clip(images, 0.0, 1.0) * 255.0) / 255.0


def crop_to_multiple(image, scale):
    """Crop `(H, W, C)` (or batched) images at the bottom/right to multiples of `scale`."""
    height, width = image.shape[-3], image.shape[-2]
    return image[..., : height - height % scale, : width - width % scale, :]
