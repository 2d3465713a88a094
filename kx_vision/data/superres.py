"""tf.data pipelines for super-resolution: random HR patches -> (bicubic LR, HR) pairs.

Training pairs are made on the fly: a random image (uniformly, as EDSR samples), a random HR patch,
one of the 8 dihedral transforms, then the LR input by bicubic downscaling with antialiasing
(MATLAB `imresize` semantics) rounded to 8-bit levels. The transform is applied to the HR patch
*before* the degradation, so input and target always carry the same transform (flips and quarter
turns commute with the symmetric bicubic kernel on patches whose side is a multiple of the scale).
Validation pairs are whole images cropped to a multiple of the scale, degraded once with the
`keras.ops` version of the same transforms (`kx_vision.data.transforms`).
"""

import numpy as np

try:
    import tensorflow as tf
except ImportError:  # JAX-only machines use kx_vision.data.arrays; the TF-free helpers below still work
    tf = None

from kx_vision.data import transforms
from kx_vision.data.images import list_images, load_images


def random_dihedral_tf(image, k):
    """`transforms.dihedral` in TensorFlow ops, for a tensor `k` inside the input graph."""
    image = tf.image.rot90(image, k % 4)
    return tf.cond(k >= 4, lambda: tf.image.flip_left_right(image), lambda: image)


def degrade_tf(hr, scale):
    """`transforms.bicubic_downscale` in TensorFlow ops (what `keras.ops.image.resize` calls on the
    TensorFlow backend), for batches `(N, P, P, 3)` inside the input graph."""
    size = tf.shape(hr)[1:3] // scale
    lr = tf.image.resize(hr, size, method="bicubic", antialias=True)
    return tf.round(tf.clip_by_value(lr, 0.0, 1.0) * 255.0) / 255.0


def train_dataset(images, scale, patch_size, batch_size, seed=0, augment=True):
    """An endless `tf.data.Dataset` of `(lr, hr)` float32 batches in [0, 1].

    Args:
        images: decoded HR images, `(H, W, 3)` uint8 arrays, each at least `patch_size` square.
        scale: downscaling factor; `patch_size` must be a multiple of it.
        patch_size: side of the HR patches (LR patches are `patch_size // scale`).
        batch_size: patches per batch.
        seed: seed of the stateless random sampling (crops, transforms).
        augment: apply the random dihedral transform.
    """
    if patch_size % scale:
        raise ValueError(f"patch_size {patch_size} must be a multiple of the scale {scale}")
    # Decoded images are cached once in one flat uint8 buffer; a patch is a slice of it.
    shapes = np.array([image.shape[:2] for image in images], dtype=np.int64)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    buffer = tf.constant(np.concatenate([image.reshape(-1) for image in images]))
    shapes_t, offsets_t = tf.constant(shapes), tf.constant(offsets)
    count = len(images)

    def sample(seed_pair):
        seeds = tf.random.experimental.stateless_split(seed_pair, 4)
        index = tf.random.stateless_uniform([], seeds[0], 0, count, dtype=tf.int64)
        height, width = shapes_t[index][0], shapes_t[index][1]
        top = tf.random.stateless_uniform([], seeds[1], 0, height - patch_size + 1, dtype=tf.int64)
        left = tf.random.stateless_uniform([], seeds[2], 0, width - patch_size + 1, dtype=tf.int64)
        image = tf.reshape(buffer[offsets_t[index] : offsets_t[index] + height * width * 3], [height, width, 3])
        patch = image[top : top + patch_size, left : left + patch_size]
        if augment:
            k = tf.random.stateless_uniform([], seeds[3], 0, 8, dtype=tf.int32)
            patch = random_dihedral_tf(patch, k)
        return tf.ensure_shape(patch, [patch_size, patch_size, 3])

    def to_pair(patches):
        hr = tf.cast(patches, tf.float32) / 255.0
        return (hr if scale == 1 else degrade_tf(hr, scale)), hr

    return (
        tf.data.Dataset.random(seed=seed)
        .batch(2)
        .map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def validation_pairs(images, scale):
    """Whole images cropped to a multiple of `scale`, with their bicubic LR: a list of
    `(lr, hr)` float32 arrays of shapes `(1, h, w, 3)` and `(1, h * scale, w * scale, 3)`."""
    pairs = []
    for image in images:
        hr = transforms.crop_to_multiple(image, scale)[None].astype(np.float32) / 255.0
        lr = np.asarray(transforms.bicubic_downscale(hr, scale), dtype=np.float32)
        pairs.append((lr, hr))
    return pairs


def pairs_dataset(pairs):
    """A `tf.data.Dataset` over `(lr, hr)` pairs of any sizes, one image per batch."""
    signature = (
        tf.TensorSpec((1, None, None, 3), tf.float32),
        tf.TensorSpec((1, None, None, 3), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(lambda: iter(pairs), output_signature=signature)
    # A known length lets Keras end each validation pass without an "ran out of data" warning.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(pairs)))


def load_folders(folders, min_size=None, what="image", skip_small=False):
    """Decode every image in `folders` (see `kx_vision.data.images.load_images`)."""
    images, _ = load_images(list_images(folders), min_size=min_size, what=what, skip_small=skip_small)
    return images


def content_dataset(images, crop_size, batch_size, seed=0):
    """Endless `(content, content)` batches for style transfer: random `crop_size` squares of the
    content images (each resized so its short side is at least `crop_size`), randomly flipped.
    The target is the content image itself; the style lives in the loss."""
    from kx_vision.data.arrays import prepare_content

    prepared = prepare_content(images, crop_size)
    dataset = train_dataset(prepared, scale=1, patch_size=crop_size, batch_size=batch_size, seed=seed)
    return dataset.map(lambda lr, hr: (hr, hr))
