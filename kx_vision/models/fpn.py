"""Feature pyramid network (Lin et al. 2017) with the semantic segmentation branch of Panoptic FPN
(Kirillov et al. 2019), over any functional backbone."""

import math

import keras

from kx_vision.backbones import find_skip_layers, resolve_backbone
from kx_vision.errors import ArgumentError
from kx_vision.layers import BilinearUpSampling2D
from kx_vision.models.segmentation import (
    BackboneModel,
    apply_encoder,
    apply_probabilities,
    backbone_with_taps,
    check_segmentation_arguments,
)

MERGES = ("add", "concat")


def apply_pyramid_block(x, feature, filters, name, dtype=None):
    """One top-down step of the pyramid: the coarser level `x` upsampled x2 (nearest), plus the
    backbone feature of this level through a 1x1 conv (the lateral connection): `{name}_up`,
    `{name}_lateral`, `{name}_add`."""
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up", dtype=dtype)(x)
    lateral = keras.layers.Conv2D(filters, 1, name=f"{name}_lateral", dtype=dtype)(feature)
    return keras.layers.Add(name=f"{name}_add", dtype=dtype)([x, lateral])


def apply_segmentation_branch(x, filters, num_upsamples, name, dtype=None):
    """Panoptic FPN's per-level branch: `max(1, num_upsamples)` stages of 3x3 conv, batch norm and ReLU,
    the first `num_upsamples` of them followed by a x2 bilinear upsampling, so every level reaches the
    finest level's resolution. Layers `{name}_{k}_conv/_bn/_relu/_up`."""
    for k in range(max(1, num_upsamples)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_{k}_conv", dtype=dtype)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_{k}_bn", dtype=dtype)(x)
        x = keras.layers.ReLU(name=f"{name}_{k}_relu", dtype=dtype)(x)
        if k < num_upsamples:
            x = BilinearUpSampling2D(2, name=f"{name}_{k}_up", dtype=dtype)(x)
    return x


@keras.saving.register_keras_serializable(package="kx_vision")
class FPN(BackboneModel, keras.Model):
    """A feature pyramid segmentation network whose encoder is a pretrained classification backbone.

    The pyramid levels are the backbone's activations at strides 4, 8, 16 (found as the U-Net's skips,
    by `find_skip_layers`; stride 2 is not used) and its output (stride 32): C2..C5 for ResNet50. Top
    down (Lin et al.), P5 is a 1x1 conv of C5 and each finer P is the coarser one upsampled x2 (nearest)
    plus a 1x1 conv of its C, all with `pyramid_filters` channels. Each P goes through the semantic
    branch of Panoptic FPN (Kirillov et al.): 3x3 conv-BN-ReLU with `segmentation_filters` channels and
    x2 bilinear upsampling, repeated until stride 4 (P2: one conv, P5: three conv-upsample stages); the
    four maps are added (`merge="add"`) or concatenated (`"concat"`), a 1x1 conv gives the class scores
    and a x4 bilinear upsampling the full resolution. As segmentation_models' FPN, with batch norm where
    Panoptic FPN has group norm, like the rest of kx_vision's decoders.

    Inputs are RGB images in [0, 1] of any size: padded (reflection) to a multiple of `pad_to` and the
    output cropped back. Outputs are per-pixel probabilities in float32: sigmoid with `num_classes=1`,
    softmax otherwise.

    Args:
        num_classes: 1 for binary segmentation, else the number of classes (void excluded).
        backbone: a name ("resnet50", "vgg16", "mobilenetv2", "efficientnetb0", ...) or a functional
            `keras.Model` taking images (its own preprocessing included).
        backbone_weights: for a named backbone: "imagenet" (default), `None`, or a weights file. Not
            part of the config: a saved FPN restores its own weights.
        pyramid_filters: channels of the pyramid levels (256 in the papers).
        segmentation_filters: channels of the segmentation branches (128 in the papers).
        merge: "add" or "concat" the branches.
        pad_to: pad inputs to a multiple of this (0: inputs must already fit the backbone).
    """

    config_keys = ("pyramid_filters", "segmentation_filters", "merge", "pad_to")

    def __init__(
        self,
        num_classes=1,
        backbone="resnet50",
        backbone_weights="imagenet",
        pyramid_filters=256,
        segmentation_filters=128,
        merge="add",
        pad_to=32,
        dtype=None,
        **kwargs,
    ):
        if merge not in MERGES:
            raise ArgumentError(f"FPN: merge={merge!r}; it must be one of {MERGES}", ["merge"])
        check_segmentation_arguments("FPN", num_classes, pad_to, pyramid_filters=pyramid_filters,
                                     segmentation_filters=segmentation_filters)
        encoder, preprocessing, backbone_config = resolve_backbone(backbone, backbone_weights)
        taps, levels = _pyramid_taps(encoder)
        encoder = backbone_with_taps(encoder, taps)

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="image")
        _, features = apply_encoder(image, encoder, preprocessing, pad_to, dtype)
        p = keras.layers.Conv2D(pyramid_filters, 1, name=f"p{levels[-1]}_lateral", dtype=dtype)(features[-1])
        pyramid = [p]
        for feature, level in zip(features[-2::-1], levels[-2::-1]):
            p = apply_pyramid_block(p, feature, pyramid_filters, f"p{level}", dtype=dtype)
            pyramid.append(p)
        finest = levels[0]
        branches = [
            apply_segmentation_branch(p, segmentation_filters, level - finest, f"segmentation_p{level}", dtype=dtype)
            for p, level in zip(pyramid, levels[::-1])
        ]
        merging = keras.layers.Add if merge == "add" else keras.layers.Concatenate
        x = merging(name="merge", dtype=dtype)(branches)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier", dtype=dtype)(x)
        x = BilinearUpSampling2D(2**finest, name="final_up", dtype=dtype)(x)
        super().__init__(inputs=image, outputs=apply_probabilities(x, image, num_classes, pad_to), **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone_config = backbone_config
        self.pyramid_filters = int(pyramid_filters)
        self.segmentation_filters = int(segmentation_filters)
        self.merge = merge
        self.pad_to = int(pad_to)
        self.skip_layers = [name for name, _, _ in taps]
        self.pyramid_levels = levels


def _pyramid_taps(encoder):
    """`(taps, levels)`: the backbone's activations at strides 4 and more (`find_skip_layers`' taps: stride 2 is
    not a pyramid level) and the pyramid levels by log2 of their stride (Lin et al.'s P2..P5), the backbone's
    output last, one halving below the deepest tap (a tap is the last layer before each halving)."""
    taps = [tap for tap in find_skip_layers(encoder) if tap[1] >= 4]
    if not taps:
        raise ArgumentError(f"FPN: backbone {encoder.name!r} has no feature map at stride 4 or more "
                            "below its output; a pyramid needs at least two levels", ["backbone"])
    levels = [int(math.log2(factor)) for _, factor, _ in taps]
    return taps, levels + [levels[-1] + 1]
