"""Image-quality metrics: PSNR and SSIM on the Y channel (or RGB), as functions and Keras metrics.

The protocol is the one super-resolution papers report (EDSR, VDSR, ...): images in [0, 1] are
converted to the luma channel Y of ITU-R BT.601 exactly as MATLAB's `rgb2ycbcr` does
(Y in [16, 235] on a 0-255 scale), a border of `shave` pixels (the scale factor) is removed, and PSNR
is `10 log10(255**2 / MSE)`. SSIM follows Wang et al. 2004 (11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, 'valid' filtering), as their MATLAB `ssim_index` that the papers use.
"""

import keras
import numpy as np
from keras import ops

from kx_vision.errors import ArgumentError
from kx_vision.image_ops import labels_and_valid

# ITU-R BT.601 luma for RGB in [0, 1], giving Y on the 0-255 scale (MATLAB rgb2ycbcr).
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_CHANNELS = ("y", "rgb")
SSIM_WINDOW = 11


def rgb_to_y(images):
    """Luma Y (BT.601, MATLAB `rgb2ycbcr`) of RGB images in [0, 1], on a 0-255 scale, keeping a
    trailing channel axis of 1."""
    images = ops.convert_to_tensor(images, "float32")
    weights = ops.convert_to_tensor(_Y_WEIGHTS, "float32")
    return ops.sum(images * weights, axis=-1, keepdims=True) + _Y_OFFSET


def _check_arguments(owner, shave, channel):
    if channel not in _CHANNELS:
        raise ArgumentError(f"{owner}: channel={channel!r}; it must be one of {_CHANNELS}", ["channel"])
    if isinstance(shave, bool) or not isinstance(shave, (int, np.integer)) or shave < 0:
        raise ArgumentError(f"{owner}: shave={shave!r}; it must be an integer >= 0 (pixels removed at each border)",
                            ["shave"])


def to_unit_range(images):
    """Float32 images in [0, 1] from float images (unchanged) or uint8 pixels (divided by 255); any other
    integer type is refused."""
    images = ops.convert_to_tensor(images)
    dtype = keras.backend.standardize_dtype(images.dtype)
    if dtype == "uint8":
        return ops.cast(images, "float32") / 255.0
    if not dtype.startswith(("float", "bfloat")):
        raise ArgumentError(f"images must be float in [0, 1] or uint8; got {dtype}")
    return ops.cast(images, "float32")


def _prepare(y_true, y_pred, shave, channel, quantize, owner="psnr"):
    """Float32 images on a 0-255 scale, border shaved, in the requested channel space."""
    _check_arguments(owner, shave, channel)
    y_true = to_unit_range(y_true)
    y_pred = ops.clip(to_unit_range(y_pred), 0.0, 1.0)
    if len(y_true.shape) != 4 or len(y_pred.shape) != 4 or any(
            a is not None and b is not None and a != b for a, b in zip(y_true.shape, y_pred.shape)):
        raise ArgumentError(f"{owner} takes two batches (N, H, W, C) of the same shape; got "
                            f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}")
    small = [d for d in y_true.shape[1:3] if d is not None and d <= 2 * shave]
    if small:
        raise ArgumentError(f"{owner}: shave={shave} removes the whole of images of shape {tuple(y_true.shape)}",
                            ["shave"])
    if quantize:
        # Model outputs are saved as 8-bit images; score what the user would get.
        y_pred = ops.round(y_pred * 255.0) / 255.0
    if shave:
        y_true = y_true[:, shave:-shave, shave:-shave, :]
        y_pred = y_pred[:, shave:-shave, shave:-shave, :]
    if channel == "y":
        return rgb_to_y(y_true), rgb_to_y(y_pred)
    return y_true * 255.0, y_pred * 255.0


@keras.saving.register_keras_serializable(package="kx_vision")
def psnr(y_true, y_pred, shave=0, channel="y", quantize=False):
    """Per-image PSNR in dB of batches `(N, H, W, 3)` of images, float in [0, 1] or uint8 (divided by 255);
    returns shape `(N,)`. Usable as a Keras metric (`metrics=[psnr]`), which saves and loads by name.

    Args:
        shave: pixels removed at each border before scoring (the scale factor, by convention).
        channel: "y" (luma, as papers report) or "rgb".
        quantize: round predictions to 8-bit levels first, as when they are saved as images.
    """
    a, b = _prepare(y_true, y_pred, shave, channel, quantize, "psnr")
    mse = ops.mean(ops.square(a - b), axis=(1, 2, 3))
    mse = ops.maximum(mse, 1e-10)
    return 10.0 * ops.log10(255.0**2 / mse)


