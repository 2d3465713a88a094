"""Paired super-resolution transforms in `keras.ops`: they run on any backend and on the accelerator.

What the transforms are (which symmetry a dihedral index means, how the LR image is made) is defined once
in `kx_vision.data.definitions`; this module is its `keras.ops` adapter. The tf.data pipeline
(`kx_vision.data.superres`) and the NumPy one (`kx_vision.data.arrays`) adapt the same definitions to
TensorFlow and NumPy; `tests/test_data_arrays.py` checks that the three give the same numbers.
"""

from keras import ops

from kx_vision.data import definitions
from kx_vision.data.definitions import NUM_DIHEDRAL  # noqa: F401  (re-exported)


def _rot90(images, turns):
    """`turns` counter-clockwise quarter turns of the H/W axes. (Not `ops.rot90`: up to Keras 3.15 its
    TensorFlow backend gets half and three-quarter turns of non-square images wrong, keras-team/keras#23435.)"""
    h_axis, w_axis = images.ndim - 3, images.ndim - 2
    perm = list(range(images.ndim))
    perm[h_axis], perm[w_axis] = perm[w_axis], perm[h_axis]
    for _ in range(turns):
        # One counter-clockwise quarter turn: transpose H/W, then flip the new row axis.
        images = ops.flip(ops.transpose(images, perm), axis=h_axis)
    return images


def _flip_if(images, flip):
    return ops.flip(images, axis=images.ndim - 2) if flip else images


def _resize(images, size, interpolation, antialias):
    return ops.image.resize(images, size, interpolation=interpolation, antialias=antialias)


def dihedral(images, k):
    """The `k`-th of the 8 symmetries of the square (0 = identity) of `(..., H, W, C)` images.

    `k % 4` quarter turns counter-clockwise, then a left-right flip when `k >= 4`; the same as
    `tf.image.rot90(x, k % 4)` followed by `tf.image.flip_left_right` for `k >= 4`
    (`kx_vision.data.definitions.dihedral_parts`).
    """
    images = ops.convert_to_tensor(images)
    return definitions.apply_dihedral(images, definitions.check_dihedral_index(k), _rot90, _flip_if)


def bicubic_downscale(images, scale, quantize=True):
    """Bicubic downscaling with antialiasing (MATLAB `imresize` semantics) of `(N, H, W, C)`
    float images in [0, 1]; `H` and `W` must be multiples of `scale`.

    With `quantize` the result is rounded to 8-bit levels, as the LR images of the benchmarks are
    stored as 8-bit files (`kx_vision.data.definitions.DEGRADATION`).
    """
    size = definitions.lr_size(images.shape[-3], images.shape[-2], scale)
    return definitions.degrade(ops.convert_to_tensor(images, "float32"), size, _resize, ops.clip, ops.round,
                               quantize_levels=quantize)


def bicubic_upscale(images, scale):
    """Bicubic upscaling of `(N, H, W, C)` images by `scale`: the classic baseline (the degradation's filter)."""
    height, width = images.shape[-3], images.shape[-2]
    return _resize(ops.convert_to_tensor(images, "float32"), (height * scale, width * scale),
                   definitions.DEGRADATION.interpolation, definitions.DEGRADATION.antialias)


def crop_to_multiple(image, scale):
    """Crop `(H, W, C)` (or batched) images at the bottom/right to multiples of `scale`."""
    height, width = image.shape[-3], image.shape[-2]
    return image[..., : height - height % scale, : width - width % scale, :]
