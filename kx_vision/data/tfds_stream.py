"""tensorflow-datasets sets as training data: super-resolution's `data.train=tfds:div2k/bicubic_x2:train`,
style transfer's `data.content=tfds:coco/2017:train` (each short side raised to the crop size first, as for
folders: `min_side`).

An entry of `data.train` (`data.content`) that starts with `tfds:` names a set and split
(`kx_vision.data.tfds_source`); its images are each example's `hr` (else `image`) feature.
tensorflow-datasets reads through TensorFlow, so such a set trains on the tf.data pipeline only (either
backend); with `data.pipeline=numpy`, or without
TensorFlow and tensorflow-datasets, `check_pipeline` stops with one `ConfigError` naming the entry.

Memory (`data.cache`, as for folders):

- `always`: every image is decoded into memory and cropped by a `streaming.PatchStream.from_arrays`, so the
  batches are those of a folder holding the same images in the same order.
- `auto`: a tfds set tells its size on disk, not decoded, so the images are decoded in order until their
  decoded size passes `data.cache_limit_mib` (with the folders' images, whose size the headers give): a set
  that fits is kept as with `always`; a larger one is dropped after those few images (for DIV2K, about 16
  of its 800 2K images) and streamed.
- `never`: streamed (`TfdsStream`).

Streaming, pass after pass: the split's files are read in a seeded shuffled order with their images still
encoded, the examples shuffled (seeded per pass) in a buffer of `EXAMPLE_BUFFER` encoded images (about
140 MB of DIV2K's PNGs), each pass visiting every example once (several tfds sets: drawn at random in
proportion to their sizes, each still once per pass); decoded by `streaming.default_decoders()` parallel
calls, with Pillow as folders are (`images.read_image`: the same handling of grayscale, palette, alpha and
16-bit images, and of damaged ones); `data.patches_per_image` random crops and dihedral indices per image, drawn statelessly from
`(seed, pass, position)`; the patches of about `streaming.WINDOW_BATCHES` batches shuffled together;
transformed (`random_dihedral_tf`), batched, degraded (`degrade_tf`) and prefetched. Memory holds the
example buffer, the images being decoded and a few batches of patches, whatever the size of the set.

An image smaller than the patch is found only when decoded: with `data.skip_small` it is skipped, counted
and reported in one line at the end of each epoch (a pass with no image large enough stops the run);
without it, the first one stops the run with a `DataError` naming it (raised inside the input pipeline;
`kx_vision.cli` shows it as one line). An example whose image cannot be decoded is skipped, counted and
reported at the end of the epoch, as a folder stream skips an unreadable file; a pass in which none could
be decoded stops the run.

Folders and tfds sets mix in `data.train` when the whole set is held in memory (`always`, or `auto` when
it fits); a streamed mix stops with one `ConfigError` (convert the tfds set to a folder of PNGs, or train
on one kind). This module imports TensorFlow only when a set is read.
"""

import importlib.util
import re
import threading

import numpy as np

from kx_vision.data import streaming, tf_python, tfds_source
from kx_vision.errors import ConfigError, DataError

# Encoded examples shuffled together in a stream (see the module docstring).
EXAMPLE_BUFFER = 32


def any_tfds(entries):
    """Whether a list of `data.train` / `data.val` entries names a tensorflow-datasets set."""
    return any(tfds_source.is_tfds(entry) for entry in _as_list(entries))


def _as_list(entries):
    return [entries] if isinstance(entries, str) else list(entries)


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return False


def check_pipeline(entries, pipeline, key="data.train"):
    """One `ConfigError` if `entries` name a tfds set that `pipeline` ("tf_data" or "numpy") cannot read."""
    found = [entry for entry in _as_list(entries) if tfds_source.is_tfds(entry)]
    if not found:
        return
    missing = [name for name in ("tensorflow", "tensorflow_datasets") if not _installed(name)]
    if pipeline == "tf_data" and not missing:
        return
    why = f"{' and '.join(missing)} not installed" if missing else "data.pipeline is numpy"
    raise ConfigError(
        f"config key '{key}': {found[0]!r} is a tensorflow-datasets set, which needs TensorFlow and "
        f"tensorflow-datasets installed and data.pipeline=tf_data (or auto) ({why}); or use a folder of images"
    )


