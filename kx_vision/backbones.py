"""Backbones from `keras.applications`, loaded with a clear message when their weights are missing."""

import os

import keras

from kx_vision.errors import ArgumentError, WeightsUnavailableError

# The file keras.applications looks for in ~/.keras/models before downloading it.
_WEIGHT_FILES = {
    "VGG16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def load_application(name, weights="imagenet", weights_key="model.backbone_weights",
                     alternative="set the config key 'model.backbone_weights' to null to train the backbone from scratch",
                     **kwargs):
    """Build `keras.applications.<name>(include_top=False, weights=weights, **kwargs)`.

    `weights` is "imagenet" (downloaded once to ~/.keras/models), `None` (random: for tests and
    training from scratch), or the path of a weights file. A failed download or a missing file
    raises `WeightsUnavailableError` saying what to do (`weights_key` names the config key that takes a
    weights file, `alternative` the other way out, or None); random weights are never substituted. The
    message names config keys, not command-line syntax: the library is also used without the CLI.
    """
    if weights not in ("imagenet", None):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(
                f"{name} weights file not found: {weights} (the value of the config key '{weights_key}')")
    builder = getattr(keras.applications, name)
    try:
        return builder(include_top=False, weights=weights, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure to fetch or read becomes one message
        if weights != "imagenet":
            raise WeightsUnavailableError(
                f"could not load {name} weights from {weights}: {error}"
            ) from error
        file_name = _WEIGHT_FILES.get(name, f"the {name} no-top weights file (*_notop.h5)")
        cache = os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "models")
        raise WeightsUnavailableError(
            f"could not get the ImageNet weights of {name} ({type(error).__name__}: {error}). "
            f"This machine may be offline. Either copy {file_name} into {cache}/ "
            f"(keras.applications looks there before downloading), or set the config key '{weights_key}' "
            f"to its path" + (f", or {alternative}." if alternative else ".")
        ) from error


def vgg16_feature_extractor(layer_names, weights="imagenet",
                            alternative="use a loss that needs no pretrained network (set the config key "
                                        "'loss.name' to l1)"):
    """A frozen VGG16 mapping caffe-preprocessed images (BGR, 0-255, mean removed) to the outputs
    of `layer_names`, e.g. ("block1_conv2", "block2_conv2", "block3_conv3"). `alternative` is the
    way around missing weights that the error suggests (None: there is none)."""
    vgg = load_application(
        "VGG16", weights=weights, weights_key="loss.vgg_weights", alternative=alternative,
        input_shape=(None, None, 3))
    vgg.trainable = False
    missing = [n for n in layer_names if n not in {layer.name for layer in vgg.layers}]
    if missing:
        raise ArgumentError(f"VGG16 has no layer(s) {missing}; its layers: {[layer.name for layer in vgg.layers]}")
    outputs = [vgg.get_layer(n).output for n in layer_names]
    extractor = keras.Model(vgg.input, outputs, name="vgg16_features")
    extractor.trainable = False
    return extractor


# Backbones known by name: the keras.applications constructor and the input preprocessing its
# ImageNet weights expect (applied inside the model to images in [0, 1], see `ImagePreprocessing`).
BACKBONES = {
    "resnet50": ("ResNet50", "caffe"),
    "vgg16": ("VGG16", "caffe"),
    "mobilenetv2": ("MobileNetV2", "tf"),
    "mobilenetv3small": ("MobileNetV3Small", "raw255"),
    "efficientnetb0": ("EfficientNetB0", "raw255"),
    "efficientnetb3": ("EfficientNetB3", "raw255"),
    "resnet50v2": ("ResNet50V2", "tf"),
    "densenet121": ("DenseNet121", "torch"),
}


def simple_backbone(num_stages=5, width=16, name="simple"):
    """A small plain CNN encoder (each stage: stride-2 conv, BN, ReLU, conv, BN, ReLU; channels
    `width * 2**i` capped at 256), for training from scratch on small data sets and for fast tests.
    It has no pretrained weights."""
    image = keras.Input((None, None, 3), name=f"{name}_input")
    x = image
    for i in range(num_stages):
        filters = min(width * 2**i, 256)
        for j, strides in enumerate((2, 1)):
            x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                    name=f"{name}_stage{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(name=f"{name}_stage{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"{name}_stage{i}_relu{j}")(x)
    return keras.Model(image, x, name=name)


def build_backbone(name, weights="imagenet", **kwargs):
    """`(backbone, preprocessing)` for a name of `BACKBONES` (case-insensitive), or "simple"."""
    key = name.lower().replace("_", "")
    if key == "simple":
        if weights not in (None, "none"):
            raise WeightsUnavailableError("the 'simple' backbone has no pretrained weights: set its weights to null")
        return simple_backbone(), "none"
    if key not in BACKBONES:
        raise ArgumentError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}, simple (or pass a keras.Model)")
    application, preprocessing = BACKBONES[key]
    return load_application(application, weights=weights, input_shape=(None, None, 3), **kwargs), preprocessing


def find_skip_layers(backbone, probe_size=256):
    """Names of the layers whose activations a U-Net decoder should take as skips, shallow to deep.

    Like fastai's DynamicUnet, which runs a dummy input and watches where the spatial size changes:
    the output shape of every layer is computed symbolically for a `probe_size` square input, and
    at each halving of the spatial size the last layer seen at the previous size is tapped. Layers
    that only pad (a size larger than the current one) and side branches that pool to a much smaller
    size (squeeze-and-excitation) are ignored, and so are taps with no more channels than the image
    (preprocessing layers). The backbone's output is the bottleneck, not a tap.

    Returns a list of `(layer_name, reduction_factor, channels)`.
    """
    channels = backbone.input.shape[-1]
    layers = [
        layer for layer in backbone.layers[1:]
        if not isinstance(layer, keras.layers.InputLayer) and len(getattr(layer.output, "shape", ())) == 4
    ]
    probe = keras.Model(backbone.inputs, [layer.output for layer in layers])
    specs = probe.compute_output_spec(keras.KerasTensor((1, probe_size, probe_size, channels)))
    taps = []
    current, last_at_current = probe_size, None
    for layer, spec in zip(layers, specs):
        size = spec.shape[1]
        if size == current:
            last_at_current = (layer.name, probe_size // size, spec.shape[-1])
        elif current // 2 - 1 <= size < current:
            if last_at_current is not None and last_at_current[2] > channels:
                taps.append(last_at_current)
            current, last_at_current = size, (layer.name, probe_size // size, spec.shape[-1])
    return taps


def resolve_backbone(backbone, weights="imagenet"):
    """`(backbone_model, preprocessing_mode, config_value)` for a backbone given as a name of
    `BACKBONES`, a functional `keras.Model`, or the serialized model stored in a config."""
    if isinstance(backbone, str):
        model, preprocessing = build_backbone(backbone, weights=weights)
        return model, preprocessing, backbone
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "inputs"):
        raise ArgumentError(f"backbone must be a name ({', '.join(BACKBONES)}) or a functional keras.Model, got {backbone!r}")
    return backbone, "none", keras.saving.serialize_keras_object(backbone)
