"""tensorflow-datasets sets as image sources: `tfds:NAME[/CONFIG][:SPLIT]` where a folder is accepted.

`tfds:div2k/bicubic_x2:train` is DIV2K's training split; an image is the example's `hr` feature where it
has one (the super-resolution sets: DIV2K's `lr` is a degradation made otherwise than ours), else its
`image` feature. Images come out as `(H, W, 3)` uint8 RGB arrays, as the folder readers give them
(grayscale repeated to RGB, an alpha channel dropped, 16-bit scaled to 8 bits).

tensorflow-datasets reads through TensorFlow: on a machine without it, a `tfds:` source stops with one
message (convert the set to a folder of PNGs once where TensorFlow is installed). Nothing is downloaded
here that was not already prepared: offline, prepare the set once where there is network (`tfds build`, or
any `tfds.load`) and copy `~/tensorflow_datasets`. This module imports TensorFlow only when a set is read.
"""

import numpy as np

from kx_vision.errors import DataError

PREFIX = "tfds:"
IMAGE_FEATURES = ("hr", "image")


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


def load(name, split, stream_seed=None):
    """The `tf.data.Dataset` of one split, in the order of its files, or one `DataError` saying why not.

    With `stream_seed` (training streams, `kx_vision.data.tfds_stream`): the files' order is shuffled
    (seeded), every example carries its `tfds_id`, tfds's own in-memory cache of small sets is off, and
    image features stay encoded (`tfds.decode.SkipDecoding`: a shuffle buffer then holds compressed images)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"tfds:{name}:{split} needs tensorflow-datasets and TensorFlow ({error}); on a machine "
                        "without them, use a folder of images") from None
    try:
        if stream_seed is None:
            return tfds.load(name, split=split, shuffle_files=False)
        features = tfds.builder(name).info.features
        decoders = {key: tfds.decode.SkipDecoding() for key, feature in features.items()
                    if isinstance(feature, tfds.features.Image)}
        read_config = tfds.ReadConfig(shuffle_seed=int(stream_seed), try_autocache=False, add_tfds_id=True)
        return tfds.load(name, split=split, shuffle_files=True, decoders=decoders, read_config=read_config)
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
