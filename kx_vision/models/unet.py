"""Dynamic U-Net (Ronneberger et al. 2015; fastai's DynamicUnet) over any functional backbone."""

import keras

from kx_vision.backbones import find_skip_layers, resolve_backbone
from kx_vision.errors import ArgumentError
from kx_vision.layers import Blur2D, apply_pixel_shuffle_upsample
from kx_vision.models.segmentation import (
    BackboneModel,
    apply_encoder,
    apply_probabilities,
    backbone_with_taps,
    check_segmentation_arguments,
)

UPSAMPLING = ("pixel_shuffle", "transpose")
# The decoders, each with its default upsampling and last cross connection.
DECODERS = {"fastai": ("pixel_shuffle", True), "lesson": ("transpose", False)}


def apply_conv_bn_relu(x, filters, name, kernel_size=3, dtype=None):
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv", dtype=dtype)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def apply_up(x, filters, mode, name, dtype=None):
    """x2 upsampling with no activation: an ICNR pixel shuffle (`{name}_conv`, `{name}_shuffle`) or a 2x2
    stride-2 transposed conv (`{name}_transpose`)."""
    if mode == "pixel_shuffle":
        return apply_pixel_shuffle_upsample(x, filters, 2, name=name, dtype=dtype)
    return keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_transpose", dtype=dtype)(x)


def apply_upsample(x, filters, mode, name, blur=False, dtype=None):
    """x2 upsampling + ReLU (fastai's PixelShuffle_ICNR: the ReLU commutes with the shuffle), then with
    `blur` its replication pad + 2x2 average (`{name}_blur`)."""
    x = apply_up(x, filters, mode, name, dtype=dtype)
    x = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)
    if blur:
        x = Blur2D(name=f"{name}_blur", dtype=dtype)(x)
    return x


def apply_lesson_unet_block(x, skip, filters, name, upsampling="transpose", blur=False, dtype=None):
    """The lesson's `UnetBlock(up_in, x_in, n_out)`: the deeper path `x` upsampled x2 by a transposed conv
    to `filters // 2` channels (`{name}_up_transpose`), the skip mapped to `filters // 2` by a 1x1 conv
    (`{name}_skip_conv`), concatenated (upsampled first), then ReLU and batch norm, in that order:
    `bn(relu(cat(tr_conv(x), x_conv(skip))))`. `upsampling="pixel_shuffle"` swaps the transposed conv
    for an ICNR pixel shuffle; `blur` smooths the upsampled path (`{name}_up_blur`)."""
    half = filters // 2
    up = apply_up(x, half, upsampling, f"{name}_up", dtype=dtype)
    if blur:
        up = Blur2D(name=f"{name}_up_blur", dtype=dtype)(up)
    skip = keras.layers.Conv2D(half, 1, name=f"{name}_skip_conv", dtype=dtype)(skip)
    x = keras.layers.Concatenate(name=f"{name}_concat", dtype=dtype)([up, skip])
    x = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)


