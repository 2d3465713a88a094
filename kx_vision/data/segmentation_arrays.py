"""The segmentation input pipeline without TensorFlow: `keras.utils.PyDataset`s of `(image, mask)` batches.

For machines where TensorFlow is not installed (JAX on a GPU box). The semantics are those of the
tf.data pipeline (`kx_vision.data.segmentation`): each epoch the pairs are shuffled, decoded by worker
threads (Keras runs `__getitem__` in `workers` threads) or read from the reader's cache, then cropped
(60-100% of each side), flipped left-right at random, resized to `image_size` (the image bilinear with
antialiasing, Pillow's `BILINEAR`, the same filter as `tf.image.resize(..., antialias=True)`; the mask
nearest-neighbour on pixel centres, as TensorFlow's), rotated within +-`rotate_degrees` (the same angle:
`cv2.warpAffine`, bilinear / nearest, borders reflected as TensorFlow's `REFLECT`), and the image alone
gets a random brightness/contrast change: the one augmentation of `kx_vision.data.definitions`, its parameters
drawn as the tf.data pipeline draws them (the same pairs in the same order, the same draws for each), applied
with NumPy, OpenCV and Pillow. `tests/test_segmentation_arrays.py` checks that both pipelines give the same
result for the same parameters, and the same statistics.
"""

import math
import threading

import cv2
import keras
import numpy as np
from PIL import Image

from kx_vision.data import definitions
from kx_vision.data.masks import PairReader
from kx_vision.data.streaming import Items


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


def rotate_pair(image, mask, angle):
    """Rotate an `(H, W, 3)` image (bilinear; uint8 results are rounded) and an `(H, W)` uint8 mask (nearest)
    by `angle` degrees about their centre, borders reflected (edge pixel repeated)."""
    height, width = mask.shape[:2]
    matrix = np.array(definitions.rotation_map(float(angle), float(height), float(width), math.cos, math.sin),
                      np.float64).reshape(2, 3)
    flags = cv2.WARP_INVERSE_MAP
    image = cv2.warpAffine(image, matrix, (width, height), flags=flags | cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(mask, matrix, (width, height), flags=flags | cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT)
    return image, mask


def _flip_if(x, flip):
    return x[:, ::-1] if flip else x


def _jitter(image, contrast, brightness):
    """The photometric change of a uint8 image, in one pass over float32 pixels (x / 255 scaled and offset)."""
    scale, offset = definitions.jitter_map(float(image.mean()) / 255.0, contrast, brightness)
    out = image.astype(np.float32)
    out *= np.float32(scale / 255.0)
    out += np.float32(offset)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def apply_augmentation(image, mask, params, size, rotate=True):
    """`kx_vision.data.segmentation.apply_augmentation` in NumPy: crop, flip, resize and rotate `image`
    (H, W, 3) uint8 and `mask` (H, W) uint8 together, then jitter the image's contrast and brightness.
    Returns float32 `(h, w, 3)` in [0, 1] and int32 `(h, w, 1)`. Resizing and rotating work in 8 bits
    (TensorFlow's in float32: results differ by about one grey level, at a third of the cost)."""
    image, mask = definitions.augment_pair(image, mask, params, size, _flip_if, _resize, rotate_pair, _jitter,
                                           rotates=rotate)
    return image, mask.astype(np.int32)[..., None]


def augment_pair(image, mask, draws, size, min_crop=definitions.MIN_CROP, rotate_degrees=0.0):
    """One augmentation of a pair (see the module docstring) from its random numbers `draws`
    (`definitions.draw_augmentation`)."""
    params = definitions.augmentation_params(draws, mask.shape[0], mask.shape[1], min_crop, rotate_degrees)
    return apply_augmentation(image, mask, params, size, rotate=rotate_degrees > 0)


class SegmentationBatches(keras.utils.PyDataset):
    """Batches of `(images, masks)`: float32 `(N, h, w, 3)` in [0, 1], int32 `(N, h, w, 1)` class ids.

    Args:
        reader: the streaming core over the pairs (`kx_vision.data.masks.PairReader`, read by index; or
            `(images, masks)` lists of decoded uint8 arrays).
        image_size: `(h, w)` of the batches.
        batch_size: pairs per batch.
        seed: epoch `e` is shuffled by `rng = numpy.random.default_rng((seed, e))`, which then draws the
            augmentations of the epoch's positions (as in the tf.data pipeline); an unusable pair `n` of batch
            `i` is replaced with `default_rng((seed, e, i, n))`, so any worker order gives the same batches.
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
        self.reader = reader if isinstance(reader, Items) else PairReader.from_arrays(*reader)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.training, self.augment = bool(training), bool(augment) and bool(training)
        self.rotate_degrees = float(rotate_degrees)
        self.epoch = 0
        self._lock = threading.Lock()
        self._order, self._draws = self._shuffled()

    def _shuffled(self):
        """The order of the epoch's pairs and the random numbers of their augmentations."""
        count = len(self.reader)
        if not self.training:
            return np.arange(count), None
        rng = np.random.default_rng((self.seed, self.epoch))
        return rng.permutation(count), definitions.draw_augmentation(rng, count)

    def __len__(self):
        count = len(self.reader)
        if self.training:
            return max(count // self.batch_size, 1)
        return math.ceil(count / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        with self._lock:
            order, draws, epoch = self._order, self._draws, self.epoch
        ids = order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.empty((len(ids), *self.image_size, 3), np.float32)
        masks = np.empty((len(ids), *self.image_size, 1), np.int32)
        for n, i in enumerate(ids):
            rng = np.random.default_rng((self.seed, epoch if self.training else 0, index, n))
            image, mask = self.reader.read_or_replace(int(i), rng)
            if self.augment:
                images[n], masks[n] = augment_pair(image, mask, draws[index * self.batch_size + n], self.image_size,
                                                   rotate_degrees=self.rotate_degrees)
            else:
                images[n], masks[n] = resize_pair(image, mask, self.image_size)
        return images, masks

    def on_epoch_end(self):
        with self._lock:
            self.epoch += 1
            self._order, self._draws = self._shuffled()
        self.reader.end_pass("this epoch" if self.training else "validation")
