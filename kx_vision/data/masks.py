"""Segmentation data without TensorFlow: image/mask pairing, mask decoding and validation, group split, and
the streaming reader both segmentation pipelines decode through (`PairReader`)."""

import collections
import concurrent.futures
import os
import random
import threading
import warnings

import numpy as np
from PIL import Image

from kx_vision.data.images import UnreadableFileError, list_images, load_image
from kx_vision.errors import DataError

# How a mask's file name relates to its image's `<stem>.<ext>`: the same stem (SegNet's CamVid, most sets),
# `<stem>_mask` (Carvana's `<id>_mask.gif`), `<stem>_L` (CamVid as first published). Any image extension.
MASK_SUFFIXES = ("", "_mask", "_L")
SHOWN = 5  # unpaired files named in an error


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _names(paths, limit=SHOWN):
    shown = ", ".join(os.path.basename(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


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
        if same_folder:
            stems = {_stem(p) for p in images}
            is_mask = {p for p in images
                       if any(s and _stem(p).endswith(s) and _stem(p)[: -len(s)] in stems for s in MASK_SUFFIXES)}
            mask_files = [p for p in images if p in is_mask]
            images = [p for p in images if p not in is_mask]
        else:
            mask_files = list_images([mask_dir])
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
                f"like its image, or with _mask or _L added, any image extension): {_names(missing)}"
                + (f"; mask(s) matching no image: {_names(orphans)}" if orphans else ""))
        if not found:
            raise DataError(f"no image/mask pairs in {image_dir}" + ("" if same_folder else f" and {mask_dir}"))
        pairs.extend(found)
    return pairs


def _black_and_white_palette(image):
    """True for a palette image whose used colours are only black and white (a binary mask saved as GIF or
    palette PNG: its indices may be 0/1 in either order, so its colours are what it means)."""
    used = [index for _, index in image.getcolors(256) or []]
    palette = image.getpalette() or []
    colours = {tuple(palette[3 * i : 3 * i + 3]) for i in used}
    return bool(colours) and colours <= {(0, 0, 0), (255, 255, 255)} and len(palette) >= 3 * (max(used) + 1)


def load_mask(path, num_classes, ignore_class=None, divisor=1):
    """A mask file as `(H, W)` uint8 class ids, validated.

    Masks hold one class id per pixel (8-bit grayscale or palette indices; not colours). A palette mask
    whose colours are only black and white (Carvana's GIFs) is read by its colours, 0 and 255. Values are
    divided by `divisor` first (255 for 0/255 binary masks); a binary task (`num_classes` 1) reads a mask
    holding only 0 and 255 as 0/1 by itself. Any value outside `0..num_classes-1` (`0..1` for binary)
    and `ignore_class` raises `DataError` naming the file and the values; a file that cannot be decoded
    raises `UnreadableFileError`.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1", "I", "I;16"):
                raise DataError(
                    f"mask {path} has mode {image.mode}; masks must hold one class id per pixel "
                    "(8-bit grayscale or palette), not colours"
                )
            if image.mode == "P" and _black_and_white_palette(image):
                image = image.convert("L")
            mask = np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's many failure types (truncated, not an image, ...)
        raise UnreadableFileError(f"cannot read mask {path}: {error}") from error
    if mask.dtype != np.uint8:  # mode 1 (bool), 16- and 32-bit grayscale
        mask = mask.astype(np.int64)
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
        raise DataError(f"mask {path} has values {bad[:10]} outside the declared classes ({declared})"
                        + (f" after dividing by {divisor}" if divisor != 1 else "") + hint)
    return mask.astype(np.uint8)


def _size_mismatch(image_path, image_size, mask_path, mask_size):
    return DataError(f"image {image_path} is {image_size[0]}x{image_size[1]} but its mask "
                     f"{mask_path} is {mask_size[0]}x{mask_size[1]}")


def read_pair(image_path, mask_path, num_classes, ignore_class=None, divisor=1):
    """`(image, mask)`: one decoded, validated pair (`UnreadableFileError` / `DataError` naming the file)."""
    image = load_image(image_path)
    mask = load_mask(mask_path, num_classes, ignore_class, divisor)
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
    skipped, found = [], False

    def skip(path, error):
        warnings.warn(f"skipping image/mask pair {path}: {error}", stacklevel=4)
        skipped.append(path)

    for image_path, mask_path in pairs:
        try:
            image = load_image(image_path)
        except DataError as error:  # unreadable, too large, floating-point: skipped, as `load_images` does
            skip(image_path, error)
            continue
        try:
            mask = load_mask(mask_path, num_classes, ignore_class, divisor)
        except UnreadableFileError as error:  # colours or values outside the classes stop the run
            skip(image_path, error)
            continue
        if image.shape[:2] != mask.shape:
            raise _size_mismatch(image_path, image.shape[1::-1], mask_path, mask.shape[::-1])
        found = True
        yield image_path, image, mask
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image/mask pair(s) of {len(pairs)}", stacklevel=3)
    if not found:
        if skipped:
            raise DataError(f"none of the {len(pairs)} image/mask pairs could be read (first: {pairs[0][0]})")
        raise DataError("no image/mask pairs")


def _header_size(path):
    """`(width, height)` from a file's header (nothing decoded), or None if it cannot be opened."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - reported when the pair is decoded
        return None


class PairReader:
    """Image/mask pairs decoded when asked for, validated as `load_pairs` does, optionally kept in memory.

    What both segmentation pipelines read through (the tf.data one in `kx_vision.data.segmentation`, the
    NumPy one in `kx_vision.data.segmentation_arrays`): a list of file pairs, so memory does not grow with
    the number of images unless `cache` is on. Creating it reads every file's header (in threads, nothing
    decoded): an image and mask of different sizes stop there with one `DataError` naming both, before any
    training; the headers also give `decoded_bytes`, what caching the whole set would take.

    `read(i)` returns the decoded pair, or None for a pair that cannot be used (an unreadable or truncated
    file, an image beyond the decompression-bomb limit, a mask holding colours or values outside the
    classes): it is remembered (never decoded again), warned about once naming the file, and counted;
    `end_pass()` reports the count of the pass (an epoch) and starts the next. `probe()`, called when a
    pipeline is built, stops with the first error when the first pairs read all fail (a systematic mistake,
    e.g. 0/255 masks without `mask_divisor`), so that only a damaged file here and there is ever skipped.

    Thread-safe: pipelines call `read` from worker threads.
    """

    def __init__(self, pairs, num_classes, ignore_class=None, divisor=1, cache=False, what="training",
                 workers=None, check_sizes=True):
        self.pairs = list(pairs)
        self.args = (num_classes, ignore_class, divisor)
        self.what = what
        self.cache = bool(cache)
        self._cached = {}
        self._bad = {}  # index -> message
        self._lock = threading.Lock()
        self._pass_skipped = collections.Counter()
        self.total_skipped = 0
        self.decoded_bytes = None
        if check_sizes:
            self._check_sizes(workers)

    @classmethod
    def from_arrays(cls, images, masks, what="training"):
        """A reader over pairs already decoded (`(H, W, 3)` uint8 images, `(H, W)` uint8 masks)."""
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        reader = cls([(f"<image {i}>", f"<mask {i}>") for i in range(len(images))], 2, what=what, cache=True,
                     check_sizes=False)
        for i, (image, mask) in enumerate(zip(images, masks)):
            if image.shape[:2] != mask.shape[:2]:
                raise ValueError(f"image {i} is {image.shape[:2]} but its mask is {mask.shape[:2]}")
            reader._cached[i] = (np.asarray(image, np.uint8), np.asarray(mask, np.uint8).reshape(mask.shape[:2]))
        reader.decoded_bytes = sum(image.nbytes + mask.nbytes for image, mask in reader._cached.values())
        return reader

    def __len__(self):
        return len(self.pairs)

    def _check_sizes(self, workers):
        from kx_vision.data import default_workers

        with concurrent.futures.ThreadPoolExecutor(workers or default_workers() + 1) as pool:
            sizes = list(pool.map(lambda pair: (_header_size(pair[0]), _header_size(pair[1])), self.pairs))
        total = 0
        for (image_path, mask_path), (image_size, mask_size) in zip(self.pairs, sizes):
            if image_size is None or mask_size is None:
                continue  # found unreadable when decoded
            if image_size != mask_size:
                raise _size_mismatch(image_path, image_size, mask_path, mask_size)
            total += image_size[0] * image_size[1] * 4  # RGB + the mask, uint8
        self.decoded_bytes = total

    def _fail(self, index, error):
        message = str(error)
        with self._lock:
            first = index not in self._bad
            self._bad[index] = message
            self._pass_skipped[index] += 1
            self.total_skipped += 1
        if first:
            warnings.warn(f"skipping {self.what} image/mask pair {self.pairs[index][0]}: {message}", stacklevel=3)

    def read(self, index):
        """The decoded `(image, mask)` uint8 pair `index`, or None if it cannot be used (counted)."""
        found = self._cached.get(index)
        if found is not None:
            return found
        if index in self._bad:
            with self._lock:
                self._pass_skipped[index] += 1
                self.total_skipped += 1
            return None
        image_path, mask_path = self.pairs[index]
        try:
            pair = read_pair(image_path, mask_path, *self.args)
        except DataError as error:
            self._fail(index, error)
            return None
        if self.cache:
            self._cached[index] = pair
        return pair

    def read_or_replace(self, index, rng):
        """`read(index)`, or if that pair cannot be used, another pair drawn with `rng` (NumPy `Generator`)."""
        pair = self.read(index)
        while pair is None:
            if len(self._bad) >= len(self.pairs):
                raise DataError(f"none of the {len(self.pairs)} {self.what} image/mask pairs can be used "
                                f"(first: {next(iter(self._bad.values()))})")
            pair = self.read(int(rng.integers(len(self.pairs))))
        return pair

    def probe(self, count=8):
        """Read pairs from the first until one can be used; `DataError` with the first failure if the first
        `count` (or all) cannot: the data set, not one file, is wrong."""
        for index in range(min(count, len(self.pairs))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the first failure is warned about again below, if needed
                ok = self.read(index) is not None
            if ok:
                with self._lock:
                    self._pass_skipped.clear()
                    self.total_skipped = 0
                for bad, message in self._bad.items():
                    warnings.warn(f"skipping {self.what} image/mask pair {self.pairs[bad][0]}: {message}",
                                  stacklevel=2)
                return
        tried = min(count, len(self.pairs))
        first = self._bad.get(0, "")
        raise DataError(f"none of the first {tried} of {len(self.pairs)} {self.what} image/mask pairs can be "
                        f"used; the first: {first}" if tried < len(self.pairs) else
                        f"none of the {tried} {self.what} image/mask pairs can be used; the first: {first}")

    def end_pass(self, label="epoch"):
        """Report (one warning) the pairs skipped since the last call, and start a new count; returns how
        many distinct pairs were skipped."""
        with self._lock:
            skipped, self._pass_skipped = self._pass_skipped, collections.Counter()
        if skipped:
            names = _names([self.pairs[i][0] for i in sorted(skipped)])
            warnings.warn(f"{label}: skipped {len(skipped)} unusable {self.what} image/mask pair(s) of "
                          f"{len(self.pairs)} ({names})", stacklevel=2)
        return len(skipped)

    def stream(self, indices, workers=None, rng=None, prefetch=None):
        """Yield `(position, image, mask)` for `indices` in order, decoded ahead in `workers` threads. With
        `rng`, an unusable pair is replaced by another drawn at random (a pass keeps its length); without,
        it is left out."""
        from kx_vision.data import default_workers

        workers = workers or default_workers()
        ahead = prefetch or 2 * workers
        indices = list(indices)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = collections.deque()
            feed = iter(enumerate(indices))
            for position, index in feed:
                pending.append((position, index, pool.submit(self.read, index)))
                if len(pending) >= ahead:
                    break
            while pending:
                position, index, future = pending.popleft()
                nxt = next(feed, None)
                if nxt is not None:
                    pending.append((nxt[0], nxt[1], pool.submit(self.read, nxt[1])))
                pair = future.result()
                if pair is None and rng is not None:
                    pair = self.read_or_replace(int(rng.integers(len(self.pairs))), rng)
                if pair is not None:
                    yield position, pair[0], pair[1]


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