def load_images(entries, what="image", default_split="validation", min_size=None, skip_small=False):
    """Decode every image of `entries`, folders and `tfds:` sets (the folders' images first, as
    `kx_vision.data.images.load_images` gives them): `(H, W, 3)` uint8 arrays."""
    from kx_vision.data.images import list_images
    from kx_vision.data.images import load_images as load_files

    entries = _as_list(entries)
    folders = [entry for entry in entries if not tfds_source.is_tfds(entry)]
    images = load_files(list_images(folders), min_size=min_size, what=what, skip_small=skip_small)[0] if folders else []
    for spec in entries:
        if tfds_source.is_tfds(spec):
            images.extend(_tfds_arrays(spec, min_size, skip_small, what, default_split=default_split)[0])
    return images


def _tfds_arrays(spec, min_size, skip_small, what, limit_mib=None, default_split="train", min_side=None):
    """`(images, mib)` of one tfds set decoded in order (smaller than `min_size`: `DataError`, or skipped
    and counted with `skip_small`; with `min_side`, each short side raised to it first, as
    `streaming.upscale_to` does for folders); `(None, mib)` as soon as their decoded size passes `limit_mib`."""
    import warnings

    images, small, mib = [], 0, 0.0
    for index, image in enumerate(tfds_source.tfds_images(spec, default_split=default_split)):
        image = streaming.upscale_to(image, min_side)
        height, width = image.shape[:2]
        if min_size and min(height, width) < min_size:
            if not skip_small:
                raise DataError(f"{what} {index} of {spec} is {width}x{height}, smaller than the {min_size}x"
                                f"{min_size} patch size; lower the patch size or set data.skip_small=true")
            small += 1
            continue
        mib += image.nbytes / 2**20
        if limit_mib is not None and mib > limit_mib:
            return None, mib
        images.append(image)
    if small:
        warnings.warn(f"skipped {small} of {small + len(images)} {what}s of {spec} smaller than the {min_size}x"
                      f"{min_size} patch", stacklevel=3)
    if not images:
        raise DataError(f"no {what} of {spec} is at least {min_size} pixels on its short side")
    return images, mib


