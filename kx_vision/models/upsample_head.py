"""The lesson's naive segmentation baseline: a backbone and a head of transposed convolutions."""

import math

import keras

from kx_vision.backbones import resolve_backbone
from kx_vision.errors import ArgumentError
from kx_vision.models.base import check_positive
from kx_vision.models.segmentation import (
    BackboneModel,
    apply_encoder,
    apply_probabilities,
    check_segmentation_arguments,
)


@keras.saving.register_keras_serializable(package="kx_vision")
class UpsampleHeadNet(BackboneModel, keras.Model):
    """Backbone (ResNet50 by default) + `num_stages` x2 transposed convolutions with batch norm and
    ReLU + a last x2 transposed conv to the classes (the lesson's `std_upsample_head`): no skip
    connections, hence the blurry masks the U-Net then fixes.

    Args mirror `UNet`: `num_classes`, `backbone`, `backbone_weights`, `filters` of the head
    stages, `pad_to`. The backbone must downsample by `2 ** (num_stages + 1)` (32 by default): any other
    `num_stages` is refused.
    """

    config_keys = ("filters", "num_stages", "pad_to")

    def __init__(
        self,
        num_classes=1,
        backbone="resnet50",
        backbone_weights="imagenet",
        filters=256,
        num_stages=4,
        pad_to=32,
        dtype=None,
        **kwargs,
    ):
        check_segmentation_arguments("UpsampleHeadNet", num_classes, pad_to, filters=filters)
        check_positive("UpsampleHeadNet", num_stages=num_stages)
        encoder, preprocessing, backbone_config = resolve_backbone(backbone, backbone_weights)
        encoder = keras.Model(encoder.inputs, encoder.output, name="backbone")
        reduction = _reduction(encoder)
        if reduction is not None and reduction != 2 ** (num_stages + 1):
            fits = math.log2(reduction) - 1 if reduction >= 4 else 0
            hint = f" (use num_stages={int(fits)})" if fits >= 1 and fits == int(fits) else ""
            raise ArgumentError(
                f"UpsampleHeadNet: backbone {encoder.name!r} downsamples {reduction} times, but num_stages={num_stages} "
                f"upsamples {2 ** (num_stages + 1)} times, so the masks would not have the image's size{hint}",
                ["num_stages"])

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="image")
        _, x = apply_encoder(image, encoder, preprocessing, pad_to, dtype)
        x = keras.layers.ReLU(name="backbone_relu", dtype=dtype)(x)
        for i in range(num_stages):
            x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"head_{i}_transpose", dtype=dtype)(x)
            x = keras.layers.BatchNormalization(name=f"head_{i}_bn", dtype=dtype)(x)
            x = keras.layers.ReLU(name=f"head_{i}_relu", dtype=dtype)(x)
        x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, name="classifier", dtype=dtype)(x)
        super().__init__(inputs=image, outputs=apply_probabilities(x, image, num_classes, pad_to), **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone_config = backbone_config
        self.filters = int(filters)
        self.num_stages = int(num_stages)
        self.pad_to = int(pad_to)


def _reduction(encoder, probe=256):
    """How many times `encoder` downsamples (256 / its output size for a 256 px input), or None if unknown."""
    spec = encoder.compute_output_spec(keras.KerasTensor((1, probe, probe, encoder.inputs[0].shape[-1])))
    spec = spec[0] if isinstance(spec, (list, tuple)) else spec
    size = spec.shape[1] if len(spec.shape) == 4 else None
    return probe // size if size else None
