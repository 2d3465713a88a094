"""EDSR (Lim et al. 2017): enhanced deep residual networks for single-image super-resolution."""

import math

import keras

from kx_vision.errors import ArgumentError
from kx_vision.layers import ResidualBlock, apply_pixel_shuffle_upsample
from kx_vision.models.base import KxModel, check_at_least, check_positive

# Mean RGB of DIV2K in [0, 1], subtracted at the input and added back at the output as in the
# EDSR reference code (its `MeanShift`), so the network works on roughly zero-centred images.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SUPPORTED_SCALES = (2, 3, 4, 8)


def upsample_factors(scale):
    """The pixel-shuffle stages for `scale`: x2 stages for powers of two, one x3 stage for 3."""
    if isinstance(scale, bool) or scale not in SUPPORTED_SCALES:
        raise ArgumentError(f"EDSR: scale={scale!r}; it must be one of {', '.join(map(str, SUPPORTED_SCALES))}",
                            ["scale"])
    return (3,) if scale == 3 else (2,) * int(math.log2(scale))


@keras.saving.register_keras_serializable(package="kx_vision")
class EDSR(KxModel, keras.Model):
    """EDSR super-resolution network, channels-last, for inputs of any size.

    head conv -> `num_blocks` scaled residual blocks (no batch norm) -> conv, with a long skip from
    the head -> upsampler -> conv to RGB. The upsampler is `log2(scale)` x2 pixel-shuffle stages
    (one x3 stage for scale 3), each an ICNR-initialised conv + `PixelShuffle`, so the weights of a
    x2 model seed a x4 one: layers are named so that they match by name (`head_conv`,
    `block_{i}`, `body_conv`, `upsample_{i}_conv`, `tail_conv`).

    Inputs and outputs are float RGB in [0, 1] (outputs are not clipped), batches `(N, H, W, num_channels)`;
    integer (uint8) inputs are refused (`kx_vision.inference`'s functions take uint8 images). The output is
    float32 whatever the dtype policy, so losses and metrics see float32 under mixed precision.

    Args:
        scale: upscaling factor, one of 2, 3, 4, 8.
        num_blocks: residual blocks (16 in the EDSR baseline, 32 in EDSR).
        num_filters: feature channels (64 in the baseline, 256 in EDSR).
        residual_scale: multiplier of each residual branch (0.1 in EDSR, 1.0 without scaling).
        num_channels: image channels (3).
        rgb_mean: mean subtracted at the input and added at the output, one value per channel; `None` for
            none (needed with `num_channels` other than 3, unless you give that many means).
        blur: smooth after each pixel shuffle (`Blur2D`, fastai's `PixelShuffle_ICNR(blur=True)`) against
            the checkerboard a trained sub-pixel conv leaves. Off by default: the EDSR paper has none.

    Example:
    >>> model = EDSR(scale=2, num_blocks=16, num_filters=64)
    >>> model.count_params()
    1369859
    """

    def __init__(
        self,
        scale=2,
        num_blocks=16,
        num_filters=64,
        residual_scale=0.1,
        num_channels=3,
        rgb_mean=DIV2K_RGB_MEAN,
        blur=False,
        dtype=None,
        **kwargs,
    ):
        factors = _check_arguments(scale, num_blocks, num_filters, num_channels, rgb_mean)
        conv = dict(padding="same", dtype=dtype)

        # === Functional Model ===
        inputs = keras.Input(shape=(None, None, num_channels), name="lr")
        x = inputs
        if rgb_mean is not None:
            offset = [-float(m) for m in rgb_mean]
            x = keras.layers.Rescaling(1.0, offset=offset, name="sub_mean", dtype=dtype)(x)
        x = keras.layers.Conv2D(num_filters, 3, name="head_conv", **conv)(x)
        skip = x
        for i in range(num_blocks):
            x = ResidualBlock(
                num_filters, residual_scale=residual_scale, name=f"block_{i}", dtype=dtype
            )(x)
        x = keras.layers.Conv2D(num_filters, 3, name="body_conv", **conv)(x)
        x = keras.layers.Add(name="body_add", dtype=dtype)([x, skip])
        for i, factor in enumerate(factors):
            x = apply_pixel_shuffle_upsample(x, num_filters, factor, name=f"upsample_{i}", dtype=dtype, blur=blur)
        x = keras.layers.Conv2D(num_channels, 3, name="tail_conv", **conv)(x)
        # Output in float32 under any policy: losses and metrics are computed in float32.
        if rgb_mean is not None:
            x = keras.layers.Rescaling(
                1.0, offset=[float(m) for m in rgb_mean], name="add_mean", dtype="float32"
            )(x)
        else:
            x = keras.layers.Activation("linear", name="output", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=x, **kwargs)

        # === Config ===
        self.scale = int(scale)
        self.num_blocks = int(num_blocks)
        self.num_filters = int(num_filters)
        self.residual_scale = float(residual_scale)
        self.num_channels = int(num_channels)
        self.rgb_mean = None if rgb_mean is None else tuple(float(m) for m in rgb_mean)
        self.blur = bool(blur)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "scale": self.scale,
            "num_blocks": self.num_blocks,
            "num_filters": self.num_filters,
            "residual_scale": self.residual_scale,
            "num_channels": self.num_channels,
            "rgb_mean": None if self.rgb_mean is None else list(self.rgb_mean),
            "blur": self.blur,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_arguments(scale, num_blocks, num_filters, num_channels, rgb_mean):
    """Refuse what no EDSR can be; the pixel-shuffle stages of `scale`."""
    factors = upsample_factors(scale)
    check_at_least("EDSR", 0, num_blocks=num_blocks)
    check_positive("EDSR", num_filters=num_filters, num_channels=num_channels)
    if rgb_mean is not None and len(rgb_mean) != num_channels:
        raise ArgumentError(
            f"EDSR: rgb_mean has {len(rgb_mean)} values but num_channels={num_channels}; give one mean per "
            "channel, or rgb_mean=None", ["rgb_mean", "num_channels"])
    return factors
