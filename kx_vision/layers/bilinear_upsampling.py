"""Bilinear upsampling by an integer factor, written with `keras.ops` so that sizes may be unknown."""

import keras
from keras import ops

from kx_vision.errors import ArgumentError


def _phases_along(x, size, axis):
    """The `size` interpolated copies of `x` along `axis`: copy `k` samples position `i + d_k` with
    `d_k = (2k + 1 - size) / (2 size)` (half-pixel centres), linearly between neighbours, the edge
    repeated beyond the border."""
    if axis == 1:
        previous = ops.concatenate([x[:, :1], x[:, :-1]], axis=1)
        following = ops.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    else:
        previous = ops.concatenate([x[:, :, :1], x[:, :, :-1]], axis=2)
        following = ops.concatenate([x[:, :, 1:], x[:, :, -1:]], axis=2)
    phases = []
    for k in range(size):
        offset = (2 * k + 1 - size) / (2 * size)
        if offset < 0:
            phases.append(x * (1 + offset) + previous * (-offset))
        else:
            phases.append(x * (1 - offset) + following * offset)
    return phases


@keras.saving.register_keras_serializable(package="kx_vision")
class BilinearUpSampling2D(keras.layers.Layer):
    """Upsamples `(N, H, W, C)` to `(N, H * size, W * size, C)` by bilinear interpolation with
    half-pixel centres and the edge repeated (`ops.image.resize(..., "bilinear")`, TensorFlow's
    `tf.image.resize`, PyTorch's `align_corners=False`).

    `keras.layers.UpSampling2D(interpolation="bilinear")` calls `ops.image.resize`, which on TensorFlow
    cannot trace an image of unknown size (a SavedModel exported for any size); here each of the
    `size**2` sub-pixel positions is a fixed blend of a pixel and its neighbours, interleaved by
    `ops.depth_to_space`, so sizes may be symbolic on both backends.
    """

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ArgumentError(f"BilinearUpSampling2D: `size` must be a positive integer, got {size!r}")
        self.size = int(size)

    def call(self, inputs):
        if self.size == 1:
            return inputs
        # Sub-pixel (i, j) of each block is phase i along the height of phase j along the width; stacked
        # as channel group i * size + j, which is `depth_to_space`'s (TensorFlow's) order.
        groups = [column for row in _phases_along(inputs, self.size, axis=1)
                  for column in _phases_along(row, self.size, axis=2)]
        return ops.depth_to_space(ops.concatenate(groups, axis=-1), self.size, data_format="channels_last")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else h * self.size, None if w is None else w * self.size, c)

    def get_config(self):
        return {**super().get_config(), "size": self.size}
