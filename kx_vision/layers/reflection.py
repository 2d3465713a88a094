"""Reflection padding, as a registered layer (Keras has only zero padding)."""

import keras
from keras import ops


def _reflected_indices(size, before, total):
    """Indices into an axis of length `size` that read it mirrored (NumPy's "reflect"), starting
    `before` positions before index 0 and running for `total` positions."""
    index = ops.abs(ops.arange(total) - before)
    last = size - 1
    return ops.where(index > last, 2 * last - index, index)


def reflect_pad(inputs, padding):
    """Reflect-pads `(N, H, W, C)` by `((top, bottom), (left, right))`, where sizes and amounts may be
    symbolic.

    With concrete sizes this is `ops.pad(mode="reflect")`. With symbolic ones (jax2tf exports for any
    image size, TensorFlow graphs with unknown sizes) it gathers mirrored indices instead, because
    `jnp.pad(mode="reflect")` cannot be lowered for shape-polymorphic inputs.
    """
    (top, bottom), (left, right) = padding
    height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
    if all(isinstance(v, int) for v in (height, width, top, bottom, left, right)):
        if top == bottom == left == right == 0:
            return inputs
        return ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="reflect")
    rows = _reflected_indices(height, top, height + top + bottom)
    columns = _reflected_indices(width, left, width + left + right)
    return ops.take(ops.take(inputs, rows, axis=1), columns, axis=2)


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
        return reflect_pad(inputs, self.padding)

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        n, h, w, c = input_shape
        return (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}
