"""The scaled residual block of EDSR (Lim et al. 2017) and the lesson."""

import keras

from kx_vision.errors import ArgumentError


@keras.saving.register_keras_serializable(package="kx_vision")
class ResidualBlock(keras.layers.Layer):
    """`x + residual_scale * conv(relu(conv(x)))`, with no batch norm.

    EDSR removes batch norm from the residual block (it normalises away the range flexibility
    super-resolution needs) and scales the branch by a small constant (0.1 in EDSR) so deep, wide
    networks train stably.

    Args:
        num_filters: channels of both convolutions; the input must have as many.
        kernel_size: size of both convolutions.
        residual_scale: multiplier of the residual branch.
    """

    def __init__(self, num_filters, kernel_size=3, residual_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_filters = int(num_filters)
        self.kernel_size = int(kernel_size)
        self.residual_scale = float(residual_scale)
        conv = dict(padding="same", dtype=self.dtype_policy)
        self.conv1 = keras.layers.Conv2D(
            self.num_filters, self.kernel_size, activation="relu", name="conv1", **conv
        )
        self.conv2 = keras.layers.Conv2D(self.num_filters, self.kernel_size, name="conv2", **conv)

    def build(self, input_shape):
        if input_shape[-1] != self.num_filters:
            raise ArgumentError(
                f"{self.name}: input has {input_shape[-1]} channels but num_filters is "
                f"{self.num_filters}; the identity path needs them equal (input shape {input_shape})"
            )
        self.conv1.build(input_shape)
        self.conv2.build(tuple(input_shape)[:-1] + (self.num_filters,))

    def call(self, inputs):
        return inputs + self.conv2(self.conv1(inputs)) * self.residual_scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_filters": self.num_filters,
            "kernel_size": self.kernel_size,
            "residual_scale": self.residual_scale,
        }
