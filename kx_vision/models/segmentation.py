"""What the segmentation models (`UNet`, `FPN`, `UpsampleHeadNet`) share: the checks of their common arguments,
the encoder mixin, and the two ends of the functional model, built the same way (the same layer names) by each."""

import copy

import keras

from kx_vision.layers import CropLike, ImagePreprocessing, PadToMultiple
from kx_vision.models.base import KxModel, check_at_least, check_positive


def check_segmentation_arguments(owner, num_classes, pad_to, **positive):
    """The arguments every segmentation model shares: `num_classes` >= 1 (1: binary), `pad_to` >= 0 (0: no
    padding), and channel counts >= 1."""
    check_positive(owner, num_classes=num_classes, **positive)
    check_at_least(owner, 0, pad_to=pad_to)


def output_activation(num_classes):
    return "sigmoid" if num_classes == 1 else "softmax"


def backbone_with_taps(encoder, taps):
    """`encoder` as one layer named "backbone" whose outputs are the activations of the `taps` (`(layer_name,
    reduction, channels)`, as `find_skip_layers` lists them), then its own output."""
    outputs = [encoder.get_layer(name).output for name, _, _ in taps] + [encoder.output]
    return keras.Model(encoder.inputs, outputs, name="backbone")


def apply_encoder(image, backbone, preprocessing, pad_to, dtype=None):
    """The input end: `image` padded (reflection) to a multiple of `pad_to` (`pad`; none for 0), preprocessed as
    the backbone's weights expect (`preprocess`) and encoded. Returns `(padded image, backbone outputs)`."""
    x = PadToMultiple(pad_to, name="pad", dtype=dtype)(image) if pad_to else image
    return x, backbone(ImagePreprocessing(preprocessing, name="preprocess", dtype=dtype)(x))


def apply_probabilities(scores, image, num_classes, pad_to):
    """The output end: per-pixel probabilities in float32 (`probabilities`: sigmoid for one class, else softmax),
    cropped back to the size of the unpadded `image` (`crop`) when the input end padded it."""
    x = keras.layers.Activation(output_activation(num_classes), name="probabilities", dtype="float32")(scores)
    return CropLike(name="crop", dtype="float32")([x, image]) if pad_to else x


class BackboneModel(KxModel):
    """Mixin of the segmentation models built around an encoder layer named "backbone"."""

    # The constructor arguments a model takes besides `num_classes` and `backbone` (and `backbone_weights`, which
    # its saved weights replace): its config, with `get_config`.
    config_keys = ()

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "num_classes": self.num_classes,
                "backbone": self.backbone_config, **{key: getattr(self, key) for key in self.config_keys}}

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
        # Weights come from the saved file: never download them while deserializing. A copy, because
        # deserializing the backbone's serialized model consumes parts of that dict.
        return cls(**{**copy.deepcopy(config), "backbone_weights": None})
