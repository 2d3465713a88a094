"""Segmentation data without TensorFlow: image/mask pairing, mask decoding and validation (with an optional map of
mask values to classes), group split, the image/mask implementation of the `Source` protocol (`PairSource`) and
the reader both segmentation pipelines decode through (`PairReader`)."""

import io
import os
import random

import numpy as np
from PIL import Image

from kx_vision.data.images import UnreadableFileError, list_images, load_image, read_sizes
from kx_vision.data.skips import SkipLog, names
from kx_vision.data.sources import ArraySource, decoded_mib
from kx_vision.data.streaming import Items
from kx_vision.errors import ConfigError, DataError

# How a mask's file name relates to its image's `<stem>.<ext>`: the same stem (SegNet's CamVid, most sets),
# `<stem>_mask` (Carvana's `<id>_mask.gif`), `<stem>_L` (CamVid as first published). Any image extension.
MASK_SUFFIXES = ("", "_mask", "_L")


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def find_pairs(image_dirs, mask_dirs):
    """`[(image_path, mask_path)]`: each image of `image_dirs[i]` with its mask in `mask_dirs[i]`.

    The mask of `<stem>.<ext>` is `<stem>`, `<stem>_mask` (Carvana: `0cdf5b5d0ce1_01.jpg` and
    `0cdf5b5d0ce1_01_mask.gif`) or `<stem>_L` (CamVid's original labels), with any image extension, tried
    in that order. The mask folder may be the image folder itself (Carvana-style `<id>.jpg` and
    `<id>_mask.gif` side by side): files named like another file plus a mask suffix are then the masks.

    Raises `DataError` naming the folders and the first unpaired images (and, if any, the first masks
    that matched no image) when an image has no mask.
    """
    if isinstance(image_dirs, (str, os.PathLike)):
        image_dirs = [image_dirs]
    if isinstance(mask_dirs, (str, os.PathLike)):
        mask_dirs = [mask_dirs]
    if len(image_dirs) != len(mask_dirs):
        raise DataError(f"{len(image_dirs)} image folder(s) but {len(mask_dirs)} mask folder(s); give one mask folder per image folder")
    pairs = []
    for image_dir, mask_dir in zip(image_dirs, mask_dirs):
        image_dir, mask_dir = os.fspath(image_dir), os.fspath(mask_dir)
        images = list_images([image_dir])
        same_folder = os.path.abspath(image_dir) == os.path.abspath(mask_dir)
        images, mask_files = _masks_beside(images) if same_folder else (images, list_images([mask_dir]))
        masks = {}
        for path in mask_files:
            masks.setdefault(_stem(path), path)
        found, missing, used = [], [], set()
        for path in images:
            stem = _stem(path)
            mask = next((masks[stem + s] for s in MASK_SUFFIXES if stem + s in masks), None)
            if mask is None:
                missing.append(path)
            else:
                found.append((path, mask))
                used.add(mask)
        if missing:
            orphans = [p for p in mask_files if p not in used]
            where = f"beside them in {image_dir}" if same_folder else f"in {mask_dir}"
            raise DataError(
                f"{len(missing)} of {len(images)} image(s) in {image_dir} have no mask {where} (a mask is named "
                f"like its image, or with _mask or _L added, any image extension): {names(missing)}"
                + (f"; mask(s) matching no image: {names(orphans)}" if orphans else ""))
        if not found:
            raise DataError(f"no image/mask pairs in {image_dir}" + ("" if same_folder else f" and {mask_dir}"))
        pairs.extend(found)
    return pairs


def _masks_beside(files):
    """One folder's files as `(images, masks)`: a file named like another plus a mask suffix is a mask."""
    stems = {_stem(p) for p in files}
    masks = {p for p in files if any(s and _stem(p).endswith(s) and _stem(p)[: -len(s)] in stems for s in MASK_SUFFIXES)}
    return [p for p in files if p not in masks], [p for p in files if p in masks]


def _black_and_white_palette(image):
    """True for a palette image whose used colours are only black and white (a binary mask saved as GIF or
    palette PNG: its indices may be 0/1 in either order, so its colours are what it means)."""
    used = [index for _, index in image.getcolors(256) or []]
    palette = image.getpalette() or []
    colours = {tuple(palette[3 * i : 3 * i + 3]) for i in used}
    return bool(colours) and colours <= {(0, 0, 0), (255, 255, 255)} and len(palette) >= 3 * (max(used) + 1)


