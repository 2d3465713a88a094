"""The streaming and caching core of every training pipeline: items of a `kx_vision.data.sources.Source`
decoded by worker threads (`Items`), made into a stream of training patches (`PatchStream`) or read whole
(segmentation pairs: `kx_vision.data.masks.PairReader`, `kx_vision.data.segmentation`).

Memory does not grow with the number of images. The items are listed (folders: their headers read, nothing
decoded); then, pass after pass over them:

- each pass visits every item once, in an order shuffled per pass (seeded by `(seed, pass)`; a sequential
  source, a tensorflow-datasets set, in its own seeded order): images are drawn uniformly, as EDSR samples
  (not weighted by area), without replacement within a pass;
- an image is decoded by a worker thread (Pillow releases the GIL while it decodes) and gives
  `patches_per_image` random crops (BasicSR's sub-images without the preparation step: decoding a 2K
  PNG for one 48 px patch is wasteful) and a dihedral index (0-7) for each, all drawn from
  `numpy.random.default_rng((seed, 1, pass, position))`; the decoded image is then dropped;
- the patches of a *window* of consecutive images (about `WINDOW_BATCHES` batches of patches) are
  shuffled together (`default_rng((seed, 2, pass, window))`), so the patches of one image spread over several
  batches; windows never straddle a pass;
- batch `g` of the stream is patches `g * batch_size` to `(g + 1) * batch_size`.

The stream of a source read by index is a pure function of the seed and the files: any batch can be computed
alone, in any order, by any thread, which is what a `keras.utils.PyDataset` asks for; the tf.data pipeline
reads the same windows in order, so both pipelines make the same batches (they differ only in how the LR input
is rounded: see `kx_vision.data.arrays`). A window's images are decoded in parallel when it is first asked
for, and the next window starts at the same time, so decoding overlaps training; a few windows are kept for
batches that straddle two. Memory holds those windows' patches and one decoded image per decoding thread,
whatever the number of files. A sequential source is read window after window, in order (tf.data only); a new
reader goes on where the last one stopped.

With the items held in memory (`data.cache`: an `ArraySource`), the same plan crops the decoded arrays instead
of files: caching changes the speed, not the batches.

What cannot be used is skipped and goes to the stream's one `kx_vision.data.skips.SkipLog`: a file that cannot
be decoded in the middle of a stream (damaged after its header) is remembered (never read again) and its
patches come from the next readable image of the pass; an image of a sequential source that cannot be decoded,
or (with `skip_small`) is smaller than the patch, is left out. `report()`, called by the pipelines at the end
of each epoch, warns in one line per kind about what the epoch skipped.
"""

import collections
import concurrent.futures
import itertools
import math
import os
import threading
import weakref
from typing import NamedTuple

import numpy as np

from kx_vision.data import default_workers, sources
from kx_vision.data.definitions import NUM_DIHEDRAL
from kx_vision.data.skips import SkipLog
from kx_vision.data.sources import ArraySource, FolderSource
from kx_vision.errors import ConfigError, DataError

# The patches of about this many batches are shuffled together (see the module docstring).
WINDOW_BATCHES = 8
# Windows kept decoded (as patches) for batches that straddle two, and for the one decoded ahead.
KEPT_WINDOWS = 4
# Items `Items.probe` reads at most, looking for one that can be used, before it calls the data set wrong.
PROBED_ITEMS = 8
_END = object()


