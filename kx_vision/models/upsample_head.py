"""The lesson's naive segmentation baseline: a backbone and a head of transposed convolutions."""

import keras

from kx_vision.backbones import resolve_backbone
from kx_vision.layers import CropLike, ImagePreprocessing, PadToMultiple
from kx_vision.models.unet import BackboneModel, output_activation


@keras.saving.register_keras_serializable(package="kx_vision")
class UpsampleHeadNet(BackboneModel, keras.Model):
    """Backbone (ResNet50 by default) + `num_stages` x2 transposed convolutions with batch norm and
    ReLU + a last x2 transposed conv to the classes (the lesson's `std_upsample_head`): no skip
    connections, hence the blurry masks the U-Net then fixes.

    Args mirror `UNet`: `num_classes`, `backbone`, `backbone_weights`, `filters` of the head
    stages, `pad_to`. The backbone must downsample by `2 ** (num_stages + 1)` (32 by default).
    """

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
        encoder, preprocessing, backbone_config = resolve_backbone(backbone, backbone_weights)
        encoder = keras.Model(encoder.inputs, encoder.output, name="backbone")

        # === Functional Model ===
        image = keras.Input(shape=(None, None, 3), name="image")
        x = PadToMultiple(pad_to, name="pad", dtype=dtype)(image) if pad_to else image
        x = encoder(ImagePreprocessing(preprocessing, name="preprocess", dtype=dtype)(x))
        x = keras.layers.ReLU(name="backbone_relu", dtype=dtype)(x)
        for i in range(num_stages):
            x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"head_{i}_transpose", dtype=dtype)(x)
            x = keras.layers.BatchNormalization(name=f"head_{i}_bn", dtype=dtype)(x)
            x = keras.layers.ReLU(name=f"head_{i}_relu", dtype=dtype)(x)
        x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, name="classifier", dtype=dtype)(x)
        x = keras.layers.Activation(output_activation(num_classes), name="probabilities", dtype="float32")(x)
        if pad_to:
            x = CropLike(name="crop", dtype="float32")([x, image])
        super().__init__(inputs=image, outputs=x, **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone_config = backbone_config
        self.filters = int(filters)
        self.num_stages = int(num_stages)
        self.pad_to = int(pad_to)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "backbone": self.backbone_config,
            "filters": self.filters,
            "num_stages": self.num_stages,
            "pad_to": self.pad_to,
        }
