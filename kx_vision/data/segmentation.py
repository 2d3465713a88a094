"""tf.data pipelines for segmentation: the same geometric augmentation on image and mask.

Training: a random crop covering 60-100% of each side, a random left-right flip, resized to
`image_size` (bilinear for the image, nearest-neighbour for the mask, so class ids stay ids), then a
random brightness/contrast change of the image only. Validation: resized to `image_size` the same way,
without randomness. Images are float32 RGB in [0, 1]; masks `(H, W, 1)` int32 class ids.
"""

import numpy as np
import tensorflow as tf


def _dataset(images, masks):
    signature = (tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((None, None), tf.uint8))
    dataset = tf.data.Dataset.from_generator(lambda: zip(images, masks), output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(images)))


def _resize_pair(image, mask, size):
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, size, method="bilinear", antialias=True)
    mask = tf.image.resize(mask[..., None], size, method="nearest")
    return tf.clip_by_value(image, 0.0, 1.0), tf.cast(mask, tf.int32)


def augment_pair(image, mask, seed, size, min_crop=0.6):
    """Random crop + flip applied identically to `image` (H, W, 3) uint8 and `mask` (H, W) uint8,
    then resize (bilinear / nearest) and a photometric jitter of the image alone."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    shape = tf.shape(mask)
    height, width = shape[0], shape[1]
    fraction = tf.random.stateless_uniform([2], seeds[0], min_crop, 1.0)
    crop_h = tf.maximum(tf.cast(tf.cast(height, tf.float32) * fraction[0], tf.int32), 1)
    crop_w = tf.maximum(tf.cast(tf.cast(width, tf.float32) * fraction[1], tf.int32), 1)
    top = tf.random.stateless_uniform([], seeds[1], 0, height - crop_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, width - crop_w + 1, dtype=tf.int32)
    image = image[top : top + crop_h, left : left + crop_w]
    mask = mask[top : top + crop_h, left : left + crop_w]
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    image, mask = _resize_pair(image, mask, size)
    jitter = tf.random.stateless_uniform([2], seeds[4], -0.1, 0.1)
    mean = tf.reduce_mean(image)
    image = tf.clip_by_value((image - mean) * (1.0 + jitter[0]) + mean + jitter[1], 0.0, 1.0)
    return image, mask


def train_dataset(images, masks, image_size, batch_size, seed=0, augment=True):
    """Shuffled, augmented, batched `(image, mask)` pairs; one pass over the data per epoch."""
    size = tf.constant(image_size, tf.int32)
    count = len(images)
    pairs = _dataset(images, masks).cache().shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        pairs = tf.data.Dataset.zip((pairs, seeds)).map(
            lambda pair, s: augment_pair(pair[0], pair[1], s, size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        pairs = pairs.map(lambda i, m: _resize_pair(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    return pairs.batch(batch_size, drop_remainder=count >= batch_size).prefetch(tf.data.AUTOTUNE)


def validation_dataset(images, masks, image_size, batch_size):
    size = tf.constant(image_size, tf.int32)
    pairs = _dataset(images, masks).cache().map(lambda i, m: _resize_pair(i, m, size))
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def as_arrays(dataset):
    """Materialise a (small) dataset as NumPy `(images, masks)`."""
    images, masks = [], []
    for image, mask in dataset:
        images.append(np.asarray(image))
        masks.append(np.asarray(mask))
    return np.concatenate(images), np.concatenate(masks)
