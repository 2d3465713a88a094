"""Registered, serializable layers built from `keras.ops` only."""

from kx_vision.layers.bilinear_upsampling import BilinearUpSampling2D
from kx_vision.layers.blur import Blur2D
from kx_vision.layers.pixel_shuffle import ICNR, PixelShuffle, apply_pixel_shuffle_upsample
from kx_vision.layers.preprocessing import ImagePreprocessing
from kx_vision.layers.reflection import ReflectionPadding2D
from kx_vision.layers.residual import ResidualBlock
from kx_vision.layers.spatial import CropLike, PadToMultiple

__all__ = [
    "BilinearUpSampling2D",
    "Blur2D",
    "CropLike",
    "ICNR",
    "ImagePreprocessing",
    "PadToMultiple",
    "PixelShuffle",
    "ReflectionPadding2D",
    "ResidualBlock",
    "apply_pixel_shuffle_upsample",
]
