"""Image-quality metrics: PSNR and SSIM on the Y channel (or RGB), as functions and Keras metrics.

The protocol is the one super-resolution papers report (EDSR, VDSR, ...): images in [0, 1] are
converted to the luma channel Y of ITU-R BT.601 exactly as MATLAB's `rgb2ycbcr` does
(Y in [16, 235] on a 0-255 scale), a border of `shave` pixels (the scale factor) is removed, and PSNR
is `10 log10(255**2 / MSE)`. SSIM follows Wang et al. 2004 (11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, 'valid' filtering), as their MATLAB `ssim_index` that the papers use.
"""

import keras
from keras import ops

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


def _prepare(y_true, y_pred, shave, channel, quantize):
    """Float32 images on a 0-255 scale, border shaved, in the requested channel space."""
    if channel not in _CHANNELS:
        raise ValueError(f"`channel` must be one of {_CHANNELS}, got {channel!r}")
    y_true = ops.convert_to_tensor(y_true, "float32")
    y_pred = ops.clip(ops.convert_to_tensor(y_pred, "float32"), 0.0, 1.0)
    if quantize:
        # Model outputs are saved as 8-bit images; score what the user would get.
        y_pred = ops.round(y_pred * 255.0) / 255.0
    if shave:
        y_true = y_true[:, shave:-shave, shave:-shave, :]
        y_pred = y_pred[:, shave:-shave, shave:-shave, :]
    if channel == "y":
        return rgb_to_y(y_true), rgb_to_y(y_pred)
    return y_true * 255.0, y_pred * 255.0


def psnr(y_true, y_pred, shave=0, channel="y", quantize=False):
    """Per-image PSNR in dB of batches `(N, H, W, 3)` of images in [0, 1]; returns shape `(N,)`.

    Args:
        shave: pixels removed at each border before scoring (the scale factor, by convention).
        channel: "y" (luma, as papers report) or "rgb".
        quantize: round predictions to 8-bit levels first, as when they are saved as images.
    """
    a, b = _prepare(y_true, y_pred, shave, channel, quantize)
    mse = ops.mean(ops.square(a - b), axis=(1, 2, 3))
    mse = ops.maximum(mse, 1e-10)
    return 10.0 * ops.log10(255.0**2 / mse)


def _gaussian_window(size=SSIM_WINDOW, sigma=1.5):
    coords = ops.arange(size, dtype="float32") - (size - 1) / 2.0
    g = ops.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / ops.sum(g)
    return ops.reshape(ops.outer(g, g), (size, size, 1, 1))


def ssim(y_true, y_pred, shave=0, channel="y", quantize=False):
    """Per-image SSIM of batches `(N, H, W, 3)` in [0, 1] (Wang et al. 2004); returns `(N,)`.

    On "rgb" the SSIM of each channel is averaged. Images must be at least 11 pixels wide and high
    after shaving.
    """
    a, b = _prepare(y_true, y_pred, shave, channel, quantize)
    small = [d for d in a.shape[1:3] if d is not None and d < SSIM_WINDOW]
    if small:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving "
            f"{shave}; got shape {tuple(a.shape)}"
        )
    channels = a.shape[-1]
    # One depthwise conv blurs every channel with the same Gaussian window.
    window = ops.tile(_gaussian_window(), (1, 1, channels, 1))

    def blur(x):
        return ops.depthwise_conv(x, window, strides=1, padding="valid")

    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ops.mean(ssim_map, axis=(1, 2, 3))


class _ImageQualityMetric(keras.metrics.Mean):
    """Mean of a per-image quality function over all images seen."""

    _fn = None

    def __init__(self, shave=0, channel="y", quantize=False, name=None, dtype=None, **kwargs):
        if channel not in _CHANNELS:
            raise ValueError(f"`channel` must be one of {_CHANNELS}, got {channel!r}")
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