class Items:
    """The items of a `Source`, decoded when asked for (by the caller, or ahead by `workers` threads), an
    unusable one (its `DataError`) skipped through `log` and never decoded again, kept in memory once decoded
    when `cache` is on. Thread-safe."""

    def __init__(self, source, cache=False, workers=None, log=None):
        self.source, self.cache = source, bool(cache)
        self.workers = workers or default_workers()
        self.log = log or SkipLog(source.what, source.count)
        self.decodes = 0  # items decoded so far
        self._cached = {}
        self._lock = threading.Lock()
        self._pool = None

    def __len__(self):
        return self.source.count

    def read(self, key):
        """The decoded item `key`, or None if it cannot be used (skipped, counted in this pass)."""
        item, error = self.attempt(key)
        if error is not None:
            self.log.skip(self.source.name(key), error, self.source.skip_kind)
        return item

    def attempt(self, key):
        """`(item, None)`, or `(None, message)` where item `key` cannot be used (for the caller to log:
        `read` does), or `(None, None)` for an item known to be unusable (counted again)."""
        if self.source.in_memory:  # a lookup, which cannot fail
            with self._lock:
                self.decodes += 1
            return self.source.decode(key), None
        if self.cache:
            found = self._cached.get(key)
            if found is not None:
                return found, None
        # A sequential source's names need not differ (nor is an item read twice in a pass).
        if not self.source.sequential and self.log.known(self.source.name(key)):
            return None, None
        try:
            item = self.source.decode(key)
        except DataError as error:  # unreadable, truncated, beyond the decompression-bomb limit, a wrong mask
            return None, str(error)
        with self._lock:
            self.decodes += 1
        if self.cache:
            self._cached[key] = item
        return item, None

    def read_or_replace(self, index, rng):
        """`read(index)`, or if that item cannot be used, another drawn with `rng` (a NumPy `Generator`)."""
        item = self.read(index)
        while item is None:
            if len(self.log.skipped) >= self.source.count:
                raise DataError(f"none of the {self.source.count} {self.source.what}s can be used "
                                f"(first: {self.log.first()})")
            item = self.read(int(rng.integers(self.source.count)))
        return item

    def probe(self, count=PROBED_ITEMS):
        """Read items from the first until one can be used; `DataError` with the first failure if the first
        `count` (or all) cannot: the data set, not one file, is wrong."""
        keys = list(itertools.islice(self.source.keys(None), count))
        with self.log.muted():  # the failures are warned about below, once the set is known to be usable
            usable = any(self.read(key) is not None for key in keys)
        if usable:
            self.log.restart()
            return
        total, what = self.source.count, self.source.what
        first = f"none of the {len(keys)} {what}s" if total == len(keys) else \
            f"none of the first {len(keys)}{'' if total is None else f' of {total}'} {what}s"
        raise DataError(f"{first} can be used; the first: {self.log.first()}")

    def end_pass(self, label="this epoch"):
        """Report (one warning per kind) what was skipped since the last call; how many items that was."""
        return self.log.report(label)

    def submit(self, function, *args):
        """Run `function(*args)` in a worker thread: a `Future`."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="kx_decode")
            pool = self._pool
        return pool.submit(function, *args)

    def _decoded(self, keys, ahead=None):
        """`(position, key, item or None)` for `keys` in order, read `ahead` items ahead by the worker threads."""
        keys, pending = iter(keys), collections.deque()
        for _ in range(ahead or 2 * self.workers):
            key = next(keys, _END)
            if key is _END:
                break
            pending.append((key, self.submit(self.read, key)))
        position = 0
        while pending:
            key, future = pending.popleft()
            following = next(keys, _END)
            if following is not _END:
                pending.append((following, self.submit(self.read, following)))
            yield position, key, future.result()
            position += 1

    def stream(self, keys, rng=None):
        """Yield `(position, item)` for `keys` in order, decoded ahead by the worker threads. An item that cannot
        be used is left out; with `rng`, replaced so that a pass keeps its length (by another drawn with `rng`;
        from a sequential source, by the previous usable item)."""
        last, owed = None, []
        for position, _, item in self._decoded(keys):
            if item is None and rng is not None:
                if not self.source.sequential:
                    item = self.read_or_replace(int(rng.integers(self.source.count)), rng)
                elif last is not None:
                    item = last
                else:
                    owed.append(position)
                    continue
            if item is None:
                continue
            for earlier in owed:
                yield earlier, item
            owed, last = [], item
            yield position, item
        if owed:
            raise DataError(f"none of the {len(owed)} {self.source.what}s of a pass can be used (first: "
                            f"{self.log.first()})")

    def decode_all(self, limit_mib=None, check=None):
        """Every usable item in the source's stored order, decoded by the worker threads: `(names, items, mib)`,
        or None as soon as their decoded size passes `limit_mib`. `check(name, item)`: False leaves an item out
        (or it raises)."""
        names, items, mib = [], [], 0.0
        # Under a limit, one item at a time: decoding ahead would read past it.
        for _, key, item in self._decoded(self.source.keys(None), ahead=1 if limit_mib is not None else None):
            if item is None or (check is not None and not check(self.source.name(key), item)):
                continue
            mib += sources.item_mib(item)
            if limit_mib is not None and mib > limit_mib:
                return None
            names.append(self.source.name(key))
            items.append(item)
        return names, items, mib

    def close(self):
        """Stop the worker threads (a new request starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def too_small(what, name, width, height, size):
    """The `DataError` of an image found smaller than the patch only when decoded."""
    return DataError(f"{what} {name} is {width}x{height}, smaller than the {size}x{size} patch size; lower "
                     "data.patch_size or set data.skip_small=true to skip such images")


class PatchStream:
    """The endless, seeded stream of training patches of a `Source` (see the module docstring).

    Args:
        source: the images (`kx_vision.data.sources`); each (after any `min_side`) at least the patch.
        patch_size: side of the square patches.
        batch_size: patches per batch.
        patches_per_image: crops taken from each decoded image.
        seed: seed of the order, crops, transforms and shuffles.
        skip_small: skip (counted, reported per epoch) images that decoding finds smaller than the patch,
            instead of stopping (sources whose sizes only decoding tells).
        workers: threads decoding images (default: `kx_vision.data.default_workers()`).
    """

    def __init__(self, source, patch_size, batch_size, patches_per_image=1, seed=0, skip_small=False,
                 workers=None):
        self.source, self.what = source, source.what
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.patches_per_image, self.seed, self.skip_small = int(patches_per_image), int(seed), bool(skip_small)
        count, self.sizes = source.count, source.sizes
        if not source.sequential and not count:
            raise DataError(f"no {self.what} to train on")
        small = [i for i, (w, h) in enumerate(self.sizes or []) if min(w, h) < self.patch_size]
        if small:
            raise DataError(f"{self.what} {source.name(small[0])} is smaller than the {self.patch_size}x"
                            f"{self.patch_size} patch size ({len(small)} such image(s))")
        self.items = Items(source, workers=workers, log=SkipLog(self.what, count, patch=self.patch_size))
        # Images per window: about WINDOW_BATCHES batches of patches, and never more than a pass.
        wanted = max(1, math.ceil(WINDOW_BATCHES * self.batch_size / self.patches_per_image))
        self.window_images = min(count, wanted) if count else wanted
        if not source.sequential:
            self.windows_per_pass = math.ceil(count / self.window_images)
            self.patches_per_pass = count * self.patches_per_image
        self._lock = threading.Lock()
        self._windows = collections.OrderedDict()  # window id -> _Window
        self._orders = collections.OrderedDict()  # pass -> permutation
        self._reader = _SequentialReader(self) if source.sequential else None

    @classmethod
    def from_arrays(cls, images, patch_size, batch_size, patches_per_image=1, seed=0, min_side=None,
                    what="image"):
        """A stream over decoded images held in memory (names `<image i>` in messages)."""
        from kx_vision.data.sources import upscale_to

        images = [upscale_to(image, min_side) for image in images] if min_side else images
        return cls(ArraySource(images, what=what), patch_size, batch_size, patches_per_image, seed)

    @property
    def cached(self):
        """Whether patches are cropped from decoded images held in memory."""
        return self.source.in_memory

    @property
    def images(self):
        """The decoded images held in memory, or None."""
        return self.source.items if self.source.in_memory else None

    @property
    def decodes(self):
        """Images decoded (or looked up in memory) so far."""
        return self.items.decodes

    def __len__(self):
        return self.source.count

    # --- the plan ---

    def order(self, pass_index):
        """The permutation of the images visited by pass `pass_index`."""
        with self._lock:
            order = self._orders.get(pass_index)
            if order is None:
                order = np.random.default_rng((self.seed, 0, pass_index)).permutation(self.source.count)
                self._orders[pass_index] = order
                while len(self._orders) > 4:
                    self._orders.popitem(last=False)
            return order

    def window_span(self, window_id):
        """`(pass, first, stop)`: window `window_id` holds the images at positions `first:stop` of its pass."""
        pass_index, window = divmod(int(window_id), self.windows_per_pass)
        first = window * self.window_images
        return pass_index, first, min(first + self.window_images, self.source.count)

    def batch(self, index):
        """Batch `index` of the stream: `(patches, dihedral)`, uint8 `(batch_size, P, P, 3)` patches as
        cropped (not yet transformed) and the index (0-7) of the dihedral transform each is to get."""
        return self.patches(int(index) * self.batch_size, self.batch_size)

    def patches(self, start, count):
        """Patches `start:start + count` of the stream, as `batch` returns them (not for a sequential source)."""
        if self.source.sequential:
            raise DataError(f"{self.what}s of a sequential source are read in order, by tf.data only")
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
            if prefetch and not self.source.in_memory and window_id + 1 not in self._windows:
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

    def resume(self):
        """The window a new reader starts at: 0 (any window can be made again), or for a sequential source the
        first one not yet taken (those taken ahead of a reader that stopped are dropped)."""
        return 0 if self._reader is None else self._reader.resume()

    # --- decoding ---

    def _start(self, window_id):
        """`(pass, window of the pass, jobs)`: the jobs making window `window_id`'s patches."""
        if self._reader is not None:
            return self._reader.start(window_id)
        pass_index, first, stop = self.window_span(window_id)
        if self.source.in_memory:  # cropping from memory: cheaper than handing the work to a thread
            jobs = [_Done(self._image_patches(pass_index, position)) for position in range(first, stop)]
        else:
            jobs = [self.items.submit(self._image_patches, pass_index, position) for position in range(first, stop)]
        return pass_index, window_id % self.windows_per_pass, jobs

    def _image_patches(self, pass_index, position):
        """The crops of the image at `position` of pass `pass_index` (or, if that file cannot be decoded,
        of the next readable one of the pass), with their dihedral indices."""
        order = self.order(pass_index)
        count = len(order)
        rng = np.random.default_rng((self.seed, 1, pass_index, position))
        for step in range(count):
            index = int(order[(position + step) % count])
            image = self.items.read(index)
            if image is not None:
                return self._crop(image, index, rng)
        raise DataError(f"none of the {count} {self.what} files could be read (first: {self.source.name(0)}: "
                        f"{self.items.log.skipped.get(self.source.name(0), '')})")

    def _crop(self, image, key, rng):
        """`(patches, dihedral)` of `image`; where it is smaller than the patch, a `DataError`, or (only decoding
        told its size, `skip_small`) a `_Skip`."""
        size, count = self.patch_size, self.patches_per_image
        height, width = image.shape[:2]
        if min(height, width) < size:
            name = self.source.name(key)
            if self.sizes is not None:  # the header said otherwise: the file changed since it was listed
                raise DataError(f"{self.what} {name} is {width}x{height}, smaller than the {size}x{size} patch "
                                "size; remove it or lower the patch size")
            error = too_small(self.what, name, width, height, size)
            if not self.skip_small:
                raise error
            return _Skip(name, str(error).partition(";")[0], "small")
        tops = rng.integers(height - size + 1, size=count)
        lefts = rng.integers(width - size + 1, size=count)
        dihedral = rng.integers(NUM_DIHEDRAL, size=count).astype(np.int32)
        patches = np.stack([image[top : top + size, left : left + size] for top, left in zip(tops, lefts)])
        return patches, dihedral

    def _assemble(self, pass_index, number, results):
        """The patches of a window's images, shuffled together; what was skipped (`_Skip`) logged in order."""
        parts = []
        for result in results:
            if isinstance(result, _Skip):
                self.items.log.skip(*result)
            else:
                parts.append(result)
        if not parts:
            size = self.patch_size
            return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int32)
        patches = np.concatenate([p for p, _ in parts])
        dihedral = np.concatenate([k for _, k in parts])
        if len(patches) > 1:
            permutation = np.random.default_rng((self.seed, 2, pass_index, number)).permutation(len(patches))
            patches, dihedral = patches[permutation], dihedral[permutation]
        return patches, dihedral

    # --- what was skipped ---

    @property
    def skipped(self):
        """`{name: message}` of the images skipped so far."""
        return self.items.log.skipped

    @property
    def small(self):
        """Times images were skipped for being smaller than the patch (each pass that met them)."""
        return self.items.log.events("small")

    @property
    def unreadable(self):
        """Times images were skipped because they could not be decoded (each pass that met them)."""
        return self.items.log.events("unreadable", "undecodable")

    def report(self, when="this epoch"):
        """Warn (one line per kind) about what was skipped since the last report; returns how many images."""
        return self.items.log.report(when)

    def close(self):
        """Stop the decoding threads (a new request starts them again)."""
        with self._lock:
            self._windows.clear()
        if self._reader is not None:
            self._reader.resume()
        self.items.close()

    def __repr__(self):
        count = "?" if self.source.count is None else self.source.count
        return (f"PatchStream({count} images, {'cached' if self.cached else 'streamed'}, "
                f"patch {self.patch_size}, batch {self.batch_size}, {self.patches_per_image} per image)")


