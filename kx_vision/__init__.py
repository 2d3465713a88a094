"""kx_vision: the image-to-image models of fast.ai's 2018 lesson 14, in Keras 3 (TensorFlow and JAX)."""

__version__ = "0.1.0"

from kx_vision import layers, losses, metrics, models  # noqa: E402,F401