@keras.saving.register_keras_serializable(package="kx_vision")
class UNet(BackboneModel, keras.Model):
    """A U-Net whose encoder is a pretrained classification backbone.

    The skip connections are found automatically (`kx_vision.backbones.find_skip_layers`: the last
    activation before each halving of the spatial size), so any functional backbone works: ResNet50
    (the lesson's), VGG16, MobileNetV2, EfficientNet... Two decoders:

    - "fastai" (default; fastai v2's DynamicUnet): two conv-BN-ReLU on the bottleneck, then per skip
      the deeper path upsampled x2 (to half its channels), the skip batch-normalised, concatenated and
      two conv-BN-ReLU; the channel counts follow the skips' (`min(skip_channels, max_filters)`), listed
      in `decoder_filters`. If the shallowest skip is below full resolution, further x2 stages reach it,
      and a final cross connection concatenates the input image (`last_cross`) before the classifier.
    - "lesson" (the 2018 lesson's `Unet34`): ReLU on the bottleneck, then per skip the lesson's
      `UnetBlock` (`apply_lesson_unet_block`: transposed conv up, 1x1 conv on the skip, both to
      `max_filters // 2` channels, concatenated, ReLU, BN; the lesson uses 256 = the default
      `max_filters`), then a 2x2 stride-2 transposed conv to the classes as the last x2 stage (a 1x1
      conv if the shallowest skip is at full resolution).

    Inputs are RGB images in [0, 1] of any size: they are padded (reflection) to a multiple of 32
    and the output is cropped back. Outputs are per-pixel probabilities in float32: sigmoid with
    `num_classes=1` (binary), softmax otherwise.

    Args:
        num_classes: 1 for binary segmentation, else the number of classes (void excluded).
        backbone: a name ("resnet50", "vgg16", "mobilenetv2", "efficientnetb0", ...) or a functional
            `keras.Model` taking images (its own preprocessing included).
        backbone_weights: for a named backbone: "imagenet" (default), `None`, or a weights file. Not
            part of the config: a saved U-Net restores its own weights.
        upsampling: "pixel_shuffle" (ICNR) or "transpose"; `None`: the decoder's own (pixel shuffle for
            "fastai", transposed conv for "lesson").
        max_filters: cap on decoder channels ("fastai"); channels of each block's output ("lesson").
        last_cross: concatenate the input image before the classifier; `None`: the decoder's own (yes
            for "fastai"; the lesson's decoder has none and refuses it).
        pad_to: pad inputs to a multiple of this (0: inputs must already fit the backbone).
        decoder: "fastai" or "lesson".
        blur: smooth after every x2 upsampling of the decoder (`Blur2D`: replication pad + 2x2 average,
            fastai's `PixelShuffle_ICNR(blur=True)`), against checkerboard artefacts.
    """

    config_keys = ("upsampling", "max_filters", "last_cross", "pad_to", "decoder", "blur")

    def __init__(
        self,
        num_classes=1,
        backbone="resnet50",
        backbone_weights="imagenet",
        upsampling=None,
        max_filters=256,
        last_cross=None,
        pad_to=32,
        decoder="fastai",
        blur=False,
        dtype=None,
        **kwargs,
    ):
        upsampling, last_cross = _check_arguments(num_classes, upsampling, max_filters, last_cross, pad_to, decoder)
        encoder, preprocessing, backbone_config = resolve_backbone(backbone, backbone_weights)
        taps = find_skip_layers(encoder)
        encoder = backbone_with_taps(encoder, taps)

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="image")
        x_in, features = apply_encoder(image, encoder, preprocessing, pad_to, dtype)
        skips, x = features[:-1], features[-1]
        factor = taps[0][1] if taps else 32  # the reduction of the shallowest skip
        if decoder == "lesson":
            x, decoder_filters = _lesson_decoder(x, skips, factor, num_classes, max_filters, upsampling, blur, dtype)
        else:
            x, decoder_filters = _fastai_decoder(x, skips, taps, factor, x_in, num_classes, max_filters, upsampling,
                                                 last_cross, blur, dtype)
        super().__init__(inputs=image, outputs=apply_probabilities(x, image, num_classes, pad_to), **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone_config = backbone_config
        self.upsampling = upsampling
        self.max_filters = int(max_filters)
        self.last_cross = last_cross
        self.pad_to = int(pad_to)
        self.decoder = decoder
        self.blur = bool(blur)
        self.skip_layers = [name for name, _, _ in taps]
        self.decoder_filters = decoder_filters


def _check_arguments(num_classes, upsampling, max_filters, last_cross, pad_to, decoder):
    """Refuse what no U-Net can be; `(upsampling, last_cross)` with the decoder's defaults filled in."""
    if decoder not in DECODERS:
        raise ArgumentError(f"UNet: decoder={decoder!r}; it must be one of {tuple(DECODERS)}", ["decoder"])
    check_segmentation_arguments("UNet", num_classes, pad_to, max_filters=max_filters)
    default_upsampling, default_last_cross = DECODERS[decoder]
    upsampling = default_upsampling if upsampling is None else upsampling
    last_cross = default_last_cross if last_cross is None else bool(last_cross)
    if upsampling not in UPSAMPLING:
        raise ArgumentError(f"UNet: upsampling={upsampling!r}; it must be one of {UPSAMPLING}", ["upsampling"])
    if decoder == "lesson" and last_cross:
        raise ArgumentError("UNet(decoder='lesson'): the lesson's decoder has no last cross connection; "
                            "leave last_cross unset (or False)", ["last_cross"])
    if decoder == "lesson" and (max_filters < 2 or max_filters % 2):
        raise ArgumentError(f"UNet(decoder='lesson'): max_filters is split in two halves (upsampled path "
                            f"and skip), so it must be even and at least 2, got max_filters={max_filters!r}",
                            ["max_filters"])
    return upsampling, last_cross


def _fastai_decoder(x, skips, taps, factor, x_in, num_classes, max_filters, upsampling, last_cross, blur, dtype):
    """fastai's DynamicUnet decoder, up to the class scores; returns them and the blocks' channels."""
    middle = min(x.shape[-1], 2 * max_filters)
    x = apply_conv_bn_relu(x, middle, "middle_1", dtype=dtype)
    x = apply_conv_bn_relu(x, middle, "middle_2", dtype=dtype)
    decoder_filters = []
    for i in reversed(range(len(taps))):
        _, _, skip_channels = taps[i]
        filters = min(skip_channels, max_filters)
        x = apply_upsample(x, max(x.shape[-1] // 2, 16), upsampling, f"decoder_{i}_up", blur=blur, dtype=dtype)
        skip = keras.layers.BatchNormalization(name=f"decoder_{i}_skip_bn", dtype=dtype)(skips[i])
        x = keras.layers.Concatenate(name=f"decoder_{i}_concat", dtype=dtype)([x, skip])
        x = apply_conv_bn_relu(x, filters, f"decoder_{i}_1", dtype=dtype)
        x = apply_conv_bn_relu(x, filters, f"decoder_{i}_2", dtype=dtype)
        decoder_filters.append(filters)
    stage = 0
    while factor > 1:
        x = apply_upsample(x, max(x.shape[-1] // 2, 16), upsampling, f"final_up_{stage}", blur=blur, dtype=dtype)
        factor //= 2
        stage += 1
    if last_cross:
        x = keras.layers.Concatenate(name="last_cross", dtype=dtype)([x, x_in])
        filters = max(x.shape[-1] // 2, 16)
        x = apply_conv_bn_relu(x, filters, "last_cross_1", dtype=dtype)
        x = apply_conv_bn_relu(x, filters, "last_cross_2", dtype=dtype)
    return keras.layers.Conv2D(num_classes, 1, name="classifier", dtype=dtype)(x), decoder_filters


def _lesson_decoder(x, skips, factor, num_classes, filters, upsampling, blur, dtype):
    """The lesson's Unet34 decoder, up to the class scores; returns them and the blocks' channels."""
    x = keras.layers.ReLU(name="backbone_relu", dtype=dtype)(x)  # `F.relu(self.rn(x))`
    for i in reversed(range(len(skips))):
        x = apply_lesson_unet_block(x, skips[i], filters, f"decoder_{i}", upsampling, blur=blur, dtype=dtype)
    # A backbone whose shallowest skip is below half resolution: x2 stages (up, ReLU, BN) to half resolution.
    stage = 0
    while factor > 2:
        x = apply_upsample(x, filters // 2, upsampling, f"final_up_{stage}", blur=blur, dtype=dtype)
        x = keras.layers.BatchNormalization(name=f"final_up_{stage}_bn", dtype=dtype)(x)
        factor //= 2
        stage += 1
    if factor == 1:  # the shallowest skip is already at full resolution (VGG16)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier", dtype=dtype)(x)
    else:  # the lesson's `up5 = nn.ConvTranspose2d(256, n_classes, 2, stride=2)`
        if upsampling == "transpose":
            x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, name="classifier", dtype=dtype)(x)
        else:
            x = apply_pixel_shuffle_upsample(x, num_classes, 2, name="classifier", dtype=dtype)
        if blur:
            x = Blur2D(name="classifier_blur", dtype=dtype)(x)
    return x, [filters] * len(skips)
