"""tf.data pipelines for super-resolution: random HR patches -> (bicubic LR, HR) pairs.

Training pairs are made on the fly from the patches of a `kx_vision.data.streaming.PatchStream`
(images visited uniformly, once per pass in a shuffled order, as EDSR samples; decoded from their files as
the stream goes, or cropped from memory): a random HR patch, one of the 8 dihedral transforms, then the
LR input by bicubic downscaling with antialiasing (MATLAB `imresize` semantics) rounded to 8-bit levels.
The transform is applied to the HR patch *before* the degradation, so input and target always carry the
same transform (flips and quarter turns commute with the symmetric bicubic kernel on patches whose side
is a multiple of the scale).
Validation pairs are whole images cropped to a multiple of the scale, degraded once with the
`keras.ops` version of the same transforms (`kx_vision.data.transforms`).
"""

import numpy as np

try:
    import tensorflow as tf
except ImportError:  # JAX-only machines use kx_vision.data.arrays; the TF-free helpers below still work
    tf = None

from kx_vision.data import definitions, streaming, tf_python, transforms
from kx_vision.data.images import list_images, load_images


def random_dihedral_tf(image, k):
    """`transforms.dihedral` in TensorFlow ops (the TensorFlow adapter of
    `kx_vision.data.definitions.apply_dihedral`), for a tensor `k` inside the input graph."""
    return definitions.apply_dihedral(
        image,
        tf.convert_to_tensor(k),
        rot90=tf.image.rot90,
        flip_if=lambda x, flip: tf.cond(flip, lambda: tf.image.flip_left_right(x), lambda: x),
    )


def degrade_tf(hr, scale):
    """`transforms.bicubic_downscale` in TensorFlow ops (the TensorFlow adapter of
    `kx_vision.data.definitions.degrade`; what `keras.ops.image.resize` calls on the TensorFlow
    backend), for batches `(N, P, P, 3)` inside the input graph."""
    return definitions.degrade(
        hr,
        tf.shape(hr)[1:3] // scale,
        resize=lambda x, size, interpolation, antialias: tf.image.resize(x, size, method=interpolation,
                                                                         antialias=antialias),
        clip=tf.clip_by_value,
        round_=tf.round,
    )


def train_dataset(images, scale, patch_size, batch_size, seed=0, augment=True, patches_per_image=1):
    """An endless `tf.data.Dataset` of `(lr, hr)` float32 batches in [0, 1] from decoded images in memory.

    Args:
        images: decoded HR images, `(H, W, 3)` uint8 arrays, each at least `patch_size` square.
        scale: downscaling factor; `patch_size` must be a multiple of it.
        patch_size: side of the HR patches (LR patches are `patch_size // scale`).
        batch_size: patches per batch.
        seed: seed of the sampling (order, crops, transforms).
        augment: apply the random dihedral transform.
        patches_per_image: crops taken from an image each time it is visited.

    The same batches as `stream_dataset` over a `streaming.PatchStream.from_arrays` of the images.
    """
    if patch_size % scale:
        raise ValueError(f"patch_size {patch_size} must be a multiple of the scale {scale}")
    stream = streaming.PatchStream.from_arrays(images, patch_size, batch_size, patches_per_image, seed)
    return stream_dataset(stream, scale, augment=augment)


def stream_dataset(stream, scale, augment=True, steps_per_epoch=None):
    """An endless `tf.data.Dataset` of `(lr, hr)` float32 batches in [0, 1]: batch `g` of the dataset is
    batch `g` of `stream`, its dihedral transforms and bicubic degradation applied in TensorFlow ops inside
    the input graph.

    `stream` is a `kx_vision.data.streaming.PatchStream` (of files, a cache, or a tensorflow-datasets set). Its
    windows are read in order, two at a time (the stream decodes a window's images in its own threads, so
    decoding is as parallel as there are cores and memory holds two windows of patches whatever the number of
    cores), split into patches, transformed, batched, degraded and prefetched. With `steps_per_epoch`, what the
    stream skipped (unreadable or too small) is reported (`stream.report`) when the last batch of each epoch of
    that many batches has been made.
    """
    size = stream.patch_size
    if size % scale:
        raise ValueError(f"patch_size {size} must be a multiple of the scale {scale}")
    patches = _window_patches(stream)

    def transform(patch, k):
        return random_dihedral_tf(patch, k) if augment else patch

    def made(batch_index):
        epoch, step = divmod(int(batch_index), steps_per_epoch)
        if step == steps_per_epoch - 1:
            stream.report(f"in epoch {epoch + 1}")
        return batch_index

    def to_pair(batch_index, patches):
        if steps_per_epoch:
            done = tf_python.numpy_function(made, [batch_index], tf.int64)
            with tf.control_dependencies([done]):
                patches = tf.identity(patches)
        hr = tf.cast(patches, tf.float32) / 255.0
        return (hr if scale == 1 else degrade_tf(hr, scale)), hr

    return (
        patches.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(stream.batch_size, drop_remainder=True)
        .enumerate()
        .map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _window_patches(stream):
    """The endless `tf.data.Dataset` of `(patch, dihedral index)` of a `PatchStream`, window after window."""
    size = stream.patch_size

    def read(window_id):
        # Each window is asked for once, two at a time (below): one being read, the next one decoding.
        patches, dihedral = stream.window(int(window_id), prefetch=False, keep=False)
        return patches, dihedral.astype(np.int32)

    def window(window_id):
        patches, dihedral = tf_python.numpy_function(read, [window_id], (tf.uint8, tf.int32))
        return tf.ensure_shape(patches, [None, size, size, 3]), tf.ensure_shape(dihedral, [None])

    def windows(_):
        # Window ids from where this iteration starts (`stream.resume()`: 0, or where a sequential source's
        # last reader stopped), asked for each time the dataset is iterated.
        start = tf_python.numpy_function(lambda: np.int64(stream.resume()), [], tf.int64)
        return tf.data.Dataset.counter(tf.ensure_shape(start, []))

    return (
        tf.data.Dataset.from_tensors(0)
        .flat_map(windows)
        .map(window, num_parallel_calls=2, deterministic=True)  # the stream decodes a window's images in parallel
        .unbatch()
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
    dataset = tf_python.from_generator(lambda: iter(pairs), output_signature=signature)
    # A known length lets Keras end each validation pass without an "ran out of data" warning.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(pairs)))


def load_folders(folders, min_size=None, what="image", skip_small=False):
    """Decode every image in `folders` (see `kx_vision.data.images.load_images`)."""
    images, _ = load_images(list_images(folders), min_size=min_size, what=what, skip_small=skip_small)
    return images


def content_stream_dataset(stream, steps_per_epoch=None):
    """`(content, content)` batches of a `PatchStream` of content crops (see `stream_dataset`)."""
    return stream_dataset(stream, scale=1, steps_per_epoch=steps_per_epoch).map(lambda lr, hr: (hr, hr))