class _Skip(NamedTuple):
    """An image a window left out, logged when the window is assembled (in the order of the pass)."""

    name: str
    message: str
    kind: str


class _Done:
    """A job already done (a crop from memory)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Window:
    """One window: its image jobs (started by `start`), assembled once into shuffled patches."""

    def __init__(self, stream, window_id):
        self.stream, self.window_id = stream, window_id
        self.jobs, self.value = None, None
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            if self.jobs is None and self.value is None:
                self.pass_index, self.number, self.jobs = self.stream._start(self.window_id)

    def result(self):
        self.start()
        with self.lock:
            if self.value is None:
                results = [job.result() for job in self.jobs]
                self.value = self.stream._assemble(self.pass_index, self.number, results)
                self.jobs = None
                if self.stream._reader is not None:
                    self.stream._reader.done(self.pass_index, len(self.value[0]))
            return self.value


class _SequentialReader:
    """Windows of a sequential source, assigned its examples in window order (tf.data asks for them in order,
    a few at a time) from one pass after another; a pass from which no patch came stops the stream."""

    def __init__(self, stream):
        self.stream = weakref.proxy(stream)  # no cycle: the stream, and the set iterator held here, go when unused
        self.lock = threading.Lock()
        self.next_window, self.assigned = 0, {}  # window id -> (pass, number, jobs), started ahead of its turn
        self.pass_index, self.keys, self.position, self.number = -1, None, 0, 0
        self.passes = {}  # pass -> [windows, windows done, patches, ended, images]

    def resume(self):
        with self.lock:
            self.assigned.clear()
            return self.next_window

    def start(self, window_id):
        with self.lock:
            while self.next_window <= window_id:
                self.assigned[self.next_window] = self._next()
                self.next_window += 1
            return self.assigned.pop(window_id)

    def _next(self):
        stream = self.stream
        while True:
            if self.keys is None:
                self.pass_index += 1
                self.keys, self.position, self.number = iter(stream.source.keys(self.pass_index)), 0, 0
                self.passes[self.pass_index] = [0, 0, 0, False, 0]
            pass_index, tally = self.pass_index, self.passes[self.pass_index]
            keys = list(itertools.islice(self.keys, stream.window_images))
            tally[4] += len(keys)
            if keys:
                jobs = [stream.items.submit(self._patches, pass_index, self.position + i, key)
                        for i, key in enumerate(keys)]
                self.position += len(keys)
                self.number += 1
                tally[0] += 1
            if len(keys) < stream.window_images:  # the end of the pass
                self.keys, tally[3] = None, True
                if not tally[0]:
                    raise DataError(f"{stream.source.description} has no {stream.what}")
                self._check(pass_index)
            if keys:
                return pass_index, self.number - 1, jobs

    def _patches(self, pass_index, position, key):
        stream = self.stream
        image, error = stream.items.attempt(key)
        if image is None:
            return _Skip(stream.source.name(key), error, stream.source.skip_kind)
        return stream._crop(image, key, np.random.default_rng((stream.seed, 1, pass_index, position)))

    def done(self, pass_index, patches):
        with self.lock:
            tally = self.passes[pass_index]
            tally[1] += 1
            tally[2] += patches
            self._check(pass_index)

    def _check(self, pass_index):
        """At the end of a pass: a `DataError` if none of its images gave patches."""
        windows, done, patches, ended, images = self.passes[pass_index]
        if not (ended and done == windows):
            return
        del self.passes[pass_index]
        if patches:
            return
        stream = self.stream
        log = stream.items.log
        if log.events("small") == 0 and log.events("undecodable"):
            raise DataError(f"none of the {images} {stream.what}s of {stream.source.description} could be decoded "
                            f"(first: {log.first()})")
        raise DataError(f"no {stream.what} of {stream.source.description} is at least {stream.patch_size} pixels "
                        "on its short side")


def open_stream(entries, patch_size, batch_size, patches_per_image=1, seed=0, cache="auto",
                cache_limit_mib=sources.CACHE_LIMIT_MIB,
                min_side=None, skip_small=False, what="training image", pipeline="tf_data", key="data.train",
                default_split="train"):
    """A `PatchStream` over the images of config key `key`'s `entries`: image folders (listed, their headers
    read: unreadable ones skipped with a warning; one smaller than the patch refused, or skipped with
    `skip_small`) and tensorflow-datasets sets (`tfds:NAME[/CONFIG][:SPLIT]`, `default_split` where none is
    named; tf.data only: `pipeline`). Held in memory (decoded first) where `data.cache=cache` says so, else
    decoded as the stream goes (see `hold`). `min_side` raises each image's short side to it first (style
    transfer's content images), so none is too small. Folders and tfds sets mix only when held in memory.

    Returns `(stream, note)`, `note` one line saying what was decided and why."""
    from kx_vision.data import tfds_source

    entries = [entries] if isinstance(entries, (str, os.PathLike)) else list(entries)
    tfds_source.check_pipeline(entries, pipeline, key=key)
    sources.check_cache_mode(cache)
    specs = [entry for entry in entries if tfds_source.is_tfds(entry)]
    folders = [entry for entry in entries if not tfds_source.is_tfds(entry)]
    if folders and specs and cache == "never":
        raise _mix_error(folders, specs, sources.cache_reason(cache, False, cache_limit_mib), key)
    parts = []
    if folders:
        parts.append(FolderSource.scan(folders, patch_size, min_side, skip_small, what))
    if specs:
        parts.append(tfds_source.TfdsSource(specs, what, seed, min_side=min_side, default_split=default_split))
    source, mib = hold(parts, cache, cache_limit_mib, min_size=patch_size, skip_small=skip_small)
    reason = sources.cache_reason(cache, source.in_memory, cache_limit_mib)
    stream = PatchStream(source, patch_size, batch_size, patches_per_image, seed, skip_small=skip_small)
    if source.in_memory:
        where = "decoded into memory" if not specs else "in memory"
        named = f" of {', '.join(entries)}" if specs else ""
        return stream, f"{source.count} {what}s{named}, {mib:,.0f} MiB decoded, {where} ({reason})"
    if len(parts) > 1:
        raise _mix_error(folders, specs, reason, key)
    if source.sequential:
        count = "an unknown number of" if source.count is None else f"{source.count}"
        return stream, f"{count} {what}s of {', '.join(specs)}, streamed from tensorflow-datasets ({reason})"
    return stream, f"{source.count} {what}s, {mib:,.0f} MiB decoded, streamed from the files ({reason})"


def hold(parts, cache, limit_mib, min_size=None, skip_small=False, channels=3):
    """The one cache decision: `(source, mib)`, the sources `parts` decoded into one `ArraySource` where `data.cache`
    says so (`always`; `auto`: when they take at most `limit_mib` decoded, `channels` bytes a pixel), else the
    source itself (several: the first, the caller refuses the mix). A source's sizes come from its headers;
    where only decoding tells (tfds sets), its items are decoded in order until they pass what is left of
    the limit. `min_size` / `skip_small`: an item decoded here smaller than `min_size` stops with a `DataError`,
    or is skipped and counted."""
    sizes = [size for source in parts if source.sizes is not None for size in source.sizes]
    mib = sources.decoded_mib(sizes, channels)
    if not sources.use_cache(cache, sizes, limit_mib, channels):
        return parts[0], mib
    names, items, first = [], [], None
    for source in parts:
        limit = None if cache == "always" or source.sizes is not None else limit_mib - mib
        log = SkipLog(source.what, source.count, patch=min_size)
        reader = Items(source, log=log)
        try:
            found = reader.decode_all(limit, _size_check(log, min_size, skip_small))
        finally:
            reader.close()
        if found is None:
            return parts[0], mib
        log.report("while loading them")
        first = first or log.first()
        names += found[0]
        items += found[1]
        mib += found[2] if source.sizes is None else 0
    if not items:
        what = parts[0].what
        raise DataError(f"none of the {what}s can be used; the first: {first}" if first else
                        f"no {what} is at least {min_size} pixels on its short side")
    return ArraySource(items, names, what=parts[0].what), mib


def _size_check(log, min_size, skip_small):
    def check(name, item):
        image = item[0] if isinstance(item, tuple) else item
        height, width = image.shape[:2]
        if not min_size or min(height, width) >= min_size:
            return True
        error = too_small(log.what, name, width, height, min_size)
        if not skip_small:
            raise error
        log.skip(name, str(error).partition(";")[0], "small")
        return False

    return check


def _mix_error(folders, specs, reason, key="data.train"):
    return ConfigError(
        f"config key '{key}' mixes image folders ({folders[0]}) and tensorflow-datasets sets ({specs[0]}), "
        f"which mix only when held in memory, and they are streamed here ({reason}): set data.cache=always "
        "if they fit in memory, else train on one kind (e.g. save the tfds set's images as PNGs in a folder)"
    )
