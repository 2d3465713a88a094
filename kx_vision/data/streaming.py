"""Training patches streamed from image files: one plan for the tf.data and the `PyDataset` pipelines.

Memory does not grow with the number of images. The files are listed and their headers read (sizes,
nothing decoded); then, pass after pass over the list:

- each pass visits every image once, in an order shuffled per pass (seeded by `(seed, pass)`): images
  are drawn uniformly, as EDSR samples (not weighted by area), without replacement within a pass;
- an image is decoded by a worker thread (Pillow releases the GIL while it decodes) and gives
  `patches_per_image` random crops (BasicSR's sub-images without the preparation step: decoding a 2K
  PNG for one 48 px patch is wasteful) and a dihedral index (0-7) for each, all drawn from
  `numpy.random.default_rng((seed, 1, pass, position))`; the decoded image is then dropped;
- the patches of a *window* of consecutive images (about `WINDOW_BATCHES` batches of patches) are
  shuffled together, so the patches of one image spread over several batches; windows never straddle a
  pass;
- batch `g` of the stream is patches `g * batch_size` to `(g + 1) * batch_size`.

The stream is a pure function of the seed and the files: any batch can be computed alone, in any
order, by any thread, which is what a `keras.utils.PyDataset` asks for; the tf.data pipeline reads the
same windows in order, so both pipelines make the same batches (they differ only in how the LR input is
rounded: see `kx_vision.data.arrays`). A window's images are decoded in parallel when it is first asked
for, and the `PyDataset` starts the next window at the same time (tf.data asks for two at a time), so
decoding overlaps training; a few windows are kept for batches that straddle two. Memory holds those
windows' patches and one decoded image per decoding thread, whatever the number of files.

With `images` given (the in-memory cache, `data.cache`), the same plan crops the decoded arrays instead
of files: caching changes the speed, not the batches.

A file that cannot be decoded in the middle of a stream (damaged after its header) does not stop the
run: it is skipped, remembered (never read again), its patches come from the next readable image of the
pass, and `report()` (called by the pipelines at the end of each epoch) prints one warning line about the
files found since the last report.
"""

import collections
import concurrent.futures
import math
import os
import threading

import numpy as np

from kx_vision.data.definitions import NUM_DIHEDRAL
from kx_vision.errors import DataError

CACHE_MODES = ("auto", "always", "never")
# `data.cache=auto` keeps the decoded images in memory when they take at most this many MiB (width x height x
# 3 bytes each, from the file headers). 128 MiB holds the 291 images of T91 + BSD200 (104 MiB), where the
# cache is faster, and bounds what caching can add to a run's memory; DIV2K (800 2K images, ~5.5 GiB) streams.
CACHE_LIMIT_MIB = 128
# The patches of about this many batches are shuffled together (see the module docstring).
WINDOW_BATCHES = 8
# Windows kept decoded (as patches) for batches that straddle two, and for the one decoded ahead.
KEPT_WINDOWS = 4


def decoded_mib(sizes):
    """MiB that images of `(width, height)` sizes take decoded (uint8 RGB)."""
    return sum(int(w) * int(h) * 3 for w, h in sizes) / 2**20


def use_cache(mode, sizes, limit_mib=CACHE_LIMIT_MIB):
    """Whether `data.cache=mode` keeps the decoded images in memory: always, never, or (auto) when their
    decoded size is at most `limit_mib`."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
    if mode == "auto":
        return decoded_mib(sizes) <= limit_mib
    return mode == "always"


def upscaled_size(width, height, min_side):
    """`(width, height)` of an image whose short side is raised to `min_side` (bicubic, aspect kept), as
    `upscale_to` makes it; unchanged when it is at least `min_side` already."""
    short = min(width, height)
    if not min_side or short >= min_side:
        return width, height
    factor = min_side / short
    return max(min_side, math.ceil(width * factor)), max(min_side, math.ceil(height * factor))


def upscale_to(image, min_side):
    """An `(H, W, 3)` uint8 image with its short side raised to `min_side` by Pillow's bicubic
    (style transfer's content images, so every crop fits); unchanged when already that large."""
    from PIL import Image

    height, width = image.shape[:2]
    size = upscaled_size(width, height, min_side)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))


