"""Layers that pad inputs to a multiple of a stride and crop outputs back, with `keras.ops` only."""

import keras
from keras import ops

from kx_vision.errors import ArgumentError
from kx_vision.layers.reflection import reflect_pad


@keras.saving.register_keras_serializable(package="kx_vision")
class PadToMultiple(keras.layers.Layer):
    """Pads `(N, H, W, C)` at the bottom and right so H and W become multiples of `multiple`.

    Lets a network that downsamples by 32 take any input size; `CropLike` removes the padding
    from its output. `mode` is "reflect" (default: no artificial edges) or "constant" (zeros).
    """

    def __init__(self, multiple=32, mode="reflect", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("reflect", "constant"):
            raise ArgumentError(f"PadToMultiple: unknown mode {mode!r}")
        self.multiple = int(multiple)
        self.mode = mode

    def call(self, inputs):
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        # Written as "round up, then subtract" so JAX's symbolic shapes (jax2tf export) see the padded size
        # as `multiple * k` and can match it against the decoder's upsampled sizes.
        pad_h = self.multiple * ((height + self.multiple - 1) // self.multiple) - height
        pad_w = self.multiple * ((width + self.multiple - 1) // self.multiple) - width
        if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0:
            return inputs
        if self.mode == "reflect":
            return reflect_pad(inputs, ((0, pad_h), (0, pad_w)))
        return ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode=self.mode)

    def compute_output_shape(self, input_shape):
        def padded(size):
            return None if size is None else -(-size // self.multiple) * self.multiple

        return (input_shape[0], padded(input_shape[1]), padded(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "mode": self.mode}


@keras.saving.register_keras_serializable(package="kx_vision")
class CropLike(keras.layers.Layer):
    """Crops `inputs[0]` at the bottom and right to the height and width of `inputs[1]`."""

    def call(self, inputs):
        x, reference = inputs
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        return x[:, :height, :width, :]

    def compute_output_shape(self, input_shape):
        x, reference = input_shape
        return (x[0], reference[1], reference[2], x[3])
