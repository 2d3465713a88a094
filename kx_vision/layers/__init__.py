"""Registered, serializable layers built from `keras.ops` only."""

from kx_vision.layers.pixel_shuffle import ICNR, PixelShuffle, apply_pixel_shuffle_upsample
from kx_vision.layers.residual import ResidualBlock

__all__ = ["ICNR", "PixelShuffle", "ResidualBlock", "apply_pixel_shuffle_upsample"]
