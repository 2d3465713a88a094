"""Finding and decoding image files (Pillow), with one clear error per bad input.

Decoding uses Pillow rather than `tf.io.decode_image`: it reads every format users have (PNG, JPEG,
BMP, TIFF, WebP, palette and 16-bit PNGs), works where TensorFlow is absent, and names the file
when one is unreadable. One exception, for speed: uncompressed 24-bit BMPs (what
`python -m kx_vision.prepare crop --format bmp` writes for streaming training data) are read by OpenCV,
which decodes a 640x480 one in ~0.37 ms of CPU against Pillow's ~0.83 ms (PNG: ~7-11 ms with either
library; measured 2026-11-28, 2-core CPU, Pillow 13, OpenCV 5); anything else OpenCV reads differently
(grayscale, alpha, palette, damaged files) goes to Pillow. Training streams, which only crop, do not even
decode those BMPs: `load_image_view` reads their rows as stored (a file read, ~0.1 ms) behind an RGB view.
"""

import contextlib
import logging
import os
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from kx_vision.data.skips import SkipLog
from kx_vision.errors import DataError, TooLargeImageError, UnreadableFileError

log = logging.getLogger("kx_vision")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def list_images(folders):
    """Sorted image files in one folder or a list of folders (not recursive).

    Raises `DataError` naming the folder if one is missing, not a folder, or holds no image.
    """
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    if not folders:
        raise DataError("no image folder given")
    files = []
    for folder in folders:
        folder = os.fspath(folder)
        if not os.path.exists(folder):
            raise DataError(f"image folder not found: {folder}")
        if not os.path.isdir(folder):
            raise DataError(f"not a folder: {folder}")
        found = sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        )
        if not found:
            raise DataError(
                f"no images in {folder} (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        files.extend(found)
    return files


def to_rgb_array(image, path="<image>"):
    """A Pillow image as an `(H, W, 3)` uint8 RGB array.

    Grayscale and palette images are expanded to RGB; an alpha channel is dropped (the colour
    under it is kept, as Pillow's `convert("RGB")` does); 16- and 32-bit grayscale images are
    scaled to 8 bits from their full range (65535 for 16-bit).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "F":
        raise DataError(f"{path}: floating-point images (mode F) are not supported")
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)  # convert("RGB") would copy it once more first
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pixel_limit():
    """The most pixels an image may have, or None: Pillow's decompression-bomb limit. Pillow warns
    above `Image.MAX_IMAGE_PIXELS` (89,478,485 pixels, about 89 megapixels, by default) and refuses
    above twice that (about 179 megapixels); kx_vision refuses above the same 2x limit, without the
    warning."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def _pixels(count):
    return f"{count / 1e6:.0f} megapixels" if count >= 1e6 else f"{count} pixels"


def _too_large(path, pixels):
    return TooLargeImageError(
        f"{path} has {_pixels(pixels)}, beyond Pillow's decompression-bomb limit of {_pixels(pixel_limit())}")


@contextlib.contextmanager
def _any_size():
    # Pillow reads its limit from a module global; lifted only for a caller that asked for it.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@contextlib.contextmanager
def _opened(path, allow_large=False):
    """`Image.open(path)`, with Pillow's errors turned into `UnreadableFileError` / `TooLargeImageError`
    naming the file (for the whole block: decoding errors come later than opening ones)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse at 2x, as Pillow does
            with _any_size() if allow_large else contextlib.nullcontext(), Image.open(path) as image:
                yield image
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        if pixels is None:
            raise TooLargeImageError(f"{path}: {error}") from error
        raise _too_large(path, int(pixels.group(1))) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableFileError(f"cannot read image {path}: {error}") from error


def read_image(path, allow_large=False):
    """Decode one file: `(rgb_uint8, notes)`, `notes` listing what was converted ("alpha channel
    dropped", "16-bit image scaled to 8 bits"). Raises `UnreadableFileError` naming the file if it
    cannot be decoded, and `TooLargeImageError` beyond `pixel_limit()` unless `allow_large`."""
    with _opened(path, allow_large) as image:
        notes = []
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            notes.append("alpha channel dropped")
        if image.mode.startswith("I;16") or image.mode == "I":
            notes.append("16-bit image scaled to 8 bits")
        image.load()
        return to_rgb_array(image, path), notes


def read_size(path):
    """`(width, height)` of an image file from its header, without decoding it (a fraction of a
    millisecond). Raises `UnreadableFileError` if the header cannot be read and `TooLargeImageError` beyond
    `pixel_limit()`; a file whose pixels are damaged passes, and fails when it is decoded."""
    with _opened(path) as image:
        return image.size


def load_image(path):
    """Decode one file to an `(H, W, 3)` uint8 RGB array; `DataError` naming the file if unreadable
    (`UnreadableFileError`) or beyond the decompression-bomb limit (`TooLargeImageError`)."""
    if str(path).lower().endswith(".bmp"):
        image = _read_bmp_fast(path)
        if image is not None:
            return image
    return read_image(path)[0]


def load_image_view(path):
    """`load_image` for a reader that takes only parts of an image (random training crops): a 24-bit BMP is
    not decoded at all, its pixel rows are read into memory as they are and shown through a read-only RGB
    view, top row first (slicing it copies only the slice); any other file is `load_image`'s array."""
    layout = _bmp_layout(path)
    if layout is not None:
        offset, width, height, row = layout
        data = np.fromfile(path, np.uint8, count=row * abs(height), offset=offset)
        if data.size == row * abs(height):
            view = np.lib.stride_tricks.as_strided(data, (abs(height), width, 3), (row, 3, 1), writeable=False)
            return (view[::-1] if height > 0 else view)[..., ::-1]  # bottom-up rows (height > 0), BGR
    return load_image(path)


def _bmp_layout(path):
    """`(pixel offset, width, height, row bytes)` of an uncompressed 24-bit BMP that is whole and within the
    pixel limit, else None (Pillow then reads it, and says what is wrong). `height < 0`: rows top-down."""
    with open(path, "rb") as f:
        header = f.read(34)
    # BITMAPINFOHEADER (or later): bit count at byte 28, compression at 30 (0: none); 24 bits: no alpha, no palette.
    if (len(header) < 34 or header[:2] != b"BM" or int.from_bytes(header[14:18], "little") < 40
            or int.from_bytes(header[28:30], "little") != 24 or int.from_bytes(header[30:34], "little") != 0):
        return None
    width = int.from_bytes(header[18:22], "little", signed=True)
    height = int.from_bytes(header[22:26], "little", signed=True)
    limit = pixel_limit()
    if width <= 0 or height == 0 or (limit and width * abs(height) > limit):
        return None
    offset, row = int.from_bytes(header[10:14], "little"), (24 * width + 31) // 32 * 4
    if os.path.getsize(path) < offset + row * abs(height):  # truncated: Pillow names the file (OpenCV logs noise)
        return None
    return offset, width, height, row


def _read_bmp_fast(path):
    """A 24-bit BMP as `(H, W, 3)` RGB by OpenCV (see the module docstring), or None where Pillow should read
    it: another layout, a damaged file, beyond the pixel limit (Pillow then says so), OpenCV absent."""
    try:
        import cv2
    except ImportError:
        return None
    if _bmp_layout(path) is None:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_images(paths, min_size=None, what="image", skip_small=False):
    """Decode many files, skipping unreadable ones with a warning (counted and reported).

    Args:
        paths: image files.
        min_size: if given, an image with a side shorter than this raises `DataError` naming it
            (or, with `skip_small`, is skipped and counted in a warning).
        what: word used in messages ("training image", ...).
    Returns:
        (arrays, kept_paths).
    """
    arrays, kept = [], []
    for path, array in iter_images(paths, min_size, what, skip_small):
        arrays.append(array)
        kept.append(path)
    return arrays, kept


def iter_images(paths, min_size=None, what="image", skip_small=False):
    """`load_images` one image at a time: yields `(path, array)`, decoding each file when asked for, so that
    only the image in use is in memory (evaluation of a large set). The same warnings and errors; the count
    of skipped files, and `DataError` if none could be read, come once the paths are exhausted."""
    paths = list(paths)
    log, found = _pass_log(paths, min_size, what), False
    for path in paths:
        try:
            array = load_image(path)
        except DataError as error:
            log.skip(path, error, "unreadable")
            continue
        if _big_enough(log, path, array.shape[1], array.shape[0], skip_small):
            found = True
            yield path, array
    _end_pass(log, paths, found)


def scan_images(paths, min_size=None, what="image", skip_small=False, workers=None):
    """The sizes of many files, from their headers (nothing is decoded): what a streaming pipeline
    needs to plan its crops and to decide whether the decoded set would fit in memory.

    The same checks and messages as `load_images`, where a header can tell: a file whose header cannot
    be read is skipped with a warning (counted), one smaller than `min_size` stops with `DataError`
    naming it or, with `skip_small`, is skipped and counted. A file whose header is fine but whose
    pixels are damaged is found when a pipeline decodes it.

    Returns:
        (kept_paths, sizes), `sizes` a list of `(width, height)`.
    """
    paths = list(paths)
    log, kept, sizes = _pass_log(paths, min_size, what), [], []
    for path, result in zip(paths, read_sizes(paths, workers)):
        if isinstance(result, DataError):
            log.skip(path, result, "unreadable")
        elif _big_enough(log, path, *result, skip_small):
            kept.append(path)
            sizes.append(result)
    _end_pass(log, paths, found=bool(kept))
    return kept, sizes


def read_sizes(paths, workers=None):
    """`read_size` of many files, in threads (opening a file waits on the disk, not the CPU): for each path its
    `(width, height)`, or the `DataError` saying why its header cannot be read. The one header scan of the
    training pipelines (image folders, image/mask pairs)."""
    import concurrent.futures

    from kx_vision.data import default_workers

    with concurrent.futures.ThreadPoolExecutor(workers or default_workers()) as pool:
        return list(pool.map(_size_or_error, paths, chunksize=64))


def _size_or_error(path):
    try:
        return read_size(path)
    except DataError as error:
        return error


def _pass_log(paths, min_size, what):
    """The skip log of one pass over `paths` (`data.skips`): each unreadable file warned about as it is met."""
    return SkipLog(what, len(paths), each="skipping {what}: {message}", patch=min_size)


def _big_enough(log, path, width, height, skip_small):
    """False for an image to skip as too small (counted in `log`); `DataError` naming it unless `skip_small`."""
    if log.patch is None or min(width, height) >= log.patch:
        return True
    if skip_small:
        log.skip(path, "too small", "small", announce=False)
        return False
    raise DataError(
        f"{log.what} {path} is {width}x{height}, smaller than the {log.patch}x{log.patch} patch size; "
        "remove it or lower the patch size"
    )


def _end_pass(log, paths, found):
    """Report what the pass over `paths` skipped; `DataError` if nothing could be used."""
    log.report()
    if found:
        return
    if log.events("small") and log.events("small", "unreadable") == len(paths):
        raise DataError(f"no {log.what} is at least {log.patch} pixels on its short side")
    raise DataError(f"none of the {len(paths)} {log.what} file(s) could be read (first: {paths[0]})")
