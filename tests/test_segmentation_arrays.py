"""The TensorFlow-free segmentation pipeline (`kx_vision.data.segmentation_arrays`) against the tf.data one."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kx_vision.data import segmentation_arrays as arrays
from kx_vision.data.definitions import draw_augmentation
from kx_vision.data.masks import PairReader

REPO = Path(__file__).resolve().parents[1]


def _pair(rng, height=60, width=80):
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 20, (height, width, 3))
    mask = rng.integers(0, 4, (6, 8))[yy * 6 // height, xx * 8 // width]  # 6 x 8 blocks of classes
    return image.clip(0, 255).astype(np.uint8), mask.astype(np.uint8)


@pytest.mark.parametrize("params", [(5, 7, 40, 50, False, 0.0, 0.05, -0.03), (0, 0, 60, 80, True, 8.0, 0.0, 0.0),
                                    (3, 2, 50, 70, True, -9.5, 0.1, 0.1)])
@pytest.mark.parametrize("size", [(32, 48), (72, 96)])
def test_same_parameters_give_the_same_pair_as_tf_data(params, size, rng):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data import segmentation

    image, mask = _pair(rng)
    want_image, want_mask = segmentation.apply_augmentation(
        tf.constant(image), tf.constant(mask), tuple(tf.constant(p) for p in params), tf.constant(size))
    got_image, got_mask = arrays.apply_augmentation(image, mask, params, size)
    assert got_image.shape == (*size, 3) and got_mask.shape == (*size, 1)
    assert got_image.dtype == np.float32 and got_mask.dtype == np.int32
    # Pillow's BILINEAR is TensorFlow's antialiased bilinear (rounded to 8 bits); cv2's bilinear rotation
    # weights are quantised to 1/32 pixel.
    assert np.abs(got_image - want_image.numpy()).max() < 2.5 / 255
    assert np.mean(got_mask == want_mask.numpy()) > 0.995  # nearest on pixel centres, the same angle


def _statistics(images, masks):
    """Per sample: the rotation angle (degrees) of the horizontal class border, whether the image is flipped
    (its green channel falls left to right), the share of class 1, the mean brightness."""
    angles, flips, shares, brightness = [], [], [], []
    for image, mask in zip(images, masks):
        mask = mask[..., 0]
        rows = np.argmax(mask == 1, axis=0).astype(np.float64)  # first class-1 row of each column
        columns = np.arange(mask.shape[1])
        inner = slice(mask.shape[1] // 6, -mask.shape[1] // 6)  # away from reflected corners
        angles.append(np.degrees(np.arctan(np.polyfit(columns[inner], rows[inner], 1)[0])))
        green = image[..., 1]
        flips.append(green[:, -8:].mean() < green[:, :8].mean())
        shares.append(mask.mean())
        brightness.append(image.mean())
    return {name: np.asarray(v, np.float64) for name, v in
            (("angle", angles), ("flip", flips), ("share", shares), ("brightness", brightness))}


def _border_pair(height=48, width=64):
    """Class 0 above the middle row, 1 below; the image shows the class in red and a left-to-right ramp in green."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 2 :] = 1
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 60 + 120 * mask
    image[..., 1] = np.linspace(20, 230, width).astype(np.uint8)[None]
    image[..., 2] = 128
    return image, mask


