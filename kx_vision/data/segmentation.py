"""tf.data pipelines for segmentation: the same geometric augmentation on image and mask.

Training: the augmentation of `kx_vision.data.definitions` (a random crop of 60-100% of each side, a flip,
resized to `image_size`, a rotation within +-`rotate_degrees`, a brightness/contrast change of the image), its
parameters drawn in NumPy for each pair and applied here in TensorFlow ops inside the input graph. Validation:
resized to `image_size` the same way, without randomness. Images are float32 RGB in [0, 1]; masks `(H, W, 1)`
int32 class ids.

Pairs come from the streaming core (`kx_vision.data.streaming.Items`: a `masks.PairReader` over file pairs, or
over a tensorflow-datasets set's images and masks): shuffled each epoch (a tfds set: in its own shuffled order),
decoded in worker threads a little ahead of the graph (or read from memory), so memory does not grow with the
number of images. `kx_vision.data.segmentation_arrays` is the same pipeline without TensorFlow;
`tests/test_segmentation_arrays.py` compares the two.
"""

import itertools

import numpy as np
import tensorflow as tf

from kx_vision.data import definitions, tf_python
from kx_vision.data.masks import PairReader
from kx_vision.data.streaming import Items


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


def rotate_pair(image, mask, angle):
    """Rotate `(H, W, 3)` float `image` (bilinear) and `(H, W, 1)` int32 `mask` (nearest) by `angle`
    degrees about their centre; what falls outside is filled by reflection (edge pixel repeated)."""
    shape = tf.shape(mask)[:2]
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    transform = definitions.rotation_map(tf.cast(angle, tf.float32), height, width, tf.cos, tf.sin)
    transform = tf.stack([*transform, 0.0, 0.0])[None]

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=shape, fill_value=0.0,
            interpolation=interpolation, fill_mode="REFLECT")[0]

    return warp(image, "BILINEAR"), warp(mask, "NEAREST")


def _flip_if(x, flip):
    return tf.cond(tf.cast(flip, tf.bool), lambda: x[:, ::-1], lambda: x)


def _jitter(image, contrast, brightness):
    scale, offset = definitions.jitter_map(tf.reduce_mean(image), tf.cast(contrast, tf.float32),
                                           tf.cast(brightness, tf.float32))
    return tf.clip_by_value(image * scale + offset, 0.0, 1.0)


def apply_augmentation(image, mask, params, size, rotate=True):
    """Crop, flip, resize and rotate `image` (H, W, 3) uint8 and `mask` (H, W) uint8 together, then
    change the image's contrast and brightness: `params` as `definitions.augmentation_params` gives them."""
    params = [tf.cast(p, tf.int32) for p in params[:4]] + list(params[4:])
    return definitions.augment_pair(image, mask, params, size, _flip_if, _resize_pair, rotate_pair, _jitter,
                                    rotates=rotate)


def augment_pair(image, mask, draws, size, min_crop=definitions.MIN_CROP, rotate_degrees=0.0):
    """One augmentation of `image` (H, W, 3) uint8 and `mask` (H, W) uint8 from its random numbers `draws`
    (`definitions.draw_augmentation`), inside the graph."""
    shape = tf.shape(mask)
    params = definitions.augmentation_params(
        tf.cast(draws, tf.float64), shape[0], shape[1], min_crop, rotate_degrees,
        to_int=lambda x: tf.cast(x, tf.int32), cast=lambda x: tf.cast(x, tf.float64), minimum=tf.minimum,
        maximum=tf.maximum)
    return apply_augmentation(image, mask, params, size, rotate=rotate_degrees > 0)


def _as_reader(source):
    if isinstance(source, Items):
        return source
    images, masks = source
    return PairReader.from_arrays(images, masks)


_SIGNATURE = (tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((None, None), tf.uint8))


def _pairs(reader, generate, signature):
    pairs = tf_python.from_generator(generate, output_signature=signature)
    if reader.source.count is not None:  # a known length lets Keras end each pass without a warning
        pairs = pairs.apply(tf.data.experimental.assert_cardinality(reader.source.count))
    return pairs


def epoch_keys(source, epoch, rng):
    """The keys of a training epoch: a seeded permutation, or a sequential source's own shuffled pass."""
    return source.keys(epoch) if source.sequential else rng.permutation(source.count)


def train_dataset(reader, image_size, batch_size, seed=0, augment=True, rotate_degrees=0.0):
    """Shuffled, augmented, batched `(image, mask)` pairs; one pass over the pairs per epoch.

    Args:
        reader: the streaming core over the pairs (`masks.PairReader`; or `(images, masks)` lists of decoded
            uint8 arrays).
        image_size: `(height, width)` of the batches.
        seed: epoch `e` is shuffled by `rng = numpy.random.default_rng((seed, e))`, which then draws the
            augmentations of the epoch's positions (`definitions.draw_augmentation(rng, count)`), as in the NumPy
            pipeline; a sequential source's pairs draw theirs one by one.
        rotate_degrees: largest rotation (0: none).
    A pair that cannot be used is replaced by another, so an epoch keeps its length, and the pairs skipped
    are reported at the end of the epoch (`Items.end_pass`).
    """
    reader = _as_reader(reader)
    size = tf.constant(image_size, tf.int32)
    epochs = itertools.count()

    def generate():
        epoch = next(epochs)
        rng = np.random.default_rng((seed, epoch))
        keys = epoch_keys(reader.source, epoch, rng)
        draws = None if reader.source.sequential else definitions.draw_augmentation(rng, reader.source.count)
        for position, (image, mask) in reader.stream(keys, rng=rng):
            yield image, mask, definitions.draw_augmentation(rng) if draws is None else draws[position]
        reader.end_pass("this epoch")

    pairs = _pairs(reader, generate, _SIGNATURE + (tf.TensorSpec((definitions.AUGMENTATION_DRAWS,), tf.float64),))
    if augment:
        pairs = pairs.map(lambda i, m, d: augment_pair(i, m, d, size, rotate_degrees=rotate_degrees),
                          num_parallel_calls=tf.data.AUTOTUNE)
    else:
        pairs = pairs.map(lambda i, m, d: _resize_pair(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    count = reader.source.count
    return pairs.batch(batch_size, drop_remainder=count is None or count >= batch_size).prefetch(tf.data.AUTOTUNE)


def validation_dataset(reader, image_size, batch_size):
    """Every pair once, in order, resized to `image_size`. A pair that cannot be used is replaced by another
    (the same one each pass) and reported, so the set keeps its length (Keras knows where it ends)."""
    reader = _as_reader(reader)
    size = tf.constant(image_size, tf.int32)

    def generate():
        for _, (image, mask) in reader.stream(reader.source.keys(None), rng=np.random.default_rng(0)):
            yield image, mask
        reader.end_pass("validation")

    pairs = _pairs(reader, generate, _SIGNATURE)
    pairs = pairs.map(lambda i, m: _resize_pair(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)
