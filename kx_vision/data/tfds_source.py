"""tensorflow-datasets sets as image sources: `tfds:NAME[/CONFIG][:SPLIT]` where a folder is accepted.

`tfds:div2k/bicubic_x2:train` is DIV2K's training split; an image is the example's `hr` feature where it
has one (the super-resolution sets: DIV2K's `lr` is a degradation made otherwise than ours), else its
`image` feature. Images come out as `(H, W, 3)` uint8 RGB arrays, as the folder readers give them
(grayscale repeated to RGB, an alpha channel dropped, 16-bit scaled to 8 bits).

Training sets stream through `TfdsSource`, the tfds implementation of `kx_vision.data.sources.Source`
(`data.train=tfds:div2k/bicubic_x2:train`, `data.content=tfds:coco/2017:train`, segmentation's
`data.train_images=tfds:oxford_iiit_pet:train` with the set's masks): pass after pass, the split's files are
read in a seeded shuffled order with their images still encoded, the examples shuffled (seeded, afresh each
pass) in a buffer of `EXAMPLE_BUFFER` encoded examples (about 140 MB of DIV2K's PNGs), each pass visiting every
example once (several sets: drawn at random in proportion to their sizes, each still once per pass); the
streaming core (`kx_vision.data.streaming`) decodes them in its worker threads with Pillow, as folders are read
(`images.read_image`: the same handling of grayscale, palette, alpha and 16-bit images, and of damaged ones).
Its sizes are known only once decoded: an image smaller than the patch is found then (`data.skip_small`).

tensorflow-datasets reads through TensorFlow, so such a set trains on the tf.data pipeline only (either
backend); with `data.pipeline=numpy`, or without TensorFlow and tensorflow-datasets, `check_pipeline` stops with
one `ConfigError` naming the config key (convert the set to a folder of PNGs once where TensorFlow is installed).
Nothing is downloaded here that was not already prepared: offline, prepare the set once where there is network
(`tfds build`, or any `tfds.load`) and copy `~/tensorflow_datasets`. This module imports TensorFlow only when a set
is read.
"""

import importlib.util
import io
import os
import re
from typing import NamedTuple

import numpy as np

from kx_vision.errors import ConfigError, DataError

PREFIX = "tfds:"
IMAGE_FEATURES = ("hr", "image")
MASK_FEATURES = ("segmentation_mask", "mask")
# Encoded examples shuffled together in a stream (see the module docstring).
EXAMPLE_BUFFER = 32


def is_tfds(spec):
    """Whether `spec` (a string from a config or the command line) names a tensorflow-datasets set."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec, default_split="train"):
    """`"tfds:div2k/bicubic_x2:train"` -> `("div2k/bicubic_x2", "train")`; the split defaults to
    `default_split`. Splits may be tfds slices (`train[:10%]`)."""
    if not is_tfds(spec):
        raise DataError(f"not a tensorflow-datasets source (tfds:NAME[:SPLIT]): {spec!r}")
    name, _, split = spec[len(PREFIX) :].partition(":")
    if not name:
        raise DataError(f"{spec!r} names no data set; write tfds:NAME[/CONFIG][:SPLIT], e.g. tfds:div2k/bicubic_x2:train")
    return name, split or default_split


def load(name, split, stream_seed=None, encoded=False):
    """The `tf.data.Dataset` of one split, in the order of its files, or one `DataError` saying why not.

    `encoded` (training sets, `TfdsSource`): every example carries its `tfds_id`, tfds's own in-memory cache of
    small sets is off, and image features stay encoded (`tfds.decode.SkipDecoding`: a shuffle buffer then holds
    compressed images); with `stream_seed` too, the files' order is shuffled (seeded)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"tfds:{name}:{split} needs tensorflow-datasets and TensorFlow ({error}); on a machine "
                        "without them, use a folder of images") from None
    try:
        if not encoded:
            return tfds.load(name, split=split, shuffle_files=False)
        features = tfds.builder(name).info.features
        decoders = {key: tfds.decode.SkipDecoding() for key, feature in features.items()
                    if isinstance(feature, tfds.features.Image)}
        read_config = tfds.ReadConfig(shuffle_seed=None if stream_seed is None else int(stream_seed),
                                      try_autocache=False, add_tfds_id=True)
        return tfds.load(name, split=split, shuffle_files=stream_seed is not None, decoders=decoders,
                         read_config=read_config)
    except Exception as error:  # noqa: BLE001 - download / missing-data / unknown-name failures become one message
        raise DataError(
            f"cannot load tensorflow-datasets set {name!r} (split {split!r}): {error}. "
            "Offline, prepare it once where there is network (tfds build) and copy ~/tensorflow_datasets."
        ) from error


