"""What every kx_vision model shares: presets (`from_preset`, `save_to_preset`) and input checks.

Model calls take float images: a batch `(N, H, W, C)` of RGB in [0, 1]. An integer array (uint8 pixels) is
refused rather than read as values up to 255, and a single image `(H, W, C)`, a wrong channel count or an
image below the model's minimum size are refused in one short message before Keras sees them (Keras's own
message prints the whole array; on JAX a `predict` call with a rank-3 array even leaves a model unusable,
see `tests/test_api.py`). `kx_vision.inference`'s functions take single images, uint8 or float.
"""

import numbers

import keras

from kx_vision.errors import ArgumentError
from kx_vision.models import presets


def check_positive(owner, **values):
    """Raise `ArgumentError` naming the first argument that is not an integer >= 1."""
    check_at_least(owner, 1, **values)


def check_at_least(owner, minimum, **values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ArgumentError(f"{owner}: {name}={value!r}; it must be an integer >= {minimum}", [name])


def check_image_batch(x, owner, channels=3, min_size=1):
    """Refuse what a model call cannot take (see the module docstring); symbolic and unknown sizes pass."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return
    dtype = keras.backend.standardize_dtype(dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ArgumentError(
            f"{owner} takes float images in [0, 1]; got {dtype} values. Divide uint8 pixels by 255 first "
            "(kx_vision.inference's functions accept uint8 images and do that for you)")
    shape = tuple(shape)
    if len(shape) != 4:
        hint = " (one image: add a batch axis, image[None])" if len(shape) == 3 else ""
        raise ArgumentError(f"{owner} takes a batch of images (N, H, W, {channels}); got shape {shape}{hint}")
    if isinstance(shape[-1], numbers.Integral) and shape[-1] != channels:
        raise ArgumentError(f"{owner} takes images of {channels} channels (N, H, W, {channels}); got shape {shape}")
    # Only known sizes are compared: None, or a symbolic dimension (JAX's shape-polymorphic export), passes.
    small = [s for s in shape[1:3] if isinstance(s, numbers.Integral) and s < min_size]
    if small:
        raise ArgumentError(f"{owner} takes images of at least {min_size}x{min_size} pixels; got shape {shape}")


class KxModel:
    """Mixin of kx_vision's functional models (before `keras.Model` in the bases)."""

    def input_requirements(self):
        """`(channels, min_size)` of the images the model takes."""
        return int(self.inputs[0].shape[-1]), 1

    def check_inputs(self, x):
        channels, min_size = self.input_requirements()
        check_image_batch(x, type(self).__name__, channels, min_size)

    def __call__(self, *args, **kwargs):
        if args:
            self.check_inputs(args[0])
        return super().__call__(*args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self.check_inputs(x)
        return super().predict(x, *args, **kwargs)

    # === Presets ===
    @classmethod
    def from_preset(cls, preset):
        """A model of this class with trained weights: a preset name shipped in the package (see
        `kx_vision.models.presets`) or a folder written by `save_to_preset`. Weights load as float32
        whatever dtype they were stored in.

        >>> model = EDSR.from_preset("runs/edsr_x2_preset")  # doctest: +SKIP
        """
        return presets.load(preset, cls)

    def save_to_preset(self, directory, dtype="float32", card=None, overwrite=False):
        """Write this model as a preset folder (`config.json`, `model.weights.h5`, `metadata.json`, and a
        `README.md` model card from `card`), atomically; `dtype="float16"` halves the weights file.
        Returns the folder's absolute path. See `kx_vision.models.presets.save`."""
        return presets.save(self, directory, dtype=dtype, card=card, overwrite=overwrite)