def _gaussian_window(size=SSIM_WINDOW, sigma=1.5):
    """The normalised 1-D Gaussian of `size` taps; SSIM's 2-D window is its outer product with itself."""
    coords = ops.arange(size, dtype="float32") - (size - 1) / 2.0
    g = ops.exp(-(coords**2) / (2.0 * sigma**2))
    return g / ops.sum(g)


@keras.saving.register_keras_serializable(package="kx_vision")
def ssim(y_true, y_pred, shave=0, channel="y", quantize=False):
    """Per-image SSIM of batches `(N, H, W, 3)`, float in [0, 1] or uint8 (divided by 255), after Wang et
    al. 2004; returns `(N,)`. Usable as a Keras metric (`metrics=[ssim]`), which saves and loads by name.

    On "rgb" the SSIM of each channel is averaged. Images must be at least 11 pixels wide and high
    after shaving.
    """
    a, b = _prepare(y_true, y_pred, shave, channel, quantize, "ssim")
    small = [d for d in a.shape[1:3] if d is not None and d < SSIM_WINDOW]
    if small:
        raise ArgumentError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving "
            f"{shave}; got shape {tuple(a.shape)}", ["shave"]
        )
    # The five maps to blur stacked as channels, blurred at once by the separable window: an 11x1 then a 1x11
    # depthwise conv (22 taps a pixel instead of 121; on TensorFlow's CPU 2-2.5x faster than five 11x11
    # convs, and the same to float32 rounding).
    channels = a.shape[-1]
    maps = ops.concatenate([a, b, a * a, b * b, a * b], axis=-1)
    g = _gaussian_window()
    for shape in ((SSIM_WINDOW, 1, 1, 1), (1, SSIM_WINDOW, 1, 1)):
        maps = ops.depthwise_conv(maps, ops.tile(ops.reshape(g, shape), (1, 1, 5 * channels, 1)), 1, "valid")
    mu_a, mu_b, aa, bb, ab = (maps[..., i * channels : (i + 1) * channels] for i in range(5))
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ops.mean(ssim_map, axis=(1, 2, 3))


class _ImageQualityMetric(keras.metrics.Mean):
    """Mean of a per-image quality function over all images seen."""

    _fn = None

    def __init__(self, shave=0, channel="y", quantize=False, name=None, dtype=None, **kwargs):
        _check_arguments(type(self).__name__, shave, channel)
        name = name or f"{type(self).__name__.lower()}{'' if channel == 'y' else '_' + channel}"
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.shave = int(shave)
        self.channel = channel
        self.quantize = bool(quantize)

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = type(self)._fn(y_true, y_pred, self.shave, self.channel, self.quantize)
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        return {
            "shave": self.shave,
            "channel": self.channel,
            "quantize": self.quantize,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="kx_vision")
class PSNR(_ImageQualityMetric):
    """Mean per-image PSNR (dB) on Y (default) or RGB, with `shave` border pixels removed."""

    _fn = staticmethod(psnr)


@keras.saving.register_keras_serializable(package="kx_vision")
class SSIM(_ImageQualityMetric):
    """Mean per-image SSIM on Y (default) or RGB, with `shave` border pixels removed."""

    _fn = staticmethod(ssim)


def _hard_labels(y_true, y_pred, num_classes, ignore_class):
    """Integer labels and predictions `(N, H, W)` and a float validity mask."""
    labels, valid = labels_and_valid(y_true, ignore_class)
    y_pred = ops.convert_to_tensor(y_pred)
    if num_classes == 1:
        predicted = ops.cast(ops.greater_equal(y_pred[..., 0], 0.5), "int32")
    else:
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    return labels, predicted, valid