def to_rgb(image):
    """An image feature (`(H, W)`, `(H, W, 1|3|4)`, uint8 or uint16) as `(H, W, 3)` uint8 RGB."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = np.clip(np.round(image / 257.0), 0, 255)
    image = image.astype(np.uint8, copy=False)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def tfds_images(spec, limit=None, default_split="train"):
    """Yield the images of a `tfds:` source one by one, in order, as `(H, W, 3)` uint8 RGB arrays (at most
    `limit`). One example is decoded at a time: iterating does not hold the set in memory.

    Raises `DataError` (at the first `next`) if the set cannot be loaded, has no `hr` / `image` feature,
    or the split is empty.
    """
    name, split = parse(spec, default_split)
    dataset = load(name, split)
    if limit:
        dataset = dataset.take(limit)
    count = 0
    for example in dataset.as_numpy_iterator():
        key = next((k for k in IMAGE_FEATURES if k in example), None)
        if key is None:
            raise DataError(f"tfds set {name!r} has no 'hr' or 'image' feature: {sorted(example)}")
        count += 1
        yield to_rgb(example[key])
    if not count:
        raise DataError(f"tfds set {name!r} split {split!r} is empty")


def load_tfds_images(spec, limit=None, default_split="validation"):
    """`(names, images)` of a `tfds:` source, all decoded (for evaluation sets): names are `NAME:SPLIT:I`."""
    name, split = parse(spec, default_split)
    images = list(tfds_images(spec, limit, default_split))
    return [f"{name}:{split}:{i}" for i in range(len(images))], images


def any_tfds(entries):
    """Whether a list of config entries (folders or sets) names a tensorflow-datasets set."""
    return any(is_tfds(entry) for entry in _as_list(entries))


def _as_list(entries):
    return [entries] if isinstance(entries, (str, os.PathLike)) else list(entries)


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return False


def check_pipeline(entries, pipeline, key="data.train"):
    """One `ConfigError` if `entries` name a tfds set that `pipeline` ("tf_data" or "numpy") cannot read."""
    found = [entry for entry in _as_list(entries) if is_tfds(entry)]
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


def load_images(entries, what="image", default_split="validation"):
    """Decode every image of `entries`, folders and `tfds:` sets (the folders' images first, as
    `kx_vision.data.images.load_images` gives them): `(H, W, 3)` uint8 arrays (validation sets)."""
    from kx_vision.data.images import list_images
    from kx_vision.data.images import load_images as load_files

    entries = _as_list(entries)
    folders = [entry for entry in entries if not is_tfds(entry)]
    images = load_files(list_images(folders), what=what)[0] if folders else []
    for spec in entries:
        if is_tfds(spec):
            images.extend(tfds_images(spec, default_split=default_split))
    return images


class _Set(NamedTuple):
    spec: str
    dataset: object  # the split's `tf.data.Dataset`, images encoded, files in a seeded shuffled order
    image_key: str
    mask_key: str | None
    has_id: bool
    count: int | None


class TfdsSource:
    """tensorflow-datasets sets as a sequential `kx_vision.data.sources.Source` (see the module docstring): its
    keys are the examples as read, `(name, encoded image[, encoded mask])`, decoded by `decode`.

    Args:
        specs: `tfds:NAME[/CONFIG][:SPLIT]` strings (`default_split` where none is given).
        what: words for messages ("training image").
        seed: seed of the files' order and of the example shuffles.
        min_side: raise each image's short side to this first (bicubic), as style transfer does.
        masks: for segmentation, `masks(data, name)`: an example's mask feature (encoded, or an array) as
            `(H, W)` uint8 class ids, or a `DataError` (`kx_vision.data.masks.mask_reader`); items are then
            `(image, mask)` pairs.
    """

    sequential, in_memory, sizes, skip_kind = True, False, None, "undecodable"

    def __init__(self, specs, what="training image", seed=0, min_side=None, default_split="train", masks=None):
        if not specs:
            raise DataError(f"no {what} to train on")
        self.specs, self.what, self.seed = list(specs), what, int(seed)
        self.min_side, self.default_split, self.masks = min_side, default_split, masks
        self.skip_kind = "undecodable" if masks is None else "unusable"
        self.sets = [self._open(spec) for spec in self.specs]
        counts = [part.count for part in self.sets]
        self.count = None if None in counts else sum(counts)
        self.description = ", ".join(self.specs)
        self._passes = None

    def _open(self, spec):
        name, split = parse(spec, default_split=self.default_split)
        dataset = load(name, split, stream_seed=self.seed, encoded=True)
        features = dataset.element_spec
        image_key = next((k for k in IMAGE_FEATURES if k in features), None)
        if image_key is None:
            raise DataError(f"tfds set {name!r} has no 'hr' or 'image' feature: {sorted(features)}")
        mask_key = None
        if self.masks is not None:
            mask_key = next((k for k in MASK_FEATURES if k in features), None)
            if mask_key is None:
                raise DataError(f"tfds set {name!r} has no mask feature ({' or '.join(MASK_FEATURES)}): "
                                f"{sorted(features)}")
        count = int(dataset.cardinality())
        if count == 0 or (count < 0 and not any(True for _ in dataset.take(1))):
            raise DataError(f"tfds set {name!r} split {split!r} is empty")
        return _Set(spec, dataset, image_key, mask_key, "tfds_id" in features, count if count > 0 else None)

    def _examples(self, part, dataset):
        """`dataset`'s examples as `(name, image[, mask])` tensors."""
        import tensorflow as tf

        def pick(example):
            name = tf.strings.join([f"{part.spec} example ", example["tfds_id"]]) if part.has_id else \
                tf.constant(part.spec)
            masks = (example[part.mask_key],) if part.mask_key else ()
            return (name, example[part.image_key], *masks)

        return dataset.map(pick)

    def keys(self, pass_index=None):
        """The examples of pass `pass_index` (each pass reshuffled), or with None of the sets in their stored
        order, named `I of SPEC` where they have no `tfds_id`."""
        if pass_index is None:
            return self._stored()
        if self._passes is None:
            self._passes = self._mixed()
        return self._passes.as_numpy_iterator()

    def _stored(self):
        for part in self.sets:
            name, split = parse(part.spec, default_split=self.default_split)
            dataset = self._examples(part, load(name, split, encoded=True))
            for index, (example_name, *data) in enumerate(dataset.as_numpy_iterator()):
                yield (example_name if part.has_id else f"{index} of {part.spec}".encode(), *data)

    def _mixed(self):
        import tensorflow as tf

        # Shuffled afresh each time a pass iterates them (their seed generators live outside the passes).
        parts = [self._examples(part, part.dataset).shuffle(EXAMPLE_BUFFER, seed=self.seed + i,
                                                             reshuffle_each_iteration=True)
                 for i, part in enumerate(self.sets)]
        if len(parts) == 1:
            return parts[0]
        counts = [part.count for part in self.sets]
        weights = None if None in counts else [count / sum(counts) for count in counts]
        return tf.data.Dataset.sample_from_datasets(parts, weights, seed=self.seed, stop_on_empty_dataset=False)

    def name(self, key):
        return key[0].decode() if isinstance(key[0], bytes) else str(key[0])

    def decode(self, key):
        """An example's image as `(H, W, 3)` uint8 RGB, decoded with Pillow as folders are (its short side raised
        to `min_side`), and its mask: `(image, mask)`; a `DataError` naming it where it cannot be used."""
        from kx_vision.data.images import read_image
        from kx_vision.data.sources import upscale_to

        _, data, *mask = key
        name = self.name(key)
        try:
            image = to_rgb(data) if isinstance(data, np.ndarray) else read_image(io.BytesIO(data))[0]
        except DataError as error:
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "its image", str(error.__cause__ or error))
            raise DataError(f"{name}: {reason}") from None
        image = upscale_to(image, self.min_side)
        if self.masks is None:
            return image
        mask = self.masks(mask[0], name)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{name}: its image is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{mask.shape[1]}x{mask.shape[0]}")
        return image, mask

    def __repr__(self):
        return f"TfdsSource({self.description})"
