"""tf.data pipelines for segmentation: the same geometric augmentation on image and mask.

Training: a random crop covering 60-100% of each side, a random left-right flip, resized to
`image_size` (bilinear with antialiasing for the image, nearest-neighbour for the mask, so class ids stay
ids), a random rotation within +-`rotate_degrees` (the same angle for both: bilinear for the image,
nearest for the mask, borders reflected, as fastai's `rotate`), then a random brightness/contrast change
of the image only. Validation: resized to `image_size` the same way, without randomness. Images are
float32 RGB in [0, 1]; masks `(H, W, 1)` int32 class ids.

Pairs come from a `kx_vision.data.masks.PairReader`: listed files, shuffled each epoch, decoded in worker
threads a little ahead of the graph (or read from its in-memory cache), so memory does not grow with the
number of images. `kx_vision.data.segmentation_arrays` is the same pipeline without TensorFlow;
`tests/test_segmentation_arrays.py` compares the two.
"""

import itertools
import math

import numpy as np
import tensorflow as tf

from kx_vision.data import tf_python
from kx_vision.data.masks import PairReader

MIN_CROP = 0.6  # smallest crop side, as a fraction of the image's
JITTER = 0.1  # brightness shift and contrast change, each uniform in [-JITTER, JITTER]


def _resize_pair(image, mask, size):
    image = tf.cast(image, tf.float32) / 255.0
    shape = tf.shape(image)
    # Antialiasing only changes a downscale: upscaling (e.g. training crops at full resolution) takes the
    # plain bilinear kernel, the same numbers (to 2e-7) at a third of the cost.
    upscale = tf.logical_and(shape[0] <= size[0], shape[1] <= size[1])
    image = tf.cond(upscale, lambda: tf.image.resize(image, size, method="bilinear"),
                    lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    mask = tf.image.resize(mask[..., None], size, method="nearest")
    return tf.clip_by_value(image, 0.0, 1.0), tf.cast(mask, tf.int32)


def rotation_transform(angle, height, width):
    """The inverse map of a rotation by `angle` degrees about the image centre, as the 8 numbers of
    `ImageProjectiveTransformV3` (output pixel `(x, y)` reads input `(a0 x + a1 y + a2, b0 x + b1 y + b2)`;
    `cv2.warpAffine(..., WARP_INVERSE_MAP)` takes the first six as its matrix)."""
    radians = angle * math.pi / 180.0
    cos, sin = tf.cos(radians), tf.sin(radians)
    cx, cy = (tf.cast(width, tf.float32) - 1.0) / 2.0, (tf.cast(height, tf.float32) - 1.0) / 2.0
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def rotate_pair(image, mask, angle):
    """Rotate `(H, W, 3)` float `image` (bilinear) and `(H, W, 1)` int32 `mask` (nearest) by `angle`
    degrees about their centre; what falls outside is filled by reflection (edge pixel repeated)."""
    shape = tf.shape(mask)[:2]
    transform = rotation_transform(tf.cast(angle, tf.float32), shape[0], shape[1])[None]

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=shape, fill_value=0.0,
            interpolation=interpolation, fill_mode="REFLECT")[0]

    return warp(image, "BILINEAR"), warp(mask, "NEAREST")


def sample_augmentation(seed, height, width, min_crop=MIN_CROP, rotate_degrees=0.0):
    """The random parameters of one augmentation, from a stateless `seed` pair: `(top, left, crop_height,
    crop_width, flip, angle, contrast, brightness)` (the same meaning as in `segmentation_arrays`)."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    fraction = tf.random.stateless_uniform([2], seeds[0], min_crop, 1.0)
    crop_h = tf.maximum(tf.cast(tf.cast(height, tf.float32) * fraction[0], tf.int32), 1)
    crop_w = tf.maximum(tf.cast(tf.cast(width, tf.float32) * fraction[1], tf.int32), 1)
    top = tf.random.stateless_uniform([], seeds[1], 0, height - crop_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, width - crop_w + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    angle = tf.random.stateless_uniform([], seeds[5], -1.0, 1.0) * float(rotate_degrees)
    jitter = tf.random.stateless_uniform([2], seeds[4], -JITTER, JITTER)
    return top, left, crop_h, crop_w, flip, angle, jitter[0], jitter[1]


def apply_augmentation(image, mask, params, size, rotate=True):
    """Crop, flip, resize and rotate `image` (H, W, 3) uint8 and `mask` (H, W) uint8 together, then
    change the image's contrast and brightness: `params` as `sample_augmentation` returns them."""
    top, left, crop_h, crop_w, flip, angle, contrast, brightness = params
    image = image[top : top + crop_h, left : left + crop_w]
    mask = mask[top : top + crop_h, left : left + crop_w]
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    image, mask = _resize_pair(image, mask, size)
    if rotate:
        image, mask = rotate_pair(image, mask, angle)
    mean = tf.reduce_mean(image)
    image = tf.clip_by_value((image - mean) * (1.0 + contrast) + mean + brightness, 0.0, 1.0)
    return image, mask


