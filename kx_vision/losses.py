"""Losses for image-to-image models, computed in float32 with `keras.ops` only."""

import keras
from keras import ops

from kx_vision.backbones import vgg16_feature_extractor

# keras.applications' "caffe" preprocessing: BGR order, 0-255 scale, ImageNet mean removed.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def to_caffe(images):
    """RGB in [0, 1] -> the input VGG16 was trained on (BGR, 0-255, mean-subtracted)."""
    bgr = ops.flip(ops.convert_to_tensor(images, "float32"), axis=-1) * 255.0
    return bgr - ops.convert_to_tensor(_CAFFE_BGR_MEAN, "float32")


@keras.saving.register_keras_serializable(package="kx_vision")
class PerceptualLoss(keras.losses.Loss):
    """Feature (perceptual) loss of the lesson: L1 between VGG16 activations of prediction and
    target at several layers, weighted per layer, plus a small L1 pixel term.

    The defaults are the lesson's `FeatureLoss`: the activations just before VGG16's first three
    max-pools (block1_conv2, block2_conv2, block3_conv3) with weights 0.2 / 0.7 / 0.1, and the
    pixel L1 divided by 100. Inputs are RGB in [0, 1]; the caffe preprocessing VGG16 expects is
    applied inside the loss. VGG16 is frozen.

    Args:
        weights: VGG16 weights, "imagenet" (default), `None` (random, for tests) or a file path.
            When the ImageNet weights cannot be downloaded a `WeightsUnavailableError` says so.
        layer_names: VGG16 layers compared.
        layer_weights: one weight per layer.
        pixel_weight: weight of the pixel L1 term.
    """

    def __init__(
        self,
        weights="imagenet",
        layer_names=("block1_conv2", "block2_conv2", "block3_conv3"),
        layer_weights=(0.2, 0.7, 0.1),
        pixel_weight=0.01,
        name="perceptual_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if len(layer_names) != len(layer_weights):
            raise ValueError(
                f"PerceptualLoss: {len(layer_names)} layer_names but {len(layer_weights)} "
                "layer_weights; give one weight per layer"
            )
        self.weights = weights
        self.layer_names = tuple(layer_names)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.pixel_weight = float(pixel_weight)
        self.extractor = vgg16_feature_extractor(self.layer_names, weights=weights)

    def call(self, y_true, y_pred):
        y_true = ops.convert_to_tensor(y_true, "float32")
        y_pred = ops.convert_to_tensor(y_pred, "float32")
        # Per-image losses (shape (N,)), so the Loss reduction and sample weights apply as usual.
        loss = self.pixel_weight * ops.mean(ops.abs(y_true - y_pred), axis=(1, 2, 3))
        features_true = self.extractor(to_caffe(y_true), training=False)
        features_pred = self.extractor(to_caffe(y_pred), training=False)
        for weight, f_true, f_pred in zip(self.layer_weights, features_true, features_pred):
            f_true = ops.stop_gradient(ops.cast(f_true, "float32"))
            f_pred = ops.cast(f_pred, "float32")
            loss = loss + weight * ops.mean(ops.abs(f_true - f_pred), axis=(1, 2, 3))
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "weights": self.weights,
            "layer_names": list(self.layer_names),
            "layer_weights": list(self.layer_weights),
            "pixel_weight": self.pixel_weight,
        }
