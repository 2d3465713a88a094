"""Models: functional `keras.Model` subclasses, configured by their constructor arguments."""

from kx_vision.models.edsr import EDSR

__all__ = ["EDSR"]