def test_both_pipelines_draw_the_same_augmentations():
    pytest.importorskip("tensorflow")
    from kx_vision.data import segmentation

    image, mask = _border_pair()
    count, size = 400, (48, 64)
    reader = PairReader.from_arrays([image] * count, [mask] * count)
    tf_images, tf_masks = [], []
    for x, y in segmentation.train_dataset(reader, size, 100, seed=1, rotate_degrees=10):
        tf_images.append(x.numpy())
        tf_masks.append(y.numpy())
    batches = arrays.SegmentationBatches(reader, size, 100, seed=1, rotate_degrees=10)
    np_images, np_masks = zip(*(batches[i] for i in range(len(batches))))
    want = _statistics(np.concatenate(tf_images), np.concatenate(tf_masks))
    got = _statistics(np.concatenate(np_images), np.concatenate(np_masks))
    for stats in (want, got):
        # Rotations uniform in +-10 degrees (std 5.8), half flipped, crops of 60-100% (the border stays in view).
        assert abs(stats["angle"].mean()) < 1.0 and 5.0 < stats["angle"].std() < 6.6
        assert np.abs(stats["angle"]).max() < 11
        assert 0.4 < stats["flip"].mean() < 0.6
        assert 0.1 < stats["share"].min() and stats["share"].max() < 0.9
    assert abs(want["angle"].std() - got["angle"].std()) < 0.8
    assert abs(want["flip"].mean() - got["flip"].mean()) < 0.12
    assert abs(want["share"].mean() - got["share"].mean()) < 0.03
    assert abs(want["share"].std() - got["share"].std()) < 0.03
    assert abs(want["brightness"].mean() - got["brightness"].mean()) < 0.01
    assert abs(want["brightness"].std() - got["brightness"].std()) < 0.01


def test_image_follows_its_mask_through_every_augmentation(rng):
    from test_segmentation_data import _check_image_follows_mask

    mask = np.kron(rng.integers(0, 4, (6, 8)), np.ones((10, 10), np.int64)).astype(np.uint8)
    image = np.repeat((mask * 60 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    for seed in range(8):
        img, msk = arrays.augment_pair(image, mask, draw_augmentation(np.random.default_rng(seed)), (48, 64),
                                       rotate_degrees=10)
        _check_image_follows_mask(img, msk[..., 0], mask)


def test_batches_epochs_and_validation(rng):
    pairs = [_pair(rng, 30, 40) for _ in range(5)]
    reader = PairReader.from_arrays(*zip(*pairs))
    train = arrays.SegmentationBatches(reader, (32, 48), 2, seed=3, rotate_degrees=10)
    assert len(train) == 2  # the incomplete last batch is dropped, as tf.data's drop_remainder
    x, y = train[1]
    assert x.shape == (2, 32, 48, 3) and y.shape == (2, 32, 48, 1) and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(train[1][0], x)  # a batch is fixed within an epoch, whatever the worker order
    train.on_epoch_end()
    assert not np.array_equal(train[1][0], x)  # a new epoch: a new order and new augmentations
    with pytest.raises(IndexError):
        train[2]
    val = arrays.SegmentationBatches(reader, (32, 48), 2, training=False)
    assert len(val) == 3 and [len(val[i][0]) for i in range(3)] == [2, 2, 1]
    image, mask = arrays.resize_pair(*pairs[4], (32, 48))
    np.testing.assert_array_equal(val[2][0][0], image)
    np.testing.assert_array_equal(val[2][1][0], mask)
    assert len(arrays.SegmentationBatches(reader, (32, 48), 8)) == 1  # fewer pairs than a batch: one batch of all
    assert len(arrays.SegmentationBatches(reader, (32, 48), 8)[0][0]) == 5


def test_resize_is_tensorflows(rng):
    tf = pytest.importorskip("tensorflow")
    image, mask = _pair(rng, 37, 53)
    for size in ((16, 24), (37, 53), (90, 70)):
        got_image, got_mask = arrays.resize_pair(image, mask, size)
        want = tf.image.resize(tf.constant(image, tf.float32) / 255, size, "bilinear", antialias=True).numpy()
        # The same filter; Pillow works in 8 bits with fixed-point weights: within one grey level.
        assert np.abs(got_image - want).max() <= 1 / 255 and np.abs(got_image - want).mean() < 0.3 / 255
        np.testing.assert_array_equal(got_mask[..., 0], tf.image.resize(mask[..., None], size, "nearest").numpy()[..., 0])


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the TensorFlow-free path is for JAX machines")
def test_segmentation_trains_without_tensorflow(tmp_path):
    args = ["segmentation", "--output", str(tmp_path / "run")]
    for assignment in ("model.backbone=simple", "model.max_filters=8", "data.image_size=32,32", "data.batch_size=4",
                       "epochs=1", "optimizer.warmup_steps=0", "data.cache=never"):
        args += ["--set", assignment]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "no_tensorflow"), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "kx_vision.train", *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mIoU" in done.stdout and (tmp_path / "run" / "model.keras").exists()
