"""Bicubic baseline against the EDSR paper's Table 3 (Set5: 33.66 / 30.39 / 28.42 dB)."""

import numpy as np
import pytest
from conftest import shared_dir

from kx_vision.data import transforms
from kx_vision.data.images import list_images, load_images
from kx_vision.metrics import psnr

PAPER_SET5_BICUBIC = {2: 33.66, 3: 30.39, 4: 28.42}


@pytest.mark.shared_data
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_set5_matches_paper(scale):
    images, _ = load_images(list_images(shared_dir("sr", "Set5")))
    scores = []
    for image in images:
        hr = transforms.crop_to_multiple(image, scale)[None].astype("float32") / 255.0
        lr = transforms.bicubic_downscale(hr, scale)
        sr = transforms.bicubic_upscale(lr, scale)
        scores.append(float(np.asarray(psnr(hr, sr, shave=scale, quantize=True))[0]))
    assert np.mean(scores) == pytest.approx(PAPER_SET5_BICUBIC[scale], abs=0.05)