def default_decoders():
    """Threads decoding images: one per core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


class PatchStream:
    """The endless, seeded stream of training patches of a set of images (see the module docstring).

    Args:
        paths: image files (names used in messages; decoded when needed unless `images` is given).
        sizes: `(width, height)` of each file, from its header (`kx_vision.data.images.scan_images`).
        patch_size: side of the square patches; every image (after `min_side`) must be at least this.
        batch_size: patches per batch.
        patches_per_image: crops taken from each decoded image.
        seed: seed of the order, crops, transforms and shuffles.
        images: the decoded images (`(H, W, 3)` uint8), to crop from memory instead of decoding files.
        min_side: raise each image's short side to this first (bicubic), as style transfer does.
        what: words for messages ("training image").
        decoders: threads decoding images (default: one per core).
    """

    def __init__(self, paths, sizes, patch_size, batch_size, patches_per_image=1, seed=0, images=None,
                 min_side=None, what="training image", decoders=None):
        if not len(paths):
            raise DataError(f"no {what} to train on")
        self.paths, self.images = list(paths), images
        self.sizes = [upscaled_size(w, h, min_side) for w, h in sizes]
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.patches_per_image, self.seed = int(patches_per_image), int(seed)
        self.min_side, self.what = min_side, what
        small = [p for p, (w, h) in zip(self.paths, self.sizes) if min(w, h) < self.patch_size]
        if small:
            raise DataError(f"{what} {small[0]} is smaller than the {self.patch_size}x{self.patch_size} patch "
                            f"size ({len(small)} such image(s))")
        count = len(self.paths)
        # Images per window: about WINDOW_BATCHES batches of patches, and never more than a pass.
        self.window_images = min(count, max(1, math.ceil(WINDOW_BATCHES * self.batch_size / self.patches_per_image)))
        self.windows_per_pass = math.ceil(count / self.window_images)
        self.patches_per_pass = count * self.patches_per_image
        self.decoders = decoders or default_decoders()
        self.decodes = 0  # images decoded (or cropped from memory) so far
        self._lock = threading.Lock()
        self._windows = collections.OrderedDict()  # window id -> _Window
        self._orders = collections.OrderedDict()  # pass -> permutation
        self._pool = None
        self._bad = {}  # path -> message: files found unreadable while streaming
        self._reported = 0  # how many of them report() has already announced

    @classmethod
    def from_arrays(cls, images, patch_size, batch_size, patches_per_image=1, seed=0, min_side=None,
                    what="image"):
        """A stream over decoded images held in memory (names `<image i>` in messages)."""
        images = [upscale_to(image, min_side) for image in images] if min_side else list(images)
        small = [i for i, image in enumerate(images) if min(image.shape[:2]) < patch_size]
        if small:
            raise ValueError(f"images {small[:5]} are smaller than the {patch_size}x{patch_size} patch size")
        return cls([f"<image {i}>" for i in range(len(images))], [image.shape[1::-1] for image in images],
                   patch_size, batch_size, patches_per_image, seed, images=images, what=what)

    @property
    def cached(self):
        """Whether patches are cropped from decoded images held in memory."""
        return self.images is not None

    def __len__(self):
        return len(self.paths)

    # --- the plan ---

    def order(self, pass_index):
        """The permutation of the images visited by pass `pass_index`."""
        with self._lock:
            order = self._orders.get(pass_index)
            if order is None:
                order = np.random.default_rng((self.seed, 0, pass_index)).permutation(len(self.paths))
                self._orders[pass_index] = order
                while len(self._orders) > 4:
                    self._orders.popitem(last=False)
            return order

    def window_span(self, window_id):
        """`(pass, first, stop)`: window `window_id` holds the images at positions `first:stop` of its pass."""
        pass_index, window = divmod(int(window_id), self.windows_per_pass)
        first = window * self.window_images
        return pass_index, first, min(first + self.window_images, len(self.paths))

    def batch(self, index):
        """Batch `index` of the stream: `(patches, dihedral)`, uint8 `(batch_size, P, P, 3)` patches as
        cropped (not yet transformed) and the index (0-7) of the dihedral transform each is to get."""
        return self.patches(int(index) * self.batch_size, self.batch_size)

    def patches(self, start, count):
        """Patches `start:start + count` of the stream, as `batch` returns them."""
        per_window = self.window_images * self.patches_per_image
        parts, dihedral = [], []
        position, end = int(start), int(start) + int(count)
        while position < end:
            pass_index, offset = divmod(position, self.patches_per_pass)
            window, skip = divmod(offset, per_window)
            patches, ks = self.window(pass_index * self.windows_per_pass + window)
            take = min(end - position, len(patches) - skip)
            parts.append(patches[skip : skip + take])
            dihedral.append(ks[skip : skip + take])
            position += take
        if len(parts) == 1:
            return parts[0], dihedral[0]
        return np.concatenate(parts), np.concatenate(dihedral)

    def window(self, window_id, prefetch=True, keep=True):
        """Window `window_id`: `(patches, dihedral)` of its images, shuffled together. Decoded on first
        use (the images in parallel); with `prefetch` the next window starts decoding too. `keep=False`
        for a reader that never asks twice (tf.data): the window is not kept after it is returned."""
        window_id = int(window_id)
        with self._lock:
            entry = self._windows.get(window_id)
            if entry is None:
                entry = self._windows[window_id] = _Window(self, window_id)
            self._windows.move_to_end(window_id)
            ahead = None
            if prefetch and self.images is None and window_id + 1 not in self._windows:
                ahead = self._windows[window_id + 1] = _Window(self, window_id + 1)
            while len(self._windows) > KEPT_WINDOWS:
                self._windows.popitem(last=False)
        entry.start()
        if ahead is not None:
            ahead.start()
        result = entry.result()
        if not keep:
            with self._lock:
                if self._windows.get(window_id) is entry:
                    del self._windows[window_id]
        return result

    # --- decoding ---

    def _submit(self, pass_index, position):
        if self.images is not None:  # cropping from memory: cheaper than handing the work to a thread
            done = concurrent.futures.Future()
            done.set_result(self._image_patches(pass_index, position))
            return done
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.decoders, thread_name_prefix="kx_decode")
            pool = self._pool
        return pool.submit(self._image_patches, pass_index, position)

    def _image_patches(self, pass_index, position):
        """The crops of the image at `position` of pass `pass_index` (or, if that file cannot be decoded,
        of the next readable one of the pass), with their dihedral indices."""
        order = self.order(pass_index)
        count = len(order)
        rng = np.random.default_rng((self.seed, 1, pass_index, position))
        for step in range(count):
            index = int(order[(position + step) % count])
            if self.paths[index] in self._bad:
                continue
            try:
                image = self._decode(index)
            except DataError as error:  # unreadable, truncated, beyond the decompression-bomb limit
                with self._lock:
                    self._bad.setdefault(self.paths[index], str(error))
                continue
            return self._crop(image, index, rng)
        raise DataError(f"none of the {count} {self.what} files could be read (first: {self.paths[0]}: "
                        f"{self._bad.get(self.paths[0], '')})")

    def _decode(self, index):
        from kx_vision.data.images import load_image_view

        with self._lock:
            self.decodes += 1
        if self.images is not None:
            return self.images[index]
        # Only crops are taken: an uncompressed BMP is read, not decoded (`load_image_view`).
        return upscale_to(load_image_view(self.paths[index]), self.min_side)

    def _crop(self, image, index, rng):
        size, count = self.patch_size, self.patches_per_image
        height, width = image.shape[:2]
        if min(height, width) < size:  # the header said otherwise: the file changed since it was listed
            raise DataError(f"{self.what} {self.paths[index]} is {width}x{height}, smaller than the "
                            f"{size}x{size} patch size; remove it or lower the patch size")
        tops = rng.integers(height - size + 1, size=count)
        lefts = rng.integers(width - size + 1, size=count)
        dihedral = rng.integers(NUM_DIHEDRAL, size=count).astype(np.int32)
        patches = np.stack([image[top : top + size, left : left + size] for top, left in zip(tops, lefts)])
        return patches, dihedral

    # --- bad files ---

    @property
    def skipped(self):
        """`{path: message}` of the files found unreadable while streaming (skipped ever since)."""
        with self._lock:
            return dict(self._bad)

    def report(self, when="this epoch"):
        """Print one warning line about the files found unreadable since the last report (a Python warning
        would add a line of source); returns how many there were."""
        with self._lock:
            found = list(self._bad.items())[self._reported :]
            self._reported += len(found)
            total = len(self._bad)
        if found:
            print(f"warning: skipped {len(found)} unreadable {self.what} file(s) {when} ({total} of "
                  f"{len(self.paths)} so far; their patches came from other images), first: {found[0][1]}",
                  flush=True)
        return len(found)

    def close(self):
        """Stop the decoding threads (a new request starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._windows.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self):
        return (f"PatchStream({len(self.paths)} images, {'cached' if self.cached else 'streamed'}, "
                f"patch {self.patch_size}, batch {self.batch_size}, {self.patches_per_image} per image)")


