"""Losses for image-to-image models, computed in float32 with `keras.ops` only."""

import keras
from keras import ops

from kx_vision.backbones import vgg16_feature_extractor
from kx_vision.config import LESSON_CONTENT_LAYERS, LESSON_STYLE_LAYER_WEIGHTS, LESSON_STYLE_LAYERS  # noqa: F401
from kx_vision.errors import ArgumentError
from kx_vision.image_ops import labels_and_valid, to_caffe  # noqa: F401 - to_caffe is part of this module's API


@keras.saving.register_keras_serializable(package="kx_vision")
class PerceptualLoss(keras.losses.Loss):
    """Feature (perceptual) loss of the lesson: L1 between VGG16 activations of prediction and
    target at several layers, weighted per layer, plus a small L1 pixel term.

    The defaults are the lesson's `FeatureLoss`: the activations just before VGG16's first three
    max-pools (block1_conv2, block2_conv2, block3_conv3) with weights 0.2 / 0.7 / 0.1, and the
    pixel L1 divided by 100. Inputs are RGB in [0, 1]; the caffe preprocessing VGG16 expects is
    applied inside the loss. VGG16 is frozen.

    VGG16 is built when the loss is first computed (or by `build_extractor()`), not before: a model compiled
    with this loss saves without VGG16's weights and loads where they are absent; only computing the loss
    there fails, with a `WeightsUnavailableError` naming the file and the config key `loss.vgg_weights`.

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
            raise ArgumentError(
                f"PerceptualLoss: {len(layer_names)} layer_names but {len(layer_weights)} "
                "layer_weights; give one weight per layer"
            )
        self.weights = weights
        self.layer_names = tuple(layer_names)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.pixel_weight = float(pixel_weight)
        # Held out of Keras's sight: VGG16 is not part of what a model compiled with this loss saves.
        self._vgg = _Untracked()

    def build_extractor(self):
        """The frozen VGG16 feature extractor, built now if it was not yet (the loss builds it when first
        computed). A method, not an attribute: Keras's saving would otherwise find it and store VGG16."""
        if self._vgg.model is None:
            self._vgg.model = vgg16_feature_extractor(self.layer_names, weights=self.weights)
        return self._vgg.model

    def call(self, y_true, y_pred):
        y_true = ops.convert_to_tensor(y_true, "float32")
        y_pred = ops.convert_to_tensor(y_pred, "float32")
        # Per-image losses (shape (N,)), so the Loss reduction and sample weights apply as usual.
        loss = self.pixel_weight * ops.mean(ops.abs(y_true - y_pred), axis=(1, 2, 3))
        extractor = self.build_extractor()
        features_true = extractor(to_caffe(y_true), training=False)
        features_pred = extractor(to_caffe(y_pred), training=False)
        if len(self.layer_names) == 1:  # a model of one output returns it, not a list of it
            features_true, features_pred = [features_true], [features_pred]
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


class _Untracked:
    """A holder Keras's saving does not look into (it saves only Keras objects and lists, dicts, tuples of them)."""

    model = None


def _valid_and_labels(y_true, num_classes, ignore_class):
    """`(labels, valid)`: integer labels `(N, H, W)` with ignored pixels set to 0 (a valid class id, so
    one-hot and gathers stay in range; `valid` removes them), and a float mask `(N, H, W)`."""
    labels, valid = labels_and_valid(y_true, ignore_class)
    return ops.where(valid > 0, labels, 0), valid


def _probabilities(y_pred, num_classes):
    """Per-class probabilities `(N, H, W, C)`; a binary `(N, H, W, 1)` sigmoid becomes 2 classes."""
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    if num_classes == 1:
        return ops.concatenate([1.0 - y_pred, y_pred], axis=-1)
    return y_pred


def segmentation_cross_entropy(y_true, y_pred, num_classes, ignore_class=None):
    """Per-image mean cross-entropy over the pixels that are not `ignore_class`; `(N,)`.

    `y_pred` holds probabilities: `(N, H, W, 1)` sigmoid for `num_classes=1`, else softmax.
    """
    labels, valid = _valid_and_labels(y_true, num_classes, ignore_class)
    probs = _probabilities(y_pred, num_classes)
    classes = probs.shape[-1]
    picked = ops.sum(probs * ops.one_hot(labels, classes, dtype="float32"), axis=-1)
    nll = -ops.log(ops.clip(picked, 1e-7, 1.0))
    return ops.sum(nll * valid, axis=(1, 2)) / ops.maximum(ops.sum(valid, axis=(1, 2)), 1.0)