def open_stream(entries, patch_size, batch_size, pipeline, patches_per_image=1, seed=0, cache="auto",
                cache_limit_mib=streaming.CACHE_LIMIT_MIB, skip_small=False, what="training image", min_side=None,
                key="data.train", default_split="train"):
    """`streaming.open_stream` for entries of config key `key` that name tfds sets (and perhaps folders): a
    `streaming.PatchStream` over the decoded images where they are held in memory, else a `TfdsStream`
    (see the module docstring). `min_side` raises each image's short side to it first (style transfer's
    content images), so none is too small. `default_split`: the split of an entry that names none.
    Returns `(stream, note)`, `note` one line saying what was decided and why."""
    from kx_vision.data.images import list_images, scan_images
    from kx_vision.data.images import load_images as load_files

    check_pipeline(entries, pipeline, key=key)
    if cache not in streaming.CACHE_MODES:
        raise ValueError(f"cache mode must be one of {streaming.CACHE_MODES}, got {cache!r}")
    entries = _as_list(entries)
    specs = [entry for entry in entries if tfds_source.is_tfds(entry)]
    folders = [entry for entry in entries if not tfds_source.is_tfds(entry)]
    if folders and cache == "never":
        raise _mix_error(folders, specs, "data.cache=never", key)
    paths, sizes = [], []
    if folders:
        paths, sizes = scan_images(list_images(folders), min_size=None if min_side else patch_size, what=what,
                                   skip_small=skip_small)
    mib = streaming.decoded_mib([streaming.upscaled_size(w, h, min_side) for w, h in sizes])
    arrays = []
    if cache != "never":
        for spec in specs:
            limit = None if cache == "always" else cache_limit_mib - mib
            found, spec_mib = _tfds_arrays(spec, patch_size, skip_small, what, limit, default_split, min_side)
            mib += spec_mib
            if found is None:
                arrays = None
                break
            arrays.extend(found)
    reason = (f"data.cache={cache}" if cache != "auto" else
              f"data.cache=auto: {'at most' if arrays is not None else 'more than'} "
              f"data.cache_limit_mib={cache_limit_mib:g}")
    if cache != "never" and arrays is not None:
        files = [streaming.upscale_to(image, min_side) for image in load_files(paths, what=what)[0]] if paths else []
        images = files + arrays
        stream = streaming.PatchStream.from_arrays(images, patch_size, batch_size, patches_per_image, seed,
                                                   what=what)
        note = f"{len(images)} {what}s of {', '.join(entries)}, {mib:,.0f} MiB decoded, in memory ({reason})"
        return stream, note
    if folders:
        raise _mix_error(folders, specs, reason, key)
    stream = TfdsStream(specs, patch_size, batch_size, patches_per_image, seed, skip_small=skip_small, what=what,
                        min_side=min_side, default_split=default_split)
    count = "an unknown number of" if stream.count is None else f"{stream.count}"
    note = f"{count} {what}s of {', '.join(specs)}, streamed from tensorflow-datasets ({reason})"
    return stream, note


def _mix_error(folders, specs, reason, key="data.train"):
    return ConfigError(
        f"config key '{key}' mixes image folders ({folders[0]}) and tensorflow-datasets sets ({specs[0]}), "
        f"which mix only when held in memory, and they are streamed here ({reason}): set data.cache=always "
        "if they fit in memory, else train on one kind (e.g. save the tfds set's images as PNGs in a folder)"
    )


