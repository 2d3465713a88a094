"""Sub-pixel convolution: `PixelShuffle` and the `ICNR` initializer."""

import keras
from keras import ops

from kx_vision.errors import ArgumentError
from kx_vision.layers.blur import Blur2D


@keras.saving.register_keras_serializable(package="kx_vision")
class ICNR(keras.initializers.Initializer):
    """ICNR initialisation (Aitken et al. 2017) for a conv followed by `PixelShuffle`.

    The kernel of a conv with `C * scale**2` output channels is built from a base kernel with `C`
    output channels so that, right after initialisation, every `scale x scale` output block of the
    pixel shuffle is constant: the sub-pixel conv starts as nearest-neighbour upsampling and shows
    no checkerboard.

    Keras's `ops.depth_to_space` (channels_last) is depth-column-row, like TensorFlow: output
    pixel `(i, j)` of a block, channel `c`, reads input channel `(i * scale + j) * C + c`. The base
    kernel is therefore *tiled* across the `scale**2` groups
    (`kernel[..., k * C + c] = base[..., c]`), not repeated channel by channel as fastai does for
    PyTorch's `pixel_shuffle` (channel `c * scale**2 + k`).

    Args:
        scale: the pixel-shuffle block size.
        initializer: initializer of the base kernel (default He normal, as fastai).
    """

    def __init__(self, scale=2, initializer="he_normal"):
        if int(scale) < 1:
            raise ArgumentError(f"ICNR: `scale` must be a positive integer, got {scale!r}")
        self.scale = int(scale)
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape, dtype=None):
        *spatial, in_channels, out_channels = shape
        groups = self.scale**2
        if out_channels % groups:
            raise ArgumentError(
                f"ICNR(scale={self.scale}): the kernel's output channels ({out_channels}) must be "
                f"a multiple of scale**2 = {groups}; kernel shape {tuple(shape)}"
            )
        base = self.initializer((*spatial, in_channels, out_channels // groups), dtype=dtype)
        return ops.tile(base, (1,) * (len(shape) - 1) + (groups,))

    def get_config(self):
        return {
            "scale": self.scale,
            "initializer": keras.initializers.serialize(self.initializer),
        }


@keras.saving.register_keras_serializable(package="kx_vision")
class PixelShuffle(keras.layers.Layer):
    """Rearranges `(N, H, W, C * scale**2)` into `(N, H * scale, W * scale, C)`.

    A thin layer over `keras.ops.depth_to_space` so the sub-pixel upsampler serializes without a
    `Lambda`. Channels-last only: every model in kx_vision is channels-last.
    """

    def __init__(self, scale=2, **kwargs):
        super().__init__(**kwargs)
        if int(scale) < 1:
            raise ArgumentError(f"PixelShuffle: `scale` must be a positive integer, got {scale!r}")
        self.scale = int(scale)

    def call(self, inputs):
        return ops.depth_to_space(inputs, self.scale, data_format="channels_last")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        if c is not None and c % (self.scale**2):
            raise ArgumentError(
                f"PixelShuffle(scale={self.scale}) needs channels divisible by {self.scale**2}, "
                f"got input shape {tuple(input_shape)}"
            )
        r = self.scale
        return (
            n,
            None if h is None else h * r,
            None if w is None else w * r,
            None if c is None else c // (r * r),
        )

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def apply_pixel_shuffle_upsample(x, num_filters, scale, name, kernel_size=3, dtype=None, blur=False):
    """Conv to `num_filters * scale**2` channels (ICNR-initialised), then `PixelShuffle`, then, with
    `blur=True`, `Blur2D` (fastai's `PixelShuffle_ICNR(blur=True)`).

    Layers are named `{name}_conv`, `{name}_shuffle` and `{name}_blur`, so weights move between models by
    name (the blur has none).
    """
    x = keras.layers.Conv2D(
        num_filters * scale**2,
        kernel_size,
        padding="same",
        kernel_initializer=ICNR(scale),
        name=f"{name}_conv",
        dtype=dtype,
    )(x)
    x = PixelShuffle(scale, name=f"{name}_shuffle", dtype=dtype)(x)
    if blur:
        x = Blur2D(name=f"{name}_blur", dtype=dtype)(x)
    return x
