"""Models: functional `keras.Model` subclasses, configured by their constructor arguments."""

from kx_vision.models.edsr import EDSR
from kx_vision.models.fpn import FPN
from kx_vision.models.style_net import StyleTransferNet
from kx_vision.models.unet import UNet
from kx_vision.models.upsample_head import UpsampleHeadNet

__all__ = ["EDSR", "FPN", "StyleTransferNet", "UNet", "UpsampleHeadNet"]
