"""The super-resolution and style input pipelines without TensorFlow: `keras.utils.PyDataset`s over a
`kx_vision.data.streaming.PatchStream` (image files decoded by worker threads as the stream goes, or an
in-memory cache).

For machines where TensorFlow is not installed (JAX on a GPU box). The semantics are those of the
tf.data pipeline (`kx_vision.data.superres`), batch for batch: the same stream gives the same HR
patches (images visited uniformly, once per pass in a shuffled order; random crops; one of the 8
dihedral transforms applied to the HR patch), then the LR input by antialiased bicubic downscaling
rounded to 8 bits (`kx_vision.data.transforms.bicubic_downscale`, run by the backend, so on the
accelerator with JAX). `tests/test_data_arrays.py` checks the two pipelines make the same batches; the
LR inputs may differ by one 8-bit level where a value lies within float error of a rounding boundary.
"""

import threading

import keras
import numpy as np

# PIPELINES, default_workers, resolve_pipeline: re-exported (they live in `kx_vision.data`, importable without Keras).
from kx_vision.data import PIPELINES, default_workers, resolve_pipeline, streaming, transforms  # noqa: F401

# The NumPy adapter of the one dihedral definition (`kx_vision.data.definitions`), re-exported here.
from kx_vision.data.definitions import dihedral_numpy


def make_pairs(patches, scale):
    """`(lr, hr)` float32 arrays in [0, 1] from uint8 HR patches `(N, P, P, 3)`."""
    hr = patches.astype(np.float32) / 255.0
    if scale == 1:
        return hr, hr
    return np.asarray(keras.ops.convert_to_numpy(transforms.bicubic_downscale(hr, scale)), np.float32), hr


class SuperResPatches(keras.utils.PyDataset):
    """`steps_per_epoch` batches of `(lr, hr)` pairs per epoch from a stream of patches.

    Args:
        images: a `kx_vision.data.streaming.PatchStream` (files decoded as the stream goes, or a cache),
            or decoded HR images, `(H, W, 3)` uint8 arrays each at least `patch_size` square (a stream over
            them is made, with `patch_size`, `batch_size`, `patches_per_image` and `seed`).
        scale, augment: as `kx_vision.data.superres.stream_dataset`.
        steps_per_epoch: batches per epoch (Keras asks for `len()`).
        fixed: every epoch gives the same batches (validation crops); else batch `i` of epoch `e` is batch
            `e * steps_per_epoch + i` of the stream, so any worker order gives the same batches.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`
            (threads: the stream's decoding threads and its report of unreadable files live in this process).
    """

    def __init__(self, images, scale, patch_size=None, batch_size=None, steps_per_epoch=1, seed=0, augment=True,
                 patches_per_image=1, fixed=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(images, streaming.PatchStream):
            self.stream = images
        else:
            if patch_size % scale:
                raise ValueError(f"patch_size {patch_size} must be a multiple of the scale {scale}")
            self.stream = streaming.PatchStream.from_arrays(images, patch_size, batch_size, patches_per_image, seed)
        if self.stream.patch_size % scale:
            raise ValueError(f"patch_size {self.stream.patch_size} must be a multiple of the scale {scale}")
        self.scale, self.augment, self.fixed = int(scale), bool(augment), bool(fixed)
        self.patch_size, self.batch_size = self.stream.patch_size, self.stream.batch_size
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = 0
        self._served = set()  # batch indices asked for since the epoch began
        self._lock = threading.Lock()

    def __len__(self):
        return self.steps_per_epoch

    def patches(self, index):
        """The uint8 HR patches of batch `index` of the current epoch, transformed."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} of an epoch of {self.steps_per_epoch}")
        epoch = 0 if self.fixed else self.epoch
        with self._lock:
            self._served.add(index)
        patches, dihedral = self.stream.batch(epoch * self.steps_per_epoch + index)
        if not self.augment:
            return patches
        return np.stack([dihedral_numpy(patch, int(k)) for patch, k in zip(patches, dihedral)])

    def __getitem__(self, index):
        return make_pairs(self.patches(index), self.scale)

    def on_epoch_end(self):
        """The next epoch takes the next `steps_per_epoch` batches of the stream, once every batch of this
        one was asked for: Keras also ends the pseudo-epoch in which `fit` reads one batch to build the
        model, and that must not skip an epoch of the stream."""
        with self._lock:
            complete, self._served = len(self._served) >= self.steps_per_epoch, set()
        if complete and not self.fixed:
            self.stream.report(f"in epoch {self.epoch + 1}")
            self.epoch += 1


class Pairs(keras.utils.PyDataset):
    """Fixed `(x, y)` batches (e.g. whole validation images of different sizes), each repeated
    `repeats` times along the batch axis (see `kx_vision.training.distribute`)."""

    def __init__(self, pairs, repeats=1, **kwargs):
        super().__init__(**kwargs)
        self.pairs, self.repeats = list(pairs), int(repeats)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return tuple(np.repeat(t, self.repeats, axis=0) for t in self.pairs[index])


class ContentCrops(keras.utils.PyDataset):
    """`(content, content)` batches of random crops for style transfer (see
    `kx_vision.data.superres.content_stream_dataset`): from a `PatchStream` of content crops, or from
    decoded images (each raised to `crop_size` on its short side first)."""

    def __init__(self, images, crop_size=None, batch_size=None, steps_per_epoch=1, seed=0, patches_per_image=1,
                 fixed=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(images, streaming.PatchStream):
            images = streaming.PatchStream.from_arrays(images, crop_size, batch_size, patches_per_image, seed,
                                                       min_side=crop_size)
        self.patches = SuperResPatches(images, 1, steps_per_epoch=steps_per_epoch, fixed=fixed)

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, index):
        content = self.patches[index][1]
        return content, content

    def on_epoch_end(self):
        self.patches.on_epoch_end()
