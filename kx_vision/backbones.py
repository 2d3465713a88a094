"""Backbones from `keras.applications`, loaded with a clear message when their weights are missing."""

import os

import keras

from kx_vision.errors import WeightsUnavailableError

# The file keras.applications looks for in ~/.keras/models before downloading it.
_WEIGHT_FILES = {
    "VGG16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def load_application(name, weights="imagenet", **kwargs):
    """Build `keras.applications.<name>(include_top=False, weights=weights, **kwargs)`.

    `weights` is "imagenet" (downloaded once to ~/.keras/models), `None` (random: for tests and
    training from scratch), or the path of a weights file. A failed download or a missing file
    raises `WeightsUnavailableError` saying what to do; random weights are never substituted.
    """
    if weights not in ("imagenet", None):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(f"{name} weights file not found: {weights}")
    builder = getattr(keras.applications, name)
    try:
        return builder(include_top=False, weights=weights, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure to fetch or read becomes one message
        if weights != "imagenet":
            raise WeightsUnavailableError(
                f"could not load {name} weights from {weights}: {error}"
            ) from error
        file_name = _WEIGHT_FILES.get(name, f"the {name} no-top weights file")
        cache = os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "models")
        raise WeightsUnavailableError(
            f"could not get the ImageNet weights of {name} ({type(error).__name__}: {error}). "
            f"This machine may be offline. Either copy {file_name} into {cache}/ "
            f"(keras.applications looks there before downloading), or pass its path as the "
            f"weights (e.g. --set loss.vgg_weights=/path/{file_name}), or choose a loss that "
            f"needs no pretrained network (--set loss.name=l1)."
        ) from error


def vgg16_feature_extractor(layer_names, weights="imagenet"):
    """A frozen VGG16 mapping caffe-preprocessed images (BGR, 0-255, mean removed) to the outputs
    of `layer_names`, e.g. ("block1_conv2", "block2_conv2", "block3_conv3")."""
    vgg = load_application("VGG16", weights=weights, input_shape=(None, None, 3))
    vgg.trainable = False
    missing = [n for n in layer_names if n not in {layer.name for layer in vgg.layers}]
    if missing:
        raise ValueError(f"VGG16 has no layer(s) {missing}; its layers: {[l.name for l in vgg.layers]}")
    outputs = [vgg.get_layer(n).output for n in layer_names]
    extractor = keras.Model(vgg.input, outputs, name="vgg16_features")
    extractor.trainable = False
    return extractor
