"""Dynamic U-Net (Ronneberger et al. 2015; fastai's DynamicUnet) over any functional backbone."""

import keras

from kx_vision.backbones import find_skip_layers, resolve_backbone
from kx_vision.layers import CropLike, ImagePreprocessing, PadToMultiple, apply_pixel_shuffle_upsample

UPSAMPLING = ("pixel_shuffle", "transpose")


def apply_conv_bn_relu(x, filters, name, kernel_size=3, dtype=None):
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv", dtype=dtype)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def apply_upsample(x, filters, mode, name, dtype=None):
    """x2 upsampling: ICNR pixel shuffle + ReLU (fastai's PixelShuffle_ICNR) or a transposed conv."""
    if mode == "pixel_shuffle":
        x = apply_pixel_shuffle_upsample(x, filters, 2, name=name, dtype=dtype)
    else:
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_transpose", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def output_activation(num_classes):
    return "sigmoid" if num_classes == 1 else "softmax"


class BackboneModel:
    """Mixin of the segmentation models built around an encoder layer named "backbone"."""

    @property
    def backbone(self):
        return self.get_layer("backbone")

    def set_backbone_trainable(self, trainable):
        """Freeze (False) or unfreeze (True) the encoder. Frozen BatchNorm layers run in inference
        mode in Keras 3, so their statistics stay frozen too (the lesson's `bn_freeze`). Recompile
        after changing it."""
        self.backbone.trainable = bool(trainable)

    @classmethod
    def from_config(cls, config):
        # Weights come from the saved file: never download them while deserializing.
        return cls(**{**config, "backbone_weights": None})


@keras.saving.register_keras_serializable(package="kx_vision")
class UNet(BackboneModel, keras.Model):
    """A U-Net whose encoder is a pretrained classification backbone.

    The skip connections are found automatically (`kx_vision.backbones.find_skip_layers`: the last
    activation before each halving of the spatial size), so any functional backbone works: ResNet50
    (the lesson's), VGG16, MobileNetV2, EfficientNet... Each decoder block upsamples the deeper path
    x2, batch-normalises the skip activation, concatenates and applies two conv-BN-ReLU; the channel
    counts follow the skips' (`min(skip_channels, max_filters)`), listed in `decoder_filters`.
    If the shallowest skip is below full resolution, further x2 stages reach it, and a final cross
    connection concatenates the input image (fastai's `last_cross`) before the classifier.

    Inputs are RGB images in [0, 1] of any size: they are padded (reflection) to a multiple of 32
    and the output is cropped back. Outputs are per-pixel probabilities in float32: sigmoid with
    `num_classes=1` (binary), softmax otherwise.

    Args:
        num_classes: 1 for binary segmentation, else the number of classes (void excluded).
        backbone: a name ("resnet50", "vgg16", "mobilenetv2", "efficientnetb0", ...) or a functional
            `keras.Model` taking images (its own preprocessing included).
        backbone_weights: for a named backbone: "imagenet" (default), `None`, or a weights file. Not
            part of the config: a saved U-Net restores its own weights.
        upsampling: "pixel_shuffle" (ICNR, default) or "transpose".
        max_filters: cap on decoder channels.
        last_cross: concatenate the input image before the classifier.
        pad_to: pad inputs to a multiple of this (0: inputs must already fit the backbone).
    """

    def __init__(
        self,
        num_classes=1,
        backbone="resnet50",
        backbone_weights="imagenet",
        upsampling="pixel_shuffle",
        max_filters=256,
        last_cross=True,
        pad_to=32,
        dtype=None,
        **kwargs,
    ):
        if upsampling not in UPSAMPLING:
            raise ValueError(f"UNet: upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        encoder_base, preprocessing, backbone_config = resolve_backbone(backbone, backbone_weights)
        taps = find_skip_layers(encoder_base)
        encoder = keras.Model(
            encoder_base.inputs,
            [encoder_base.get_layer(name).output for name, _, _ in taps] + [encoder_base.output],
            name="backbone",
        )

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="image")
        x_in = PadToMultiple(pad_to, name="pad", dtype=dtype)(image) if pad_to else image
        features = encoder(ImagePreprocessing(preprocessing, name="preprocess", dtype=dtype)(x_in))
        skips, x = features[:-1], features[-1]
        middle = min(x.shape[-1], 2 * max_filters)
        x = apply_conv_bn_relu(x, middle, "middle_1", dtype=dtype)
        x = apply_conv_bn_relu(x, middle, "middle_2", dtype=dtype)
        decoder_filters = []
        for i in reversed(range(len(taps))):
            _, _, skip_channels = taps[i]
            filters = min(skip_channels, max_filters)
            x = apply_upsample(x, max(x.shape[-1] // 2, 16), upsampling, f"decoder_{i}_up", dtype=dtype)
            skip = keras.layers.BatchNormalization(name=f"decoder_{i}_skip_bn", dtype=dtype)(skips[i])
            x = keras.layers.Concatenate(name=f"decoder_{i}_concat", dtype=dtype)([x, skip])
            x = apply_conv_bn_relu(x, filters, f"decoder_{i}_1", dtype=dtype)
            x = apply_conv_bn_relu(x, filters, f"decoder_{i}_2", dtype=dtype)
            decoder_filters.append(filters)
        factor = taps[0][1] if taps else 32
        stage = 0
        while factor > 1:
            x = apply_upsample(x, max(x.shape[-1] // 2, 16), upsampling, f"final_up_{stage}", dtype=dtype)
            factor //= 2
            stage += 1
        if last_cross:
            x = keras.layers.Concatenate(name="last_cross", dtype=dtype)([x, x_in])
            filters = max(x.shape[-1] // 2, 16)
            x = apply_conv_bn_relu(x, filters, "last_cross_1", dtype=dtype)
            x = apply_conv_bn_relu(x, filters, "last_cross_2", dtype=dtype)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier", dtype=dtype)(x)
        x = keras.layers.Activation(output_activation(num_classes), name="probabilities", dtype="float32")(x)
        if pad_to:
            x = CropLike(name="crop", dtype="float32")([x, image])
        super().__init__(inputs=image, outputs=x, **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone_config = backbone_config
        self.upsampling = upsampling
        self.max_filters = int(max_filters)
        self.last_cross = bool(last_cross)
        self.pad_to = int(pad_to)
        self.skip_layers = [name for name, _, _ in taps]
        self.decoder_filters = decoder_filters

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "backbone": self.backbone_config,
            "upsampling": self.upsampling,
            "max_filters": self.max_filters,
            "last_cross": self.last_cross,
            "pad_to": self.pad_to,
        }
