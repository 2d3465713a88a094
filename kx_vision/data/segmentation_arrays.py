"""The segmentation input pipeline without TensorFlow: `keras.utils.PyDataset`s of `(image, mask)` batches.

For machines where TensorFlow is not installed (JAX on a GPU box). The semantics are those of the
tf.data pipeline (`kx_vision.data.segmentation`): each epoch the pairs are shuffled, decoded by worker
threads (Keras runs `__getitem__` in `workers` threads) or read from the reader's cache, then cropped
(60-100% of each side), flipped left-right at random, resized to `image_size` (the image bilinear with
antialiasing, Pillow's `BILINEAR`, the same filter as `tf.image.resize(..., antialias=True)`; the mask
nearest-neighbour on pixel centres, as TensorFlow's), rotated within +-`rotate_degrees` (the same angle:
`cv2.warpAffine`, bilinear / nearest, borders reflected as TensorFlow's `REFLECT`), and the image alone
gets a random brightness/contrast change. `tests/test_segmentation_arrays.py` checks that both pipelines
give the same result for the same parameters, and the same statistics from their own random streams
(NumPy here, TensorFlow's stateless RNG there), so batches do not match one for one.
"""

import math
import threading

import cv2
import keras
import numpy as np
from PIL import Image

from kx_vision.data.masks import PairReader

MIN_CROP = 0.6  # as kx_vision.data.segmentation
JITTER = 0.1


def sample_augmentation(rng, height, width, min_crop=MIN_CROP, rotate_degrees=0.0):
    """`(top, left, crop_height, crop_width, flip, angle, contrast, brightness)` drawn with `rng`, a NumPy
    `Generator` (the distributions of `kx_vision.data.segmentation.sample_augmentation`)."""
    fraction = rng.uniform(min_crop, 1.0, 2)
    crop_h = max(int(height * fraction[0]), 1)
    crop_w = max(int(width * fraction[1]), 1)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    flip = bool(rng.random() < 0.5)
    angle = float(rng.uniform(-1.0, 1.0) * rotate_degrees)
    contrast, brightness = rng.uniform(-JITTER, JITTER, 2)
    return top, left, crop_h, crop_w, flip, angle, float(contrast), float(brightness)


