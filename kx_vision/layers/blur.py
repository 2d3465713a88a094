"""The blur that follows a pixel shuffle in fastai v2 (`PixelShuffle_ICNR(blur=True)`)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kx_vision")
class Blur2D(keras.layers.Layer):
    """Replication-pads one row at the top and one column at the left, then averages 2x2 windows with
    stride 1: each output pixel is the mean of the input pixel and its upper, left and upper-left
    neighbours (the image edge repeated). The output has the input's shape.

    This is fastai v2's `nn.ReplicationPad2d((1, 0, 1, 0))` + `nn.AvgPool2d(2, stride=1)` after the
    pixel shuffle (Sugawara et al. 2018, "Super-resolution using CNNs without any checkerboard
    artifacts"). ICNR makes every 2x2 block of a fresh sub-pixel conv constant, but training moves the
    4 sub-kernels apart and a periodic 2x2 pattern comes back; every 2x2 window holds one pixel of each
    of the 4 sub-grids, so the average removes a pattern of period 2 entirely (and damps longer ones).
    """

    def call(self, inputs):
        # Concatenation and slicing rather than `ops.pad(mode="edge")`: TensorFlow has no edge mode, and
        # this also works for symbolic sizes (jax2tf exports for any image size).
        x = ops.concatenate([inputs[:, :1], inputs], axis=1)
        x = ops.concatenate([x[:, :, :1], x], axis=2)
        return (x[:, :-1, :-1] + x[:, 1:, :-1] + x[:, :-1, 1:] + x[:, 1:, 1:]) * 0.25

    def compute_output_shape(self, input_shape):
        return input_shape