@keras.saving.register_keras_serializable(package="kx_vision")
class PixelAccuracy(keras.metrics.Metric):
    """Fraction of correctly classified pixels, ignoring `ignore_class` (Keras's accuracy metrics
    have no ignore class). Binary outputs (`num_classes=1`) are thresholded at 0.5."""

    def __init__(self, num_classes=1, ignore_class=None, name="pixel_accuracy", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self.correct = self.add_variable((), initializer="zeros", name="correct", dtype="float32")
        self.total = self.add_variable((), initializer="zeros", name="total", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, valid = _hard_labels(y_true, y_pred, self.num_classes, self.ignore_class)
        hits = ops.cast(ops.equal(labels, predicted), "float32") * valid
        self.correct.assign_add(ops.sum(hits))
        self.total.assign_add(ops.sum(valid))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_class": self.ignore_class,
                "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="kx_vision")
class Dice(keras.metrics.Metric):
    """Dice coefficient `2|P∩T| / (|P| + |T|)` of the foreground of a binary segmentation
    (sigmoid output thresholded at 0.5), accumulated over all pixels seen, ignoring `ignore_class`.
    Keras has `BinaryIoU` but no dice metric."""

    def __init__(self, ignore_class=None, name="dice", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self.intersection = self.add_variable((), initializer="zeros", name="intersection", dtype="float32")
        self.total = self.add_variable((), initializer="zeros", name="total", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, valid = _hard_labels(y_true, y_pred, 1, self.ignore_class)
        truth = ops.cast(ops.equal(labels, 1), "float32") * valid
        pred = ops.cast(predicted, "float32") * valid
        self.intersection.assign_add(ops.sum(truth * pred))
        self.total.assign_add(ops.sum(truth) + ops.sum(pred))

    def result(self):
        return ops.where(self.total > 0, 2.0 * self.intersection / ops.maximum(self.total, 1.0), 1.0)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {"ignore_class": self.ignore_class, "name": self.name, "dtype": self.dtype}


def segmentation_metrics(num_classes, ignore_class=None):
    """The metrics reported while training a segmentation model: mean IoU (Keras's `MeanIoU` /
    `BinaryIoU`) and pixel accuracy, plus dice for binary tasks."""
    found = [PixelAccuracy(num_classes, ignore_class)]
    if num_classes == 1:
        if ignore_class is None:
            found.append(keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=0.5, name="miou"))
        found.append(Dice(ignore_class))
    else:
        found.append(keras.metrics.MeanIoU(num_classes, ignore_class=ignore_class, sparse_y_pred=False, name="miou"))
    return found


@keras.saving.register_keras_serializable(package="kx_vision")
class StyleLossPart(keras.metrics.Mean):
    """One term ("content", "style" or "tv") of a `StyleTransferLoss`, averaged like a metric, so
    each part of the loss is visible during training (the lesson's `sum_layers=False`).

    Pass the training loss itself as `loss` so its VGG16 is shared. The loss is not part of the
    metric's config (it is the model's loss, saved once, with the model's compile state): a metric
    rebuilt from its config has no loss until one is given with `set_loss`.
    """

    def __init__(self, loss=None, part="style", name=None, dtype=None, **kwargs):
        if part not in ("content", "style", "tv"):
            raise ArgumentError(f"StyleLossPart: part must be content, style or tv, got {part!r}")
        super().__init__(name=name or f"{part}_loss", dtype=dtype or "float32", **kwargs)
        self.loss, self.part = loss, part

    def set_loss(self, loss):
        self.loss = loss

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self.loss is None:
            raise ArgumentError(f"StyleLossPart '{self.name}' has no loss: pass the StyleTransferLoss it shows "
                             "(StyleLossPart(loss, part), or set_loss(loss))")
        return super().update_state(self.loss.parts(y_true, y_pred)[self.part], sample_weight=sample_weight)

    def get_config(self):
        return {"part": self.part, "name": self.name, "dtype": self.dtype}


# Segmentation scores over a whole data set (evaluate, training reports): a confusion matrix from Keras's
# `MeanIoU`, then IoU per class, its mean and pixel accuracy in NumPy.
def confusion_matrix(predict, batches, num_classes, ignore_class=None):
    """Confusion matrix (rows: truth, columns: prediction) over `(images, masks)` batches, with
    Keras's `MeanIoU`, which skips `ignore_class` pixels."""
    classes = max(num_classes, 2)
    metric = keras.metrics.MeanIoU(classes, ignore_class=ignore_class, sparse_y_pred=True)
    total = np.zeros((classes, classes), np.int64)
    for images, masks in batches:
        probs = np.asarray(predict(images))
        labels = (probs[..., 0] >= 0.5).astype(np.int32) if num_classes == 1 else probs.argmax(-1)
        metric.update_state(np.asarray(masks).reshape(labels.shape), labels)
        # Summed here in int64, batch by batch: on JAX the metric counts in int32 (int64 needs jax_enable_x64),
        # which wraps beyond 2**31 pixels a cell (about a thousand Carvana images of background).
        total += np.asarray(keras.ops.convert_to_numpy(metric.total_cm), dtype=np.int64)
        metric.reset_state()
    return total


def scores_from_confusion(cm, class_names=None):
    """`{"miou", "pixel_accuracy", "per_class_iou"}` from a confusion matrix. Classes absent from
    both truth and prediction get IoU NaN and are left out of the mean (as `MeanIoU` does)."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    names = class_names if class_names and len(class_names) == len(iou) else [str(i) for i in range(len(iou))]
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
    }
