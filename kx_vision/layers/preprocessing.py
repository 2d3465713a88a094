"""Input preprocessing expected by pretrained backbones, as a serializable layer."""

import keras
from keras import ops

from kx_vision.errors import ArgumentError
from kx_vision.image_ops import to_caffe

_MODES = ("none", "caffe", "tf", "torch", "raw255")
_IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_RGB_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="kx_vision")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB images in [0, 1] to what a `keras.applications` backbone was trained on.

    Modes (those of `keras.applications.imagenet_utils.preprocess_input`, from [0, 1] inputs):
    "caffe" (ResNet50, VGG16: BGR, 0-255, ImageNet mean removed), "tf" (MobileNetV2: [-1, 1]),
    "torch" (DenseNet: ImageNet mean/std), "raw255" (EfficientNet, which normalises itself:
    0-255), "none".
    """

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ArgumentError(f"ImagePreprocessing: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return to_caffe(x, x.dtype)
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_RGB_MEAN, x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_RGB_STD, x.dtype)
            return (x - mean) / std
        if self.mode == "raw255":
            return x * 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