class TfdsStream:
    """The endless, seeded stream of training patches of tensorflow-datasets sets (see the module docstring):
    `dataset(scale)` is its tf.data pipeline of `(lr, hr)` batches.

    Args:
        specs: `tfds:NAME[/CONFIG][:SPLIT]` strings (split `train` where none is given).
        patch_size, batch_size, patches_per_image, seed: as `streaming.PatchStream`'s.
        skip_small: skip (counted, reported per epoch) images smaller than the patch, instead of stopping.
        what: words for messages ("training image").
    """

    cached = False

    def __init__(self, specs, patch_size, batch_size, patches_per_image=1, seed=0, skip_small=False,
                 what="training image", min_side=None, default_split="train"):
        if not specs:
            raise DataError(f"no {what} to train on")
        self.specs = list(specs)
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.patches_per_image, self.seed = int(patches_per_image), int(seed)
        self.skip_small, self.what = bool(skip_small), what
        self.min_side, self.default_split = min_side, default_split
        self.sources = [self._open(spec) for spec in self.specs]  # (dataset, image key, has tfds_id, count)
        self.decodes = 0  # images decoded so far
        self._lock = threading.Lock()
        self._pass, self._kept_in_pass = None, 0
        self._small, self._reported, self._first_small = 0, 0, None
        self._seen_in_pass, self._unreadable_in_pass = 0, 0
        self._unreadable, self._unreadable_reported, self._first_unreadable = 0, 0, None

    def _open(self, spec):
        name, split = tfds_source.parse(spec, default_split=self.default_split)
        dataset = tfds_source.load(name, split, stream_seed=self.seed)
        features = dataset.element_spec
        key = next((k for k in tfds_source.IMAGE_FEATURES if k in features), None)
        if key is None:
            raise DataError(f"tfds set {name!r} has no 'hr' or 'image' feature: {sorted(features)}")
        count = int(dataset.cardinality())
        if count == 0 or (count < 0 and not any(True for _ in dataset.take(1))):
            raise DataError(f"tfds set {name!r} split {split!r} is empty")
        return dataset, key, "tfds_id" in features, count if count > 0 else None

    @property
    def count(self):
        """Images in the sets (from their split metadata), or None where a set does not say."""
        counts = [count for *_, count in self.sources]
        return None if None in counts else sum(counts)

    # --- what the pipeline reports ---

    def _decode(self, data, name):
        """Decode one example's encoded image with Pillow, as folders are read (`images.read_image`), its short
        side raised to `min_side`: `(H, W, 3)` uint8, or `(0, 0, 3)` where it cannot be decoded (counted and
        reported at the end of the epoch, as a folder stream skips an unreadable file)."""
        import io

        from kx_vision.data.images import read_image

        try:
            return streaming.upscale_to(read_image(io.BytesIO(data))[0], self.min_side)
        except DataError as error:
            name = name.decode() if isinstance(name, bytes) else str(name)
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its image", str(error.__cause__ or error))
            message = f"{name}: {reason}"
            with self._lock:
                self._unreadable += 1
                self._first_unreadable = self._first_unreadable or message
            return np.zeros((0, 0, 3), np.uint8)

    def _keep(self, pass_index, height, width, name):
        """Called in order for every example: whether it was decoded and is large enough to crop."""
        pass_index, height, width = int(pass_index), int(height), int(width)
        size = self.patch_size
        with self._lock:
            if pass_index != self._pass:
                if self._pass is not None and not self._kept_in_pass:
                    if self._unreadable and self._seen_in_pass == self._unreadable_in_pass:
                        raise DataError(f"none of the {self._seen_in_pass} {self.what}s of {', '.join(self.specs)} "
                                        f"could be decoded (first: {self._first_unreadable})")
                    raise DataError(f"no {self.what} of {', '.join(self.specs)} is at least {size} pixels on "
                                    "its short side")
                self._pass, self._kept_in_pass = pass_index, 0
                self._seen_in_pass, self._unreadable_in_pass = 0, 0
            self._seen_in_pass += 1
            if height == 0:  # could not be decoded: counted by _decode
                self._unreadable_in_pass += 1
                return False
            self.decodes += 1
            if min(height, width) >= size:
                self._kept_in_pass += 1
                return True
            name = name.decode() if isinstance(name, bytes) else str(name)
            message = f"{self.what} {name} is {width}x{height}, smaller than the {size}x{size} patch size"
            if not self.skip_small:
                raise DataError(f"{message}; lower data.patch_size or set data.skip_small=true to skip such images")
            self._small += 1
            self._first_small = self._first_small or message
            return False

    @property
    def small(self):
        """Images skipped so far for being smaller than the patch (each time a pass met them)."""
        with self._lock:
            return self._small

    def report(self, when="this epoch"):
        """Print one warning line about the images skipped as too small since the last report; returns how
        many there were."""
        with self._lock:
            found, total, self._reported = self._small - self._reported, self._small, self._small
            first = self._first_small
            bad, bad_total = self._unreadable - self._unreadable_reported, self._unreadable
            self._unreadable_reported, first_bad = self._unreadable, self._first_unreadable
        if found:
            print(f"warning: skipped {found} {self.what}(s) {when} smaller than the {self.patch_size}x"
                  f"{self.patch_size} patch ({total} so far), first: {first}", flush=True)
        if bad:
            print(f"warning: skipped {bad} {self.what}(s) {when} that could not be decoded ({bad_total} so far), "
                  f"first: {first_bad}", flush=True)
        return found + bad

    @property
    def unreadable(self):
        """Examples skipped so far because their image could not be decoded (each time a pass met them)."""
        with self._lock:
            return self._unreadable

    def close(self):
        """Nothing to stop: tf.data owns the threads."""

    def __repr__(self):
        return (f"TfdsStream({', '.join(self.specs)}, patch {self.patch_size}, batch {self.batch_size}, "
                f"{self.patches_per_image} per image)")

    # --- the pipeline ---

    def examples(self):
        """The endless `tf.data.Dataset` of `(pass, position, encoded image, name)`: each pass visits every
        example of every set once, shuffled with a seed of its own."""
        import tensorflow as tf

        def encoded(key, has_id, spec):
            def pick(example):
                image = example[key]
                if image.dtype != tf.string:  # decoded arrays (mock data): one decode path for every source
                    image = tf.io.encode_png(image if image.shape.rank == 3 else image[..., None])
                name = tf.strings.join([f"{spec} example ", example["tfds_id"]]) if has_id else tf.constant(spec)
                return image, name

            return pick

        sources = [dataset.map(encoded(key, has_id, spec)) for spec, (dataset, key, has_id, _) in
                   zip(self.specs, self.sources)]
        counts = [count for *_, count in self.sources]
        weights = None if None in counts else [count / sum(counts) for count in counts]

        # Shuffled afresh each time a pass iterates them (their seed generators live outside the passes).
        parts = [source.shuffle(EXAMPLE_BUFFER, seed=self.seed + i, reshuffle_each_iteration=True)
                 for i, source in enumerate(sources)]
        mixed = parts[0] if len(parts) == 1 else tf.data.Dataset.sample_from_datasets(
            parts, weights, seed=self.seed, stop_on_empty_dataset=False)

        def one_pass(pass_index):
            return mixed.enumerate().map(lambda position, example: (pass_index, position, *example))

        return tf.data.Dataset.counter().flat_map(one_pass)

    def tf_patches(self):
        """The endless `tf.data.Dataset` of `(patch, dihedral index)`: uint8 `(P, P, 3)` crops, shuffled."""
        import tensorflow as tf

        size, count = self.patch_size, self.patches_per_image

        def decode(pass_index, position, data, name):
            image = tf_python.numpy_function(self._decode, [data, name], tf.uint8)
            return pass_index, position, tf.ensure_shape(image, [None, None, 3]), name

        def keep(pass_index, position, image, name):
            shape = tf.shape(image)
            kept = tf_python.numpy_function(self._keep, [pass_index, shape[0], shape[1], name], tf.bool)
            return tf.ensure_shape(kept, [])

        def crop(pass_index, position, image, name):
            key = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 1], tf.int64), pass_index)
            key = tf.random.experimental.stateless_fold_in(key, position)
            shape = tf.shape(image)

            def draw(part, high):
                part_key = tf.random.experimental.stateless_fold_in(key, part)
                return tf.random.stateless_uniform([count], part_key, minval=0, maxval=high, dtype=tf.int32)

            tops, lefts = draw(0, shape[0] - size + 1), draw(1, shape[1] - size + 1)
            patches = tf.stack([image[tops[i] : tops[i] + size, lefts[i] : lefts[i] + size] for i in range(count)])
            return tf.ensure_shape(patches, [count, size, size, 3]), draw(2, 8)

        return (
            self.examples()
            .map(decode, num_parallel_calls=streaming.default_decoders(), deterministic=True)
            .filter(keep)  # in order, so the count of each pass is exact
            .map(crop, num_parallel_calls=streaming.default_decoders(), deterministic=True)
            .unbatch()
            .shuffle(streaming.WINDOW_BATCHES * self.batch_size, seed=self.seed)
        )

    def dataset(self, scale, augment=True, steps_per_epoch=None):
        """An endless `tf.data.Dataset` of `(lr, hr)` float32 batches in [0, 1]: the patches of
        `tf_patches()` made into pairs as `kx_vision.data.superres.stream_dataset` makes those of a
        `PatchStream` (with `steps_per_epoch`, the images skipped as too small are reported at the end of
        each epoch of that many batches)."""
        from kx_vision.data.superres import stream_dataset

        return stream_dataset(self, scale, augment=augment, steps_per_epoch=steps_per_epoch)