def _resize(image, mask, size):
    """uint8 `(H, W, 3)` image (bilinear, antialiased) and `(H, W)` mask (nearest) at `size = (h, w)`, uint8."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))
    if mask.shape[:2] != (height, width):
        mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize((width, height), Image.NEAREST))
    return image, mask


def resize_pair(image, mask, size):
    """`(H, W, 3)` uint8 image and `(H, W)` uint8 mask -> float32 `(h, w, 3)` in [0, 1] (bilinear,
    antialiased) and int32 `(h, w, 1)` (nearest) at `size = (h, w)`."""
    image, mask = _resize(image, mask, size)
    return image.astype(np.float32) / np.float32(255.0), mask.astype(np.int32)[..., None]


def rotation_matrix(angle, height, width):
    """The 2x3 inverse map of a rotation by `angle` degrees about the image centre (the first six numbers
    of `kx_vision.data.segmentation.rotation_transform`)."""
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]], np.float64)


def rotate_pair(image, mask, angle):
    """Rotate an `(H, W, 3)` image (bilinear; uint8 results are rounded) and an `(H, W)` uint8 mask (nearest)
    by `angle` degrees about their centre, borders reflected (edge pixel repeated)."""
    height, width = mask.shape[:2]
    matrix = rotation_matrix(angle, height, width)
    flags = cv2.WARP_INVERSE_MAP
    image = cv2.warpAffine(image, matrix, (width, height), flags=flags | cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(mask, matrix, (width, height), flags=flags | cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT)
    return image, mask


def apply_augmentation(image, mask, params, size, rotate=True):
    """`kx_vision.data.segmentation.apply_augmentation` in NumPy: crop, flip, resize and rotate `image`
    (H, W, 3) uint8 and `mask` (H, W) uint8 together, then jitter the image's contrast and brightness.
    Returns float32 `(h, w, 3)` in [0, 1] and int32 `(h, w, 1)`. Resizing and rotating work in 8 bits
    (TensorFlow's in float32: results differ by about one grey level, at a third of the cost)."""
    top, left, crop_h, crop_w, flip, angle, contrast, brightness = params
    image = image[top : top + crop_h, left : left + crop_w]
    mask = mask[top : top + crop_h, left : left + crop_w]
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = _resize(image, mask, size)
    if rotate:
        image, mask = rotate_pair(image, mask, angle)
    # (x / 255 - mean) * (1 + contrast) + mean + brightness, clipped, in one pass over float32 pixels.
    mean = float(image.mean()) / 255.0
    out = image.astype(np.float32)
    out *= np.float32((1.0 + contrast) / 255.0)
    out += np.float32(mean + brightness - mean * (1.0 + contrast))
    np.clip(out, 0.0, 1.0, out=out)
    return out, mask.astype(np.int32)[..., None]


def augment_pair(image, mask, rng, size, min_crop=MIN_CROP, rotate_degrees=0.0):
    """One random augmentation of a pair (see the module docstring)."""
    params = sample_augmentation(rng, mask.shape[0], mask.shape[1], min_crop, rotate_degrees)
    return apply_augmentation(image, mask, params, size, rotate=rotate_degrees > 0)


class SegmentationBatches(keras.utils.PyDataset):
    """Batches of `(images, masks)`: float32 `(N, h, w, 3)` in [0, 1], int32 `(N, h, w, 1)` class ids.

    Args:
        reader: a `kx_vision.data.masks.PairReader` (or `(images, masks)` lists of decoded uint8 arrays).
        image_size: `(h, w)` of the batches.
        batch_size: pairs per batch.
        seed: epoch `e` is shuffled by `numpy.random.default_rng((seed, e))`; item `n` of batch `i` is
            augmented with `default_rng((seed, e, i, n))`, so any worker order gives the same batches.
        training: shuffle, augment (if `augment`) and drop the last incomplete batch (as tf.data's
            `drop_remainder`; all pairs in one batch when there are fewer than `batch_size`); a pair that
            cannot be used is replaced by another drawn at random, and those skipped are reported at the
            end of the epoch. Otherwise (validation): every pair once, in order, resized (an unusable pair
            replaced by another, the same each pass).
        rotate_degrees: largest random rotation (0: none).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.
    """

    def __init__(self, reader, image_size, batch_size, seed=0, training=True, augment=True, rotate_degrees=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.reader = reader if isinstance(reader, PairReader) else PairReader.from_arrays(*reader)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.training, self.augment = bool(training), bool(augment) and bool(training)
        self.rotate_degrees = float(rotate_degrees)
        self.epoch = 0
        self._lock = threading.Lock()
        self._order = self._shuffled()

    def _shuffled(self):
        count = len(self.reader)
        if not self.training:
            return np.arange(count)
        return np.random.default_rng((self.seed, self.epoch)).permutation(count)

    def __len__(self):
        count = len(self.reader)
        if self.training:
            return max(count // self.batch_size, 1)
        return math.ceil(count / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        with self._lock:
            order, epoch = self._order, self.epoch
        ids = order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.empty((len(ids), *self.image_size, 3), np.float32)
        masks = np.empty((len(ids), *self.image_size, 1), np.int32)
        for n, i in enumerate(ids):
            rng = np.random.default_rng((self.seed, epoch if self.training else 0, index, n))
            image, mask = self.reader.read_or_replace(int(i), rng)
            if self.augment:
                images[n], masks[n] = augment_pair(image, mask, rng, self.image_size, rotate_degrees=self.rotate_degrees)
            else:
                images[n], masks[n] = resize_pair(image, mask, self.image_size)
        return images, masks

    def on_epoch_end(self):
        with self._lock:
            self.epoch += 1
            self._order = self._shuffled()
        self.reader.end_pass("this epoch" if self.training else "validation")
