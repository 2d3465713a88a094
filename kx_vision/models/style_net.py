"""The feed-forward style-transfer network of Johnson et al. 2016, as in the lesson."""

import keras

from kx_vision.errors import ArgumentError
from kx_vision.layers import CropLike, PadToMultiple, ReflectionPadding2D, apply_pixel_shuffle_upsample
from kx_vision.models.base import KxModel, check_positive

NORMALIZATIONS = ("batch", "instance")


def apply_norm(x, kind, name, dtype=None):
    if kind == "instance":
        # Instance norm (Ulyanov et al. 2016) is group norm with one group per channel.
        return keras.layers.GroupNormalization(groups=-1, name=f"{name}_in", dtype=dtype)(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)


def apply_conv_norm(x, filters, kernel_size, name, strides=1, padding="same", norm="batch", relu=True, dtype=None):
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, name=f"{name}_conv", dtype=dtype)(x)
    x = apply_norm(x, norm, name, dtype)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x) if relu else x


def apply_center_residual_block(x, filters, name, norm="batch", dtype=None):
    """Two unpadded 3x3 convs; the identity path is centre-cropped by 2 pixels a side to match (the
    lesson's `res_sequential_center`), so the block shrinks its input by 4 pixels."""
    y = apply_conv_norm(x, filters, 3, f"{name}_a", padding="valid", norm=norm, dtype=dtype)
    y = apply_conv_norm(y, filters, 3, f"{name}_b", padding="valid", norm=norm, relu=False, dtype=dtype)
    identity = keras.layers.Cropping2D(2, name=f"{name}_crop", dtype=dtype)(x)
    return keras.layers.Add(name=f"{name}_add", dtype=dtype)([identity, y])


@keras.saving.register_keras_serializable(package="kx_vision")
class StyleTransferNet(KxModel, keras.Model):
    """Johnson et al.'s image transformation network: 40 px reflection padding, a 9x9 conv, two
    stride-2 convs, `num_blocks` residual blocks of unpadded convs (each trims 2 px a side at quarter
    resolution, 5 blocks x 8 px = the 40 px of padding), two x2 upsamplings (nearest-neighbour +
    conv, or ICNR pixel shuffle), a 9x9 conv to RGB and a scaled tanh to [0, 1].

    Inputs are RGB in [0, 1] of any size from `min_size(num_blocks)` (41 px for 5 blocks: a reflection
    pad must be smaller than the image) up, padded to a multiple of 4 and cropped back; the output has
    the input's size. A smaller image, or integer (uint8) pixels, are refused on every backend.

    Args:
        num_filters: channels of the first conv (32); the downsampling doubles them twice.
        num_blocks: residual blocks (5).
        norm: "batch" (as in the lesson) or "instance" (Ulyanov et al.).
        upsampling: "nearest" (resize + conv) or "pixel_shuffle" (ICNR).
    """

    def __init__(self, num_filters=32, num_blocks=5, norm="batch", upsampling="nearest", dtype=None, **kwargs):
        if norm not in NORMALIZATIONS:
            raise ArgumentError(f"StyleTransferNet: norm={norm!r}; it must be one of {NORMALIZATIONS}", ["norm"])
        if upsampling not in ("nearest", "pixel_shuffle"):
            raise ArgumentError(f"StyleTransferNet: upsampling={upsampling!r}; it must be 'nearest' or "
                                "'pixel_shuffle'", ["upsampling"])
        check_positive("StyleTransferNet", num_filters=num_filters, num_blocks=num_blocks)
        pad = 8 * num_blocks  # what the residual blocks trim, in full-resolution pixels

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="content")
        x = PadToMultiple(4, name="pad_to_4", dtype=dtype)(image)
        x = ReflectionPadding2D(pad, name="reflection_pad", dtype=dtype)(x)
        x = apply_conv_norm(x, num_filters, 9, "in", norm=norm, dtype=dtype)
        x = apply_conv_norm(x, num_filters * 2, 3, "down_1", strides=2, norm=norm, dtype=dtype)
        x = apply_conv_norm(x, num_filters * 4, 3, "down_2", strides=2, norm=norm, dtype=dtype)
        for i in range(num_blocks):
            x = apply_center_residual_block(x, num_filters * 4, f"res_{i}", norm=norm, dtype=dtype)
        for i, filters in enumerate((num_filters * 2, num_filters)):
            if upsampling == "nearest":
                x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up_{i + 1}_resize", dtype=dtype)(x)
                x = apply_conv_norm(x, filters, 3, f"up_{i + 1}", norm=norm, dtype=dtype)
            else:
                x = apply_pixel_shuffle_upsample(x, filters, 2, name=f"up_{i + 1}", dtype=dtype)
                x = apply_norm(x, norm, f"up_{i + 1}", dtype)
                x = keras.layers.ReLU(name=f"up_{i + 1}_relu", dtype=dtype)(x)
        x = keras.layers.Conv2D(3, 9, padding="same", activation="tanh", name="out_conv", dtype=dtype)(x)
        x = keras.layers.Rescaling(0.5, offset=0.5, name="to_unit_range", dtype="float32")(x)
        x = CropLike(name="crop", dtype="float32")([x, image])
        super().__init__(inputs=image, outputs=x, **kwargs)

        # === Config ===
        self.num_filters = int(num_filters)
        self.num_blocks = int(num_blocks)
        self.norm = norm
        self.upsampling = upsampling

    def input_requirements(self):
        return 3, self.min_size(self.num_blocks)

    @staticmethod
    def min_size(num_blocks=5):
        """Smallest image side the network takes (reflection padding needs a larger image)."""
        return 8 * num_blocks + 1

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "num_filters": self.num_filters,
                "num_blocks": self.num_blocks, "norm": self.norm, "upsampling": self.upsampling}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
