"""The shipped configs' data loads and validates on the real sets in ../shared/data."""

from pathlib import Path

import pytest
from conftest import REPO, shared_dir

from kx_vision import config as config_lib
from kx_vision.data.masks import load_pairs
from kx_vision.tasks import segmentation


def _config(name):
    return config_lib.load(segmentation.SegmentationConfig, str(REPO / "configs" / name))


@pytest.mark.shared_data
def test_camvid_split_and_masks(monkeypatch):
    shared_dir("seg", "camvid")
    monkeypatch.chdir(REPO)
    train, val = segmentation.SegmentationTask(_config("camvid_unet_resnet50.yaml")).load_split()
    assert (len(train), len(val)) == (367, 101)
    images, masks = load_pairs(val[:10], 11, 11)
    assert images[0].shape == (360, 480, 3) and max(int(m.max()) for m in masks) <= 11


@pytest.mark.shared_data
def test_membrane_binary_masks_and_group_split(monkeypatch):
    shared_dir("seg", "membrane")
    monkeypatch.chdir(REPO)
    config = _config("membrane_unet.yaml")
    train, val = segmentation.SegmentationTask(config).load_split()
    assert len(train) + len(val) == 30 and 5 <= len(val) <= 8
    assert not {Path(a).name for a, _ in train} & {Path(a).name for a, _ in val}
    _, masks = load_pairs(val, config.num_classes, config.ignore_class, config.data.mask_divisor)
    assert {int(v) for m in masks for v in set(m.ravel().tolist())} == {0, 1}
