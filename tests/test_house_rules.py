"""Rules that keep the library multi-backend (see ../shared/DESIGN.md)."""

import re
from pathlib import Path

import keras
import pytest

import kx_vision

PACKAGE = Path(kx_vision.__file__).parent
BACKEND_FREE = ["layers", "models", "losses.py", "metrics.py", "data/transforms.py", "backbones.py"]


@pytest.mark.parametrize("part", BACKEND_FREE)
def test_keras_ops_only(part):
    path = PACKAGE / part
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    pattern = re.compile(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", re.M)
    offenders = [str(f) for f in files if pattern.search(f.read_text())]
    assert not offenders, f"backend-specific imports in {offenders}"
    assert not any("layers.Lambda(" in f.read_text() for f in files)


def test_public_objects_are_registered():
    from kx_vision import layers, losses, metrics, models, optimizers

    for obj in [layers.PixelShuffle, layers.ResidualBlock, layers.ICNR, layers.PadToMultiple, layers.CropLike,
                layers.ImagePreprocessing, layers.ReflectionPadding2D, models.EDSR, models.UNet,
                models.UpsampleHeadNet, models.StyleTransferNet, losses.PerceptualLoss, losses.SegmentationLoss,
                losses.StyleTransferLoss, metrics.PSNR, metrics.SSIM, metrics.PixelAccuracy, metrics.Dice,
                metrics.StyleLossPart, optimizers.OneCycle, optimizers.Adam, optimizers.AdamW, optimizers.SGD]:
        name = keras.saving.get_registered_name(obj)
        assert name == f"kx_vision>{obj.__name__}"
        assert keras.saving.get_registered_object(name) is obj