def load_mask(path, num_classes, ignore_class=None, divisor=1, label_map=None, name=None):
    """A mask file (a path, or a file object named `name` in messages) as `(H, W)` uint8 class ids, validated.

    Masks hold one class id per pixel (8-bit grayscale or palette indices; not colours). A palette mask
    whose colours are only black and white (Carvana's GIFs) is read by its colours, 0 and 255. See `check_mask`
    for what is done to the values (`label_map`, `divisor`) and what they may be; a file that cannot be decoded
    raises `UnreadableFileError`.
    """
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1", "I", "I;16"):
                raise DataError(
                    f"mask {name} has mode {image.mode}; masks must hold one class id per pixel "
                    "(8-bit grayscale or palette), not colours"
                )
            if image.mode == "P" and _black_and_white_palette(image):
                image = image.convert("L")
            mask = np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's many failure types (truncated, not an image, ...)
        raise UnreadableFileError(f"cannot read mask {name}: {error}") from error
    return check_mask(mask, name, num_classes, ignore_class, divisor, label_map)


def check_mask(mask, name, num_classes, ignore_class=None, divisor=1, label_map=None):
    """A mask's values as `(H, W)` uint8 class ids: mapped by `label_map` (`{value: class}`, e.g. Oxford-IIIT
    Pet's trimaps `{1: 1, 2: 0, 3: 2}`; values it does not name are kept), then divided by `divisor` (255 for
    0/255 binary masks); a binary task (`num_classes` 1) reads a mask holding only 0 and 255 as 0/1 by
    itself. Any value outside `0..num_classes-1` (`0..1` for binary) and `ignore_class` raises `DataError`
    naming the mask (`name`) and the values."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.dtype != np.uint8:  # mode 1 (bool), 16- and 32-bit grayscale
        mask = mask.astype(np.int64)
    if label_map:
        table = np.arange(max(256, int(mask.max(initial=0)) + 1, max(label_map) + 1), dtype=np.int64)
        table[list(label_map)] = list(label_map.values())
        mask = table[mask]
        mask = mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask
    if divisor != 1:
        mask = mask // divisor
    # The values present: a histogram for 8-bit masks (a tenth of the time of np.unique's sort).
    present = np.flatnonzero(np.bincount(mask.ravel())) if mask.dtype == np.uint8 else np.unique(mask)
    if num_classes == 1 and divisor == 1 and present.size and present[-1] == 255 and set(present.tolist()) <= {0, 255}:
        mask, present = mask // 255, present // 255  # a 0/255 binary mask: nothing else can be meant
    allowed = set(range(max(num_classes, 2)))
    if ignore_class is not None:
        allowed.add(int(ignore_class))
    bad = sorted(set(present.tolist()) - allowed)
    if bad:
        declared = f"0..{max(num_classes, 2) - 1}" + (f" and ignore {ignore_class}" if ignore_class is not None else "")
        hint = "; 0/255 masks: divide by 255 (mask_divisor)" if divisor == 1 and bad == [255] else ""
        mapped = " after data.label_map" if label_map else ""
        raise DataError(f"mask {name} has values {bad[:10]} outside the declared classes ({declared})"
                        + (f" after dividing by {divisor}" if divisor != 1 else "") + mapped + hint)
    return mask.astype(np.uint8)


def mask_reader(num_classes, ignore_class=None, divisor=1, label_map=None):
    """`read(data, name)`: a mask given as encoded bytes (a tensorflow-datasets feature) or as an array, read and
    checked as `load_mask` does."""
    def read(data, name):
        if isinstance(data, np.ndarray):
            return check_mask(data, f"of {name}", num_classes, ignore_class, divisor, label_map)
        return load_mask(io.BytesIO(data), num_classes, ignore_class, divisor, label_map, name=f"of {name}")

    return read


def parse_label_map(items, key="data.label_map"):
    """`["1:1", "2:0", "3:2"]` (config values) -> `{1: 1, 2: 0, 3: 2}`: mask value -> class, each 0..255; one
    `ConfigError` naming `key` for an item of another form."""
    found = {}
    for item in items:
        value, colon, label = str(item).partition(":")
        try:
            value, label = int(value), int(label)
        except ValueError:
            value = label = None
        if not colon or value is None or not (0 <= value <= 255 and 0 <= label <= 255):
            raise ConfigError(f"config key '{key}' takes VALUE:CLASS items, each 0..255 (e.g. 1:1,2:0,3:2; quote "
                              f"them in YAML: \"1:1\", which YAML would read as a number), got {item!r}")
        found[value] = label
    return found


def _size_mismatch(image_path, image_size, mask_path, mask_size):
    return DataError(f"image {image_path} is {image_size[0]}x{image_size[1]} but its mask "
                     f"{mask_path} is {mask_size[0]}x{mask_size[1]}")


def read_pair(image_path, mask_path, num_classes, ignore_class=None, divisor=1, label_map=None):
    """`(image, mask)`: one decoded, validated pair (`UnreadableFileError` / `DataError` naming the file)."""
    image = load_image(image_path)
    mask = load_mask(mask_path, num_classes, ignore_class, divisor, label_map)
    if image.shape[:2] != mask.shape:
        raise _size_mismatch(image_path, image.shape[1::-1], mask_path, mask.shape[::-1])
    return image, mask


def load_pairs(pairs, num_classes, ignore_class=None, divisor=1):
    """Decode `(image, mask)` file pairs; `(images, masks)` lists of uint8 arrays, sizes checked.

    As for super-resolution images (`images.load_images`), a pair whose image cannot be used
    (unreadable, truncated, too large) or whose mask cannot be decoded is skipped with a warning naming
    the file, and the skipped pairs are counted in a last warning. A mask that holds colours or values
    outside the classes, or whose size differs from its image's, stops with a `DataError` naming it:
    that is a mistake in the data set, not a damaged file.
    """
    images, masks = [], []
    for _, image, mask in iter_pairs(pairs, num_classes, ignore_class, divisor):
        images.append(image)
        masks.append(mask)
    return images, masks


def iter_pairs(pairs, num_classes, ignore_class=None, divisor=1):
    """`load_pairs` one pair at a time: yields `(image_path, image, mask)`, decoding each pair when asked
    for, so that only the pair in use is in memory (evaluation of a large set). The same warnings and
    errors; the count of skipped pairs, and `DataError` if none could be read, come once the pairs are
    exhausted."""
    pairs = list(pairs)
    log, found = SkipLog("image/mask pair", len(pairs), each=True), False
    for image_path, mask_path in pairs:
        try:
            image = load_image(image_path)
        except DataError as error:  # unreadable, too large, floating-point: skipped, as `load_images` does
            log.skip(image_path, error, "unusable")
            continue
        try:
            mask = load_mask(mask_path, num_classes, ignore_class, divisor)
        except UnreadableFileError as error:  # colours or values outside the classes stop the run
            log.skip(image_path, error, "unusable")
            continue
        if image.shape[:2] != mask.shape:
            raise _size_mismatch(image_path, image.shape[1::-1], mask_path, mask.shape[::-1])
        found = True
        yield image_path, image, mask
    log.report()
    if not found:
        if log.events("unusable"):
            raise DataError(f"none of the {len(pairs)} image/mask pairs could be read (first: {pairs[0][0]})")
        raise DataError("no image/mask pairs")


class PairSource:
    """Image/mask file pairs as a `kx_vision.data.sources.Source`: items `(image, mask)` decoded and validated
    by `read_pair`. Creating it reads every file's header (in threads, nothing decoded): an image and mask of
    different sizes stop there with one `DataError` naming both, before any training."""

    sequential, in_memory, skip_kind = False, False, "unusable"

    def __init__(self, pairs, num_classes, ignore_class=None, divisor=1, label_map=None, what="training",
                 workers=None, check_sizes=True):
        self.pairs, self.count = list(pairs), len(pairs)
        self.args = (num_classes, ignore_class, divisor, label_map)
        self.what = f"{what} image/mask pair"
        self.sizes = self._sizes(workers) if check_sizes else None

    def _sizes(self, workers):
        sizes = read_sizes([path for pair in self.pairs for path in pair], workers)
        found = []
        for (image_path, mask_path), image_size, mask_size in zip(self.pairs, sizes[::2], sizes[1::2]):
            if isinstance(image_size, DataError) or isinstance(mask_size, DataError):
                continue  # reported when the pair is decoded
            if image_size != mask_size:
                raise _size_mismatch(image_path, image_size, mask_path, mask_size)
            found.append(image_size)
        return found

    def keys(self, pass_index=None):
        return range(self.count)

    def name(self, key):
        return self.pairs[key][0]

    def decode(self, key):
        return read_pair(*self.pairs[key], *self.args)


class PairReader(Items):
    """Image/mask pairs decoded when asked for, validated as `load_pairs` does, optionally kept in memory: the
    streaming core (`kx_vision.data.streaming.Items`) over a `PairSource` (or pairs already decoded), which both
    segmentation pipelines read through (the tf.data one in `kx_vision.data.segmentation`, the NumPy one in
    `kx_vision.data.segmentation_arrays`). Memory does not grow with the number of images unless `cache` is on;
    `decoded_bytes` (from the headers) is what caching the whole set would take.

    `read(i)` returns the decoded pair, or None for a pair that cannot be used (an unreadable or truncated
    file, an image beyond the decompression-bomb limit, a mask holding colours or values outside the
    classes): it is remembered (never decoded again), warned about once naming the file, and counted;
    `end_pass()` reports the pairs skipped in the pass (an epoch). `probe()`, called when a pipeline is
    built, stops with the first error when the first pairs read all fail (a systematic mistake, e.g. 0/255
    masks without `mask_divisor`), so that only a damaged file here and there is ever skipped.
    """

    def __init__(self, pairs, num_classes, ignore_class=None, divisor=1, cache=False, what="training",
                 workers=None, check_sizes=True, label_map=None):
        source = PairSource(pairs, num_classes, ignore_class, divisor, label_map, what, workers, check_sizes)
        super().__init__(source, cache, workers, SkipLog(source.what, source.count, each=True))
        self.decoded_bytes = None if source.sizes is None else int(decoded_mib(source.sizes, 4) * 2**20)

    @classmethod
    def from_arrays(cls, images, masks, what="training"):
        """A reader over pairs already decoded (`(H, W, 3)` uint8 images, `(H, W)` uint8 masks)."""
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        items = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            if image.shape[:2] != mask.shape[:2]:
                raise ValueError(f"image {i} is {image.shape[:2]} but its mask is {mask.shape[:2]}")
            items.append((np.asarray(image, np.uint8), np.asarray(mask, np.uint8).reshape(mask.shape[:2])))
        return pair_items(ArraySource(items, what=f"{what} image/mask pair"))


def pair_items(source):
    """The streaming core over a source of image/mask pairs: an unusable pair is warned about once, naming it,
    as well as counted in the report of its pass."""
    return Items(source, log=SkipLog(source.what, source.count, each=True))


def open_tfds_pairs(specs, masks, cache, limit_mib, what="training", seed=0, default_split="train"):
    """The streaming core over the images and masks of tensorflow-datasets sets (`tfds_source.TfdsSource` with
    `masks`, a `mask_reader`): held in memory where `data.cache` says so (`streaming.hold`: `auto` decodes them
    in order until they pass `limit_mib`), else streamed in the sets' own shuffled order (tf.data only).
    Returns `(reader, mib)`, `mib` what was decoded into memory (0 when streamed)."""
    from kx_vision.data import streaming, tfds_source

    source = tfds_source.TfdsSource(specs, f"{what} image/mask pair", seed, default_split=default_split,
                                    masks=masks)
    held, mib = streaming.hold([source], cache, limit_mib, channels=4)
    return pair_items(held), mib if held.in_memory else 0.0


def sequence_of(path):
    """Group of a file for splitting: the part of its name before the first '_': a CamVid sequence
    (`0016E5` of `0016E5_07959.png`), a Carvana car (`0cdf5b5d0ce1` of `0cdf5b5d0ce1_01.jpg`, one of its 16
    views), or the whole stem if there is none."""
    return os.path.basename(path).split("_")[0].split(".")[0]


def group_split(items, val_fraction, seed=0, group_of=sequence_of, key=lambda item: item[0]):
    """Split `items` into `(train, val)` so that all items of one group land on the same side.

    Frames of one CamVid sequence are near-duplicates (as are the 16 views of a Carvana car): a
    random per-frame split would leak them into validation. Groups are shuffled with `seed` and
    moved to validation until it holds at least `val_fraction` of the items.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups = {}
    for item in items:
        groups.setdefault(group_of(key(item)), []).append(item)
    if len(groups) < 2:
        raise DataError(f"cannot split by group: all {len(items)} items belong to group {next(iter(groups))!r}")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    val, target = [], val_fraction * len(items)
    val_groups = set()
    for name in names:
        if len(val) >= target or len(val_groups) == len(groups) - 1:
            break
        val.extend(groups[name])
        val_groups.add(name)
    train = [item for item in items if group_of(key(item)) not in val_groups]
    return train, val