class _Window:
    """One window: its image jobs (submitted by `start`), assembled once into shuffled patches."""

    def __init__(self, stream, window_id):
        self.stream, self.window_id = stream, window_id
        self.jobs, self.value = None, None
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            if self.jobs is None and self.value is None:
                pass_index, first, stop = self.stream.window_span(self.window_id)
                self.jobs = [self.stream._submit(pass_index, position) for position in range(first, stop)]

    def result(self):
        self.start()
        with self.lock:
            if self.value is None:
                parts = [job.result() for job in self.jobs]
                patches = np.concatenate([p for p, _ in parts])
                dihedral = np.concatenate([k for _, k in parts])
                if len(patches) > 1:
                    pass_index, window = divmod(self.window_id, self.stream.windows_per_pass)
                    shuffle = np.random.default_rng((self.stream.seed, 2, pass_index, window))
                    permutation = shuffle.permutation(len(patches))
                    patches, dihedral = patches[permutation], dihedral[permutation]
                self.value = (patches, dihedral)
                self.jobs = None
            return self.value


def open_stream(folders, patch_size, batch_size, patches_per_image=1, seed=0, cache="auto",
                cache_limit_mib=CACHE_LIMIT_MIB, min_side=None, skip_small=False, what="training image"):
    """A `PatchStream` over the images of `folders`: listed, their headers read (unreadable ones skipped
    with a warning; one smaller than the patch refused, or skipped with `skip_small`), and decoded into
    memory first if `use_cache(cache, sizes, cache_limit_mib)` says so (else as the stream goes).

    Returns `(stream, note)`, `note` one line saying what was decided and why."""
    from kx_vision.data.images import list_images, load_images, scan_images

    paths = list_images(folders)
    min_size = None if min_side else patch_size  # images are raised to min_side, so none is too small
    paths, sizes = scan_images(paths, min_size=min_size, what=what, skip_small=skip_small)
    planned = [upscaled_size(w, h, min_side) for w, h in sizes]
    mib = decoded_mib(planned)
    images = None
    if use_cache(cache, planned, cache_limit_mib):
        images, paths = load_images(paths, what=what)
        if min_side:
            images = [upscale_to(image, min_side) for image in images]
        sizes = [image.shape[1::-1] for image in images]
        how = "decoded into memory"
    else:
        how = "streamed from the files"
    reason = (f"data.cache={cache}" if cache != "auto" else
              f"data.cache=auto: {'at most' if images is not None else 'more than'} "
              f"data.cache_limit_mib={cache_limit_mib:g}")
    note = f"{len(paths)} {what}s, {mib:,.0f} MiB decoded, {how} ({reason})"
    stream = PatchStream(paths, sizes, patch_size, batch_size, patches_per_image, seed, images=images,
                         min_side=None if images is not None else min_side, what=what)
    return stream, note
