"""EDSR (Lim et al. 2017): enhanced deep residual networks for single-image super-resolution."""

import math

import keras

from kx_vision.layers import ResidualBlock, apply_pixel_shuffle_upsample
from kx_vision.models import presets

# Mean RGB of DIV2K in [0, 1], subtracted at the input and added back at the output as in the
# EDSR reference code (its `MeanShift`), so the network works on roughly zero-centred images.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SUPPORTED_SCALES = (2, 3, 4, 8)


def upsample_factors(scale):
    """The pixel-shuffle stages for `scale`: x2 stages for powers of two, one x3 stage for 3."""
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"EDSR: `scale` must be one of {SUPPORTED_SCALES}, got {scale!r}")
    return (3,) if scale == 3 else (2,) * int(math.log2(scale))


@keras.saving.register_keras_serializable(package="kx_vision")
class EDSR(keras.Model):
    """EDSR super-resolution network, channels-last, for inputs of any size.

    head conv -> `num_blocks` scaled residual blocks (no batch norm) -> conv, with a long skip from
    the head -> upsampler -> conv to RGB. The upsampler is `log2(scale)` x2 pixel-shuffle stages
    (one x3 stage for scale 3), each an ICNR-initialised conv + `PixelShuffle`, so the weights of a
    x2 model seed a x4 one: layers are named so that they match by name (`head_conv`,
    `block_{i}`, `body_conv`, `upsample_{i}_conv`, `tail_conv`).

    Inputs and outputs are float RGB in [0, 1] (outputs are not clipped). The output is float32
    whatever the dtype policy, so losses and metrics see float32 under mixed precision.

    Args:
        scale: upscaling factor, one of 2, 3, 4, 8.
        num_blocks: residual blocks (16 in the EDSR baseline, 32 in EDSR).
        num_filters: feature channels (64 in the baseline, 256 in EDSR).
        residual_scale: multiplier of each residual branch (0.1 in EDSR, 1.0 without scaling).
        num_channels: image channels (3).
        rgb_mean: mean subtracted at the input and added at the output; `None` for none.
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
        factors = upsample_factors(scale)
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

    # === Presets ===
    @classmethod
    def from_preset(cls, preset):
        """An EDSR with pretrained weights: a preset name shipped in the package (`edsr_baseline_x2`,
        `edsr_baseline_x4`; see `kx_vision.models.presets`) or a preset directory written by
        `save_to_preset`. Weights load as float32 whatever dtype they were stored in.

        >>> model = EDSR.from_preset("runs/edsr_x2_preset")  # doctest: +SKIP
        """
        return presets.load(preset, cls)

    def save_to_preset(self, directory, dtype="float32", card=None, overwrite=False):
        """Write this model as a preset folder (`config.json`, `model.weights.h5`, `metadata.json`, and a
        `README.md` model card from `card`), atomically; `dtype="float16"` halves the weights file.
        Returns the folder's absolute path. See `kx_vision.models.presets.save`."""
        return presets.save(self, directory, dtype=dtype, card=card, overwrite=overwrite)