def soft_dice_loss(y_true, y_pred, num_classes, ignore_class=None, smooth=1.0):
    """Per-image `1 - soft dice` on the non-ignored pixels; `(N,)`.

    Binary (`num_classes=1`): dice of the foreground probability. Multi-class: mean over classes
    of the per-class soft dice.
    """
    labels, valid = _valid_and_labels(y_true, num_classes, ignore_class)
    probs = _probabilities(y_pred, num_classes)
    target = ops.one_hot(labels, probs.shape[-1], dtype="float32")
    if num_classes == 1:
        probs, target = probs[..., 1:], target[..., 1:]
    mask = valid[..., None]
    intersection = ops.sum(probs * target * mask, axis=(1, 2))
    total = ops.sum((probs + target) * mask, axis=(1, 2))
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - ops.mean(dice, axis=-1)


@keras.saving.register_keras_serializable(package="kx_vision")
class SegmentationLoss(keras.losses.Loss):
    """`ce_weight * cross-entropy + dice_weight * (1 - soft dice)`, both ignoring `ignore_class`.

    Keras's `SparseCategoricalCrossentropy(ignore_class=...)` covers the multi-class cross-entropy
    alone; this loss also covers the binary (sigmoid) case with the same ignore semantics and adds
    the dice term, per image, so one loss serves both tasks (the multi-class cross-entropy equals
    Keras's: see tests/test_segmentation_losses.py).

    Args:
        num_classes: 1 (binary, sigmoid output) or the number of classes (softmax output).
        ignore_class: label value excluded from the loss (e.g. CamVid's void, 11), or None.
        ce_weight, dice_weight: weights of the two terms (set one to 0 to use the other alone).
    """

    def __init__(self, num_classes=1, ignore_class=None, ce_weight=1.0, dice_weight=1.0,
                 name="segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        loss = 0.0
        if self.ce_weight:
            loss = loss + self.ce_weight * segmentation_cross_entropy(
                y_true, y_pred, self.num_classes, self.ignore_class)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(
                y_true, y_pred, self.num_classes, self.ignore_class)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_class": self.ignore_class,
            "ce_weight": self.ce_weight,
            "dice_weight": self.dice_weight,
        }


def gram_matrix(features):
    """Per-image Gram matrices `(N, C, C)` of features `(N, H, W, C)`, normalised by `C * H * W`.

    Batched: each image's channels are correlated with that image's own channels. (The lesson points
    out that a plain `x @ x.T` over a flattened batch compares every image with every other.)
    """
    features = ops.cast(features, "float32")
    shape = ops.shape(features)
    size = ops.cast(shape[1] * shape[2] * shape[3], "float32")
    return ops.einsum("nhwc,nhwd->ncd", features, features) / size


JOHNSON_STYLE_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")


# The lesson's choice (style-transfer-net), `LESSON_CONTENT_LAYERS`, `LESSON_STYLE_LAYERS` and
# `LESSON_STYLE_LAYER_WEIGHTS`, is imported above from kx_vision.config, where the style task's config finds it too.

# The layers of keras.applications.VGG16 (include_top=False) a feature loss can read.
VGG16_LAYERS = tuple(f"block{block}_{kind}" for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                     for kind in [f"conv{i}" for i in range(1, convs + 1)] + ["pool"])