def augment_pair(image, mask, seed, size, min_crop=MIN_CROP, rotate_degrees=0.0):
    """Random crop + flip applied identically to `image` (H, W, 3) uint8 and `mask` (H, W) uint8, then
    resize (bilinear / nearest), rotation within +-`rotate_degrees` (bilinear / nearest) and a photometric
    jitter of the image alone."""
    shape = tf.shape(mask)
    params = sample_augmentation(seed, shape[0], shape[1], min_crop, rotate_degrees)
    return apply_augmentation(image, mask, params, size, rotate=rotate_degrees > 0)


def _as_reader(source):
    if isinstance(source, PairReader):
        return source
    images, masks = source
    return PairReader.from_arrays(images, masks)


_SIGNATURE = (tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((None, None), tf.uint8))


def train_dataset(reader, image_size, batch_size, seed=0, augment=True, rotate_degrees=0.0, workers=None):
    """Shuffled, augmented, batched `(image, mask)` pairs; one pass over the pairs per epoch.

    Args:
        reader: a `PairReader` (or `(images, masks)` lists of decoded uint8 arrays).
        image_size: `(height, width)` of the batches.
        seed: epoch `e` is shuffled by `numpy.random.default_rng((seed, e))`, which also draws each
            element's stateless augmentation seed.
        rotate_degrees: largest rotation (0: none).
        workers: decoding threads (default: `kx_vision.data.default_workers()`).
    A pair that cannot be used is replaced by another drawn at random, so an epoch keeps its length, and
    the pairs skipped are reported at the end of the epoch (`PairReader.end_pass`).
    """
    reader = _as_reader(reader)
    size = tf.constant(image_size, tf.int32)
    count = len(reader)
    epochs = itertools.count()

    def generate():
        rng = np.random.default_rng((seed, next(epochs)))
        order = rng.permutation(count)
        seeds = rng.integers(0, 2**62, (count, 2), dtype=np.int64)
        for position, image, mask in reader.stream(order, workers, rng=rng):
            yield image, mask, seeds[position]
        reader.end_pass("this epoch")

    signature = _SIGNATURE + (tf.TensorSpec((2,), tf.int64),)
    pairs = tf_python.from_generator(generate, output_signature=signature)
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(count))
    if augment:
        pairs = pairs.map(lambda i, m, s: augment_pair(i, m, s, size, rotate_degrees=rotate_degrees),
                          num_parallel_calls=tf.data.AUTOTUNE)
    else:
        pairs = pairs.map(lambda i, m, s: _resize_pair(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    return pairs.batch(batch_size, drop_remainder=count >= batch_size).prefetch(tf.data.AUTOTUNE)


def validation_dataset(reader, image_size, batch_size, workers=None):
    """Every pair once, in order, resized to `image_size`. A pair that cannot be used is replaced by another
    (the same one each pass) and reported, so the set keeps its length (Keras knows where it ends)."""
    reader = _as_reader(reader)
    size = tf.constant(image_size, tf.int32)

    def generate():
        rng = np.random.default_rng(0)
        for _, image, mask in reader.stream(range(len(reader)), workers, rng=rng):
            yield image, mask
        reader.end_pass("validation")

    pairs = tf_python.from_generator(generate, output_signature=_SIGNATURE)
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(len(reader)))
    pairs = pairs.map(lambda i, m: _resize_pair(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)
