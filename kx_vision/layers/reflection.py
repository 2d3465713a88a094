"""Reflection padding, as a registered layer (Keras has only zero padding)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kx_vision")
class ReflectionPadding2D(keras.layers.Layer):
    """Pads height and width by mirroring the image without repeating the edge (NumPy's
    `mode="reflect"`), so a network sees no artificial borders. `padding` is an int or
    `((top, bottom), (left, right))`."""

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        self.padding = tuple(tuple(int(p) for p in pair) for pair in padding)

    def call(self, inputs):
        (top, bottom), (left, right) = self.padding
        return ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        n, h, w, c = input_shape
        return (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}