@keras.saving.register_keras_serializable(package="kx_vision")
class StyleTransferLoss(keras.losses.Loss):
    """Perceptual loss of fast style transfer (Johnson et al. 2016), per image in the batch.

    `content_weight * mean_l MSE(VGG16 features at content layer l of prediction and content image)
    + style_weight * sum_l layer_weight_l * ||G_l(prediction) - G_l(style)||^2 (mean over entries)
    + tv_weight * total variation`, with `G` the batched Gram matrix normalised by `C*H*W` and the
    style image's Gram matrices computed once, at construction. `y_true` is the content image,
    `y_pred` the stylised output, both RGB in [0, 1]. `parts()` returns each term, for display.

    Args:
        style_image: an image file path (read with `keras.utils.load_img`), or an `(H, W, 3)` RGB
            array in [0, 1] (or uint8). Only a path goes into `get_config`: a loss built from an
            array saves without it and cannot be rebuilt from its config.
        style_size: if set, the style image is resized (bicubic) so that its short side is this.
        weights: VGG16 weights: "imagenet" (default), `None` (random, for tests) or a file path.
        content_layers, style_layers, style_layer_weights: VGG16 layers (Johnson's relu2_2 and
            relu1_2 / relu2_2 / relu3_3 / relu4_3 by default; the lesson's choice is
            `LESSON_CONTENT_LAYERS`, `LESSON_STYLE_LAYERS`, `LESSON_STYLE_LAYER_WEIGHTS`) and
            per-style-layer weights (default: 1 each). `content_layer` (one name) is accepted too.
        content_weight, style_weight, tv_weight: weights of the three terms. The default ratio
            (1.5) is pytorch/examples' fast_neural_style balance (1e5 : 1e10) carried over to VGG
            features on the caffe 0-255 scale (Gram terms grow as scale^4, content as scale^2).
    """

    def __init__(self, style_image, weights="imagenet", content_layers=("block2_conv2",),
                 style_layers=JOHNSON_STYLE_LAYERS, style_layer_weights=None, content_weight=1.0,
                 style_weight=1.5, tv_weight=0.0, style_size=None, name="style_transfer_loss", **kwargs):
        if "content_layer" in kwargs:  # the single-layer spelling of earlier configs
            content_layers = (kwargs.pop("content_layer"),)
        super().__init__(name=name, **kwargs)
        if isinstance(style_image, dict):
            raise ArgumentError("StyleTransferLoss: this loss was built from an array, which is not saved in its "
                             "config; build it again from the style image")
        self.style_image_path = style_image if isinstance(style_image, str) else None
        self.style_size = None if style_size is None else int(style_size)
        style = self._load_style(style_image, self.style_size)
        self.weights = weights
        self.content_layers = (content_layers,) if isinstance(content_layers, str) else tuple(content_layers)
        self.style_layers = tuple(style_layers)
        if not self.content_layers:
            raise ArgumentError("StyleTransferLoss: give at least one content layer")
        self.style_layer_weights = tuple(float(w) for w in (style_layer_weights or [1.0] * len(self.style_layers)))
        if len(self.style_layer_weights) != len(self.style_layers):
            raise ArgumentError(f"StyleTransferLoss: give one style layer weight per style layer, got "
                             f"{len(self.style_layer_weights)} for {len(self.style_layers)}")
        self.content_weight, self.style_weight, self.tv_weight = float(content_weight), float(style_weight), float(tv_weight)
        layers = list(dict.fromkeys(self.style_layers + self.content_layers))
        self._layer_index = {name: i for i, name in enumerate(layers)}
        # No other loss trains a style network: the error offers no alternative to the weights.
        self.extractor = vgg16_feature_extractor(layers, weights=weights, alternative=None)
        features = self._features(style[None])
        self.style_grams = [ops.convert_to_tensor(ops.convert_to_numpy(gram_matrix(features[self._layer_index[n]]))[0])
                            for n in self.style_layers]

    @staticmethod
    def _load_style(style_image, style_size=None):
        import numpy as np

        if isinstance(style_image, str):
            style_image = keras.utils.img_to_array(keras.utils.load_img(style_image, color_mode="rgb"),
                                                   dtype="float32") / 255.0
        array = np.asarray(style_image)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ArgumentError(f"style image must be (H, W, 3), got shape {array.shape}")
        array = array.astype("float32") / 255.0 if array.dtype == np.uint8 else array.astype("float32")
        if style_size and min(array.shape[:2]) != style_size:
            scale = style_size / min(array.shape[:2])
            size = (round(array.shape[0] * scale), round(array.shape[1] * scale))
            array = ops.convert_to_numpy(ops.image.resize(array, size, interpolation="bicubic", antialias=True))
            array = np.clip(array, 0.0, 1.0)
        return array

    def _features(self, images):
        features = self.extractor(to_caffe(images), training=False)
        return features if isinstance(features, (list, tuple)) else [features]

    def parts(self, y_true, y_pred):
        """`{"content", "style", "tv"}`: each weighted term per image, shape `(N,)`."""
        y_pred = ops.cast(y_pred, "float32")
        pred = self._features(y_pred)
        target = self._features(ops.cast(y_true, "float32"))
        content = 0.0
        for name in self.content_layers:
            c = self._layer_index[name]
            content = content + ops.mean(ops.square(pred[c] - ops.stop_gradient(target[c])), axis=(1, 2, 3))
        content = content / len(self.content_layers)
        style = 0.0
        for name, weight, gram in zip(self.style_layers, self.style_layer_weights, self.style_grams):
            diff = gram_matrix(pred[self._layer_index[name]]) - gram[None]
            style = style + weight * ops.mean(ops.square(diff), axis=(1, 2))
        dy = y_pred[:, 1:, :, :] - y_pred[:, :-1, :, :]
        dx = y_pred[:, :, 1:, :] - y_pred[:, :, :-1, :]
        tv = ops.mean(ops.abs(dy), axis=(1, 2, 3)) + ops.mean(ops.abs(dx), axis=(1, 2, 3))
        return {"content": self.content_weight * content, "style": self.style_weight * style,
                "tv": self.tv_weight * tv}

    def call(self, y_true, y_pred):
        parts = self.parts(y_true, y_pred)
        return parts["content"] + parts["style"] + parts["tv"]

    def get_config(self):
        # The style image by path only: an array (hundreds of thousands of numbers) does not belong in a config.
        return {**super().get_config(), "style_image": self.style_image_path, "style_size": self.style_size,
                "weights": self.weights, "content_layers": list(self.content_layers),
                "style_layers": list(self.style_layers), "style_layer_weights": list(self.style_layer_weights),
                "content_weight": self.content_weight, "style_weight": self.style_weight, "tv_weight": self.tv_weight}

    @classmethod
    def from_config(cls, config):
        if config.get("style_image") is None:
            raise ArgumentError("StyleTransferLoss: this loss was built from an array, which is not saved in its "
                             "config; build it again from the style image")
        return cls(**config)
