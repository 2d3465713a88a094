"""The super-resolution and style input pipelines without TensorFlow: `keras.utils.PyDataset`s over
decoded images held as NumPy arrays.

For machines where TensorFlow is not installed (JAX on a GPU box). The semantics are those of the
tf.data pipeline (`kx_vision.data.superres`): an image drawn uniformly, a random HR patch, one of the
8 dihedral transforms applied to the HR patch, then the LR input by antialiased bicubic downscaling
rounded to 8 bits (`kx_vision.data.transforms.bicubic_downscale`, run by the backend, so on the
accelerator with JAX). `tests/test_data_arrays.py` checks the two pipelines make the same pairs from the
same patches. Random streams differ (NumPy here, TensorFlow's stateless RNG there), so batches do not.
"""

import math

import keras
import numpy as np

# PIPELINES, default_workers, resolve_pipeline: re-exported (they live in `kx_vision.data`, importable without Keras).
from kx_vision.data import PIPELINES, default_workers, resolve_pipeline, transforms  # noqa: F401


def dihedral_numpy(image, k):
    """`transforms.dihedral` for one `(H, W, C)` NumPy image: `k % 4` counter-clockwise quarter
    turns, then a left-right flip when `k >= 4` (as `tf.image.rot90` / `flip_left_right`)."""
    image = np.rot90(image, k % 4, axes=(0, 1))
    return image[:, ::-1] if k >= 4 else image


def make_pairs(patches, scale):
    """`(lr, hr)` float32 arrays in [0, 1] from uint8 HR patches `(N, P, P, 3)`."""
    hr = patches.astype(np.float32) / 255.0
    if scale == 1:
        return hr, hr
    return np.asarray(keras.ops.convert_to_numpy(transforms.bicubic_downscale(hr, scale)), np.float32), hr


class SuperResPatches(keras.utils.PyDataset):
    """`steps_per_epoch` batches of `(lr, hr)` pairs sampled at random from `images` each epoch.

    Args:
        images: decoded HR images, `(H, W, 3)` uint8 arrays, each at least `patch_size` square.
        scale, patch_size, batch_size, augment: as `kx_vision.data.superres.train_dataset`.
        steps_per_epoch: batches per epoch (Keras asks for `len()`).
        seed: batch `i` of epoch `e` is drawn from `numpy.random.default_rng((seed, e, i))`, so any
            worker order gives the same batches.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.
    """

    def __init__(self, images, scale, patch_size, batch_size, steps_per_epoch, seed=0, augment=True, **kwargs):
        super().__init__(**kwargs)
        if patch_size % scale:
            raise ValueError(f"patch_size {patch_size} must be a multiple of the scale {scale}")
        small = [i for i, image in enumerate(images) if min(image.shape[:2]) < patch_size]
        if small:
            raise ValueError(f"images {small[:5]} are smaller than the {patch_size}x{patch_size} patch size")
        self.images = list(images)
        self.scale, self.patch_size, self.batch_size = int(scale), int(patch_size), int(batch_size)
        self.steps_per_epoch, self.seed, self.augment = int(steps_per_epoch), int(seed), bool(augment)
        self.epoch = 0

    def __len__(self):
        return self.steps_per_epoch

    def patches(self, index):
        """The uint8 HR patches of batch `index` of the current epoch, transformed."""
        rng = np.random.default_rng((self.seed, self.epoch, index))
        size = self.patch_size
        out = np.empty((self.batch_size, size, size, 3), np.uint8)
        for n in range(self.batch_size):
            image = self.images[rng.integers(len(self.images))]
            top = rng.integers(image.shape[0] - size + 1)
            left = rng.integers(image.shape[1] - size + 1)
            patch = image[top : top + size, left : left + size]
            out[n] = dihedral_numpy(patch, int(rng.integers(8))) if self.augment else patch
        return out

    def __getitem__(self, index):
        return make_pairs(self.patches(index), self.scale)

    def on_epoch_end(self):
        self.epoch += 1


class Pairs(keras.utils.PyDataset):
    """Fixed `(x, y)` batches (e.g. whole validation images of different sizes), each repeated
    `repeats` times along the batch axis (see `kx_vision.distribute`)."""

    def __init__(self, pairs, repeats=1, **kwargs):
        super().__init__(**kwargs)
        self.pairs, self.repeats = list(pairs), int(repeats)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return tuple(np.repeat(t, self.repeats, axis=0) for t in self.pairs[index])


class ContentCrops(keras.utils.PyDataset):
    """`(content, content)` batches of random crops for style transfer (see
    `kx_vision.data.superres.content_dataset`)."""

    def __init__(self, images, crop_size, batch_size, steps_per_epoch, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.patches = SuperResPatches(prepare_content(images, crop_size), 1, crop_size, batch_size,
                                       steps_per_epoch, seed=seed)

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, index):
        content = self.patches[index][1]
        return content, content

    def on_epoch_end(self):
        self.patches.on_epoch_end()


def prepare_content(images, crop_size):
    """Upscale (bicubic) images whose short side is below `crop_size`, so every crop fits."""
    from PIL import Image

    prepared = []
    for image in images:
        short = min(image.shape[:2])
        if short < crop_size:
            factor = crop_size / short
            size = (max(crop_size, math.ceil(image.shape[1] * factor)), max(crop_size, math.ceil(image.shape[0] * factor)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        prepared.append(image)
    return prepared
