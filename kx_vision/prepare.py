"""Prepare image folders for training: make a smaller copy, or cut large images into overlapping crops.

`python -m kx_vision.prepare resize SRC DST --size 512 [--side shorter|longer] [--masks] [--format png|bmp]`
`python -m kx_vision.prepare crop SRC DST --crop 480 [--step 240] [--thresh-size 0] [--format png|bmp]`

`resize` is the lesson's "create a smaller version" step (fastai 0.7's `resize_imgs`): every image is
scaled, keeping its aspect ratio, so that its *shorter* side is `--size` pixels: a `size x size`
training crop then fits in every image. `--side longer` fits the longer side instead
(fastai v2's `resize_images(max_size=...)`). Images are never enlarged: one already at or below the size
is written at its own size (enlarging adds no detail, and would teach a super-resolution model blur).
Images are downscaled by area averaging, `cv2.resize(..., INTER_AREA)`; `--masks` uses nearest
neighbour (Pillow's `NEAREST`, sampling pixel centres), so every class id (and a palette's colours) of
the output is one of the source's. An image and its mask, resized with the same `--size` and `--side`,
keep the same size. Modes are kept (grayscale, RGB, RGBA, 16-bit grayscale; masks keep palettes too);
palette and other images are converted to RGB (RGBA where transparent).

Why OpenCV: on a 2040x1356 photograph (a DIV2K-sized mosaic of BSD200 images), downscaling to 770x512,
one thread, took 30 ms with `cv2.INTER_AREA` and 30 ms with Pillow's `BOX`, but Pillow's box filter is
not area averaging at non-integer factors: against the exact area average (computed in float64) Pillow
`BOX` scored 38.3 dB PSNR (errors up to 63 grey levels), `cv2.INTER_AREA` 59.0 dB (up to 0.5, the 8-bit
rounding), Pillow's antialiased `BICUBIC` 42.6 dB (a sharper filter, 56 ms). At exactly x2,
`INTER_AREA` took 2 ms against Pillow `BOX`'s 24 ms (58.5 vs 52.9 dB against the 2x2 mean). Decoding
the PNG took ~200 ms with either library: resizing is not the bottleneck. (Measured 2026-11-28, one
thread of a 2-core CPU, Pillow 13.0, OpenCV 5.0.)

`crop` is BasicSR's sub-image extraction (`scripts/data_preparation/extract_subimages.py`): crops of
`--crop` pixels start at rows (and columns) `0, step, 2*step, ...` up to `h - crop`, plus a last one at
`h - crop` when the strip left over below the last crop is wider than `--thresh-size` pixels (0: always,
so every pixel is covered). Crops are numbered row by row from 1, `<stem>_s001.png`, `<stem>_s002.png`...
(3 digits, more only past 999). Images smaller than the crop give none and are reported. Cropping LR
images of a x2 set with half the crop and step (`--crop 240 --step 120`) gives crops that match the HR
crops one to one, as BasicSR does for DIV2K. Crops are cut from the decoded image: mode and palette kept.

`--format bmp` writes uncompressed BMPs (`<stem>.bmp`, `<stem>_s001.bmp`) for sub-images that training
streams from disk: decoding a 640x480 photograph took ~7-11 ms as PNG, ~0.8 ms as BMP (14 times less), for
~1.4 times the PNG's disk, so patches stream at nearly the in-memory rate (BasicSR keeps sub-images in LMDB
for the same reason; measured 2026-11-28, one thread of a 2-core CPU, Pillow 13). Pixels are those of the
PNG run: 24-bit RGB, 8-bit grayscale kept L; palette images become RGB; transparency is dropped (the colour
under it kept, as training reads it) with a warning; 16-bit images are skipped; `--masks` stays png.

Both commands:
- mirror SRC's subfolders in DST and write lossless PNGs or BMPs (`<stem>.png`; inputs sharing a stem in
  one folder, `photo.jpg` and `photo.png`, keep their whole name: `photo.jpg.png`), each written
  atomically (a hidden `.tmp-<pid>-<name>` renamed into place). PNG compression level 3, BasicSR's: a
  480x480 crop of that photograph was 0.6% larger than at Pillow's default level 6 and written 2.4 times
  faster (83 vs 201 ms).
- run in a pool of `--workers` processes (default: the CPUs this process may use), with a progress bar
  (tqdm where installed, else a counter) on a terminal.
- are resumable: run the same command again and only what is missing is written (an output that exists is
  complete: writes are atomic; an image is done when all its crops exist). Temporaries of a killed run
  are removed first. DST remembers the options it was made with (`.kx_vision_prepare.json`); the same DST
  with other options is refused, as is a DST that holds other files, so nothing made differently is ever
  taken for done.
- skip an input that cannot be used (unreadable, truncated, an unsupported mode, 16-bit for bmp, beyond
  Pillow's decompression-bomb limit without `--allow-large-images`, smaller than `--crop`), with one warning
  naming it, and go on.
- end with one summary line: written, skipped as done, unreadable (and too small).
Exit status: 0 every input done; 1 some inputs skipped (named in warnings), the others written; 2 stopped
with one line: a bad argument, a missing SRC, an unusable DST, or a file that cannot be written (a full
disk: what was written is kept, run again once there is space); 130 interrupted (run again to finish).

This module imports neither Keras, TensorFlow nor JAX: Pillow, NumPy and OpenCV only, after the arguments
are parsed.
"""

import argparse
import concurrent.futures
import dataclasses
import errno
import json
import multiprocessing
import os
import signal
import sys
import time

from kx_vision import cli
from kx_vision.errors import ConfigError, DataError, KxVisionError, TooLargeImageError

SKIPPED = 1  # exit status when some inputs were skipped and the others written
SETTINGS = ".kx_vision_prepare.json"
PNG_COMPRESSION = 3  # BasicSR's level; see the module docstring
FORMATS = ("png", "bmp")  # --format: the first is the default
_MAX_LISTED = 20  # warnings about unusable inputs printed in full


@dataclasses.dataclass(frozen=True)
class ResizeOptions:
    size: int
    side: str = "shorter"  # or "longer"
    masks: bool = False
    format: str = "png"  # or "bmp"

    def __post_init__(self):
        _check_format(self.format)
        if self.masks and self.format != "png":
            raise ConfigError(f"--masks writes png only (a mask keeps its palette, 16-bit class ids and "
                              f"transparency as they are), not --format {self.format}; drop --format")

    def settings(self):
        return {"command": "resize", "size": self.size, "side": self.side, "masks": self.masks,
                "format": self.format}


@dataclasses.dataclass(frozen=True)
class CropOptions:
    crop: int
    step: int
    thresh_size: int = 0
    format: str = "png"  # or "bmp"

    def __post_init__(self):
        _check_format(self.format)

    def settings(self):
        return {"command": "crop", "crop": self.crop, "step": self.step, "thresh_size": self.thresh_size,
                "format": self.format}


def _check_format(name):
    if name not in FORMATS:
        raise ConfigError(f"unknown image format {name!r}; choose one of {', '.join(FORMATS)}")


@dataclasses.dataclass
class Outcome:
    """What one worker did with one input image."""

    source: str
    status: str  # "written", "done" (all outputs existed), "unreadable", "small"
    files: int = 0  # files written
    kept: bool = False  # resize: at or below the size, written at its own size
    reason: str = ""
    note: str = ""  # written, with a warning (bmp: transparency dropped)


@dataclasses.dataclass
class Summary:
    written: int = 0  # inputs for which something was written
    files: int = 0  # files written
    kept: int = 0
    done: int = 0
    unreadable: list = dataclasses.field(default_factory=list)  # (path, reason)
    small: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)  # (path, note): written, with a warning

    @property
    def skipped(self):
        return len(self.unreadable) + len(self.small)


# === Geometry ===

def resized_size(width, height, size, side="shorter"):
    """`(width, height)` after scaling `side` ("shorter" or "longer") to `size`, keeping the aspect ratio
    (the other side rounded to the nearest pixel, at least 1); unchanged if that side is already `size` or
    less (images are never enlarged)."""
    reference = min(width, height) if side == "shorter" else max(width, height)
    if reference <= size:
        return width, height
    scale = size / reference

    def scaled(length):
        return size if length == reference else max(1, int(length * scale + 0.5))

    return scaled(width), scaled(height)


def crop_positions(length, crop, step, thresh_size=0):
    """Start offsets of the crops along one axis, BasicSR's `extract_subimages` rule: `0, step, ...` while
    a whole crop fits, then `length - crop` if more than `thresh_size` pixels are left over. Empty when
    `length < crop`."""
    if length < crop:
        return []
    positions = list(range(0, length - crop + 1, step))
    if length - (positions[-1] + crop) > thresh_size:
        positions.append(length - crop)
    return positions


def crop_boxes(width, height, options):
    """`[(left, top, right, bottom)]`, row by row: the crops of a `width x height` image."""
    rows = crop_positions(height, options.crop, options.step, options.thresh_size)
    columns = crop_positions(width, options.crop, options.step, options.thresh_size)
    return [(x, y, x + options.crop, y + options.crop) for y in rows for x in columns]


def crop_names(base, count, format="png"):
    """`<base>_s001.png` (or `.bmp`) ...: BasicSR's names, 3 digits (more only beyond 999 crops)."""
    digits = max(3, len(str(count)))
    return [f"{base}_s{index:0{digits}d}.{format}" for index in range(1, count + 1)]


# === Files ===

def _is_within(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_sources(source, output=None):
    """Image files under `source`, subfolders included, sorted; hidden files and folders and the
    `output` folder (when it lies inside `source`) are left out. `DataError` if `source` is missing or
    holds no image."""
    from kx_vision.data.images import IMAGE_EXTENSIONS

    if not os.path.exists(source):
        raise DataError(f"input folder not found: {source}")
    if not os.path.isdir(source):
        raise DataError(f"{source} is not a folder; give a folder of images")
    files = []
    for root, folders, names in os.walk(source):
        folders[:] = sorted(f for f in folders if not f.startswith(".")
                            and not (output is not None and _is_within(os.path.join(root, f), output)))
        files.extend(os.path.join(root, n) for n in sorted(names)
                     if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    if not files:
        raise DataError(f"no images in {source} or its subfolders "
                        f"(looked for files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return files


def output_bases(files, source, output):
    """`{input: output path without extension}`: `DST/<subfolders>/<stem>`, or `<name>` (`photo.jpg`) for
    inputs of one folder whose stems are equal, ignoring case, so no output replaces another."""
    groups = {}
    for path in files:
        relative = os.path.relpath(path, source)
        folder, name = os.path.split(relative)
        groups.setdefault((folder, os.path.splitext(name)[0].lower()), []).append((path, folder, name))
    bases = {}
    for group in groups.values():
        for path, folder, name in group:
            bases[path] = os.path.join(output, folder, name if len(group) > 1 else os.path.splitext(name)[0])
    return bases


def _check_folders(source, output, options):
    """Refuse a DST that is SRC, holds SRC, is a file, holds files not written by this command, or was
    made with other options; then record the options in DST."""
    from kx_vision.fileio import atomic_write_text

    if os.path.exists(output) and not os.path.isdir(output):
        raise DataError(f"output {output} is a file; give a folder (it is created if missing)")
    if os.path.isdir(source) and _is_within(source, output):
        where = "is the input folder" if _is_within(output, source) else "holds the input folder"
        raise DataError(f"output folder {output} {where}; give a separate output folder")
    wanted = options.settings()
    settings_file = os.path.join(output, SETTINGS)
    if os.path.isfile(settings_file):
        try:
            with open(settings_file) as f:
                found = json.load(f)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read {settings_file}: {error}; delete {output} to start again") from error
        if isinstance(found, dict) and "format" not in found:
            found = {**found, "format": "png"}  # written before --format existed: PNGs
        if found != wanted:
            raise DataError(f"{output} was prepared with {_describe(found)}, not {_describe(wanted)}; "
                            f"give another output folder (or delete {output} to start again)")
        return
    if os.path.isdir(output) and any(not name.startswith(".") for name in os.listdir(output)):
        raise DataError(f"output folder {output} is not empty and was not written by `python -m kx_vision.prepare` "
                        f"(no {SETTINGS}); give a new or empty folder")
    os.makedirs(output, exist_ok=True)
    atomic_write_text(settings_file, json.dumps(wanted, indent=1) + "\n")


def _describe(settings):
    if not isinstance(settings, dict):
        return "unknown options"
    command = settings.get("command", "?")
    flags = " ".join(
        f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')} {value}"
        for key, value in settings.items()
        if key != "command" and value is not False and (key, value) != ("format", "png"))  # png: the default
    return f"`{command} {flags}`"


def _remove_stale_temporaries(output):
    from kx_vision.fileio import remove_stale_temporaries

    removed = 0
    for root, folders, _ in os.walk(output):
        folders[:] = [f for f in folders if not f.startswith(".tmp-")]
        removed += len(remove_stale_temporaries(root))
    return removed


# === Work on one image (in a worker process) ===

class _WriteError(KxVisionError):
    """An output that cannot be written: stops the command (the disk, not the input, is at fault)."""


def _open(path, allow_large, decode=True):
    """The image, decoded (its mode kept; `decode=False`: its header only, for its size), or a reason (str) why
    it cannot be used: the image layer's checks (`kx_vision.data.images`: not an image, truncated, beyond
    Pillow's decompression-bomb limit unless `allow_large`)."""
    from kx_vision.data import images

    try:
        with images._opened(path, allow_large) as image:
            if decode:
                image.load()
            return image
    except TooLargeImageError as error:
        return f"{error} (pass --allow-large-images if you trust this file)"
    except DataError as error:
        return str(error)


def _save(image, path, format="png"):
    def write(tmp):
        if format == "bmp":
            image.save(tmp, format="BMP")  # uncompressed: 24-bit RGB, or 8-bit with a grey palette for L
            return
        options = {"compress_level": PNG_COMPRESSION}
        transparency = image.info.get("transparency")
        if transparency is not None and image.mode in ("P", "L", "RGB", "I;16"):
            options["transparency"] = transparency
        image.save(tmp, format="PNG", **options)

    from kx_vision.fileio import atomic_write

    try:
        atomic_write(path, write)
    except OSError as error:
        if error.errno is None:  # Pillow's encoder, not the disk: this image cannot be stored as PNG
            raise
        if error.errno == errno.ENOSPC:
            raise _WriteError(f"no space left on the device while writing {path}; the files written before are "
                              "complete: free some space and run the same command again (it skips them)") from None
        raise _WriteError(f"cannot write {path}: {error.strerror or error} "
                          "(choose another output folder, or fix its permissions)") from None


_PNG_MODES = {"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}  # what Pillow writes to PNG as it is
_CV2_MODES = {"L", "LA", "RGB", "RGBA", "I;16"}  # and what cv2 resizes as an 8- or 16-bit array


def _png_ready(image, modes=_PNG_MODES):
    """`image` in a mode PNG keeps (and, with `_CV2_MODES`, cv2 can resize); its own mode where possible.
    Other 16-bit layouts become 16-bit grayscale, other colour modes RGB (RGBA if transparent).
    `ValueError` for what has no 8- or 16-bit form (floating point, 32-bit integers beyond 16 bits)."""
    import numpy as np
    from PIL import Image

    if image.mode in modes:
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "F":
        raise ValueError("floating-point images (mode F) are not supported")
    if image.mode.startswith("I"):
        array = np.asarray(image.convert("I") if image.mode != "I" else image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"mode {image.mode} image with values outside 0..65535")
        return Image.fromarray(array.astype(np.uint16))
    transparent = "transparency" in image.info or image.mode in ("PA", "RGBa", "La")
    return image.convert("RGBA" if transparent else "RGB")


_BMP_TRANSPARENT = {"RGBA": "RGB", "LA": "L", "PA": "RGB", "RGBa": "RGB", "La": "L"}


def _bmp_ready(image):
    """`(image, note)`: `image` (already `_png_ready`) as 8-bit L or RGB, which BMP holds as they are; `note`
    says what was dropped ("" if nothing). Transparency is dropped, the colour under it kept (as
    `data.images.to_rgb_array` reads it). `ValueError` for 16-bit images: BMP has 8 bits per channel."""
    if image.mode.startswith("I"):
        raise ValueError("16-bit images do not fit in BMP's 8 bits per channel; use --format png")
    transparent = image.mode in _BMP_TRANSPARENT or "transparency" in image.info
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    mode = _BMP_TRANSPARENT.get(image.mode, image.mode if image.mode in ("L", "RGB") else "RGB")
    if mode != image.mode:
        image = image.convert(mode)
    image.info.pop("transparency", None)
    note = f"transparency dropped (BMP holds none): written as {mode}, the colours under it kept" if transparent else ""
    return image, note


def _resize(image, size, masks):
    from PIL import Image

    if masks:
        resized = _png_ready(image).resize(size, Image.NEAREST)
        resized.info = dict(image.info)
        return resized
    import cv2
    import numpy as np

    array = np.asarray(_png_ready(image, _CV2_MODES))
    if (array.shape[1], array.shape[0]) != size:
        array = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
    return Image.fromarray(array)


def resize_one(source, base, options, allow_large=False):
    """Resize `source` into `base + ".png"` (or `.bmp`; skipped if it exists)."""
    target = f"{base}.{options.format}"
    if os.path.exists(target):
        return Outcome(source, "done")
    image = _open(source, allow_large)
    if isinstance(image, str):
        return Outcome(source, "unreadable", reason=image)
    size = resized_size(*image.size, options.size, options.side)
    note = ""
    try:
        ready = image
        if options.format == "bmp":  # before resizing: the same pixels as the png's colour channels
            ready, note = _bmp_ready(_png_ready(image, _CV2_MODES))
        _save(_resize(ready, size, options.masks), target, options.format)
    except (ValueError, OSError) as error:  # not _WriteError: a disk that cannot be written stops the command
        return Outcome(source, "unreadable", reason=f"cannot convert image (mode {image.mode}): {error}")
    return Outcome(source, "written", files=1, kept=size == image.size, note=note)


def _too_small(source, size, options):
    return Outcome(source, "small", reason=f"{size[0]}x{size[1]} is smaller than --crop {options.crop}")


def crop_one(source, base, options, allow_large=False):
    """Cut `source` into `base_s001.png`...; only the crops that do not exist yet are written. Whether all
    exist is decided from the file's header, without decoding it."""
    header = _open(source, allow_large, decode=False)
    if isinstance(header, str):
        return Outcome(source, "unreadable", reason=header)
    size = header.size
    boxes = crop_boxes(*size, options)
    if not boxes:
        return _too_small(source, size, options)
    names = crop_names(base, len(boxes), options.format)
    targets = [t for t in names if not os.path.exists(t)]
    if not targets:
        return Outcome(source, "done")
    image = _open(source, allow_large)
    if isinstance(image, str):
        return Outcome(source, "unreadable", reason=image)
    missing, written, note = set(targets), 0, ""
    try:
        ready = _png_ready(image)
        if options.format == "bmp":
            ready, note = _bmp_ready(ready)
        for box, target in zip(boxes, names):
            if target in missing:
                _save(ready.crop(box), target, options.format)
                written += 1
    except (ValueError, OSError) as error:  # not _WriteError: a disk that cannot be written stops the command
        return Outcome(source, "unreadable", reason=f"cannot convert image (mode {image.mode}): {error}")
    return Outcome(source, "written", files=written, note=note)


def _work(task):
    function, source, base, options, allow_large = task
    return function(source, base, options, allow_large)


def _worker_start():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent lets running images finish
    import cv2

    cv2.setNumThreads(1)  # one image per process; OpenCV's own threads would only compete


# === Running many ===

def default_workers():
    """The CPUs this process may use (its affinity where the OS tells it), else `os.cpu_count()`."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class _Counter:
    """The progress bar where tqdm is absent: `resize: 12/100 images` rewritten in place on a terminal."""

    def __init__(self, total, desc, stream=None):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._show()

    def _show(self):
        if self.enabled:
            self.stream.write(f"\r{self.desc}: {self.n}/{self.total} images")
            self.stream.flush()

    def update(self, n=1):
        self.n += n
        self._show()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _progress(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, desc)
    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, disable=None, leave=False)


def _pool(workers, count):
    """A started process pool, or None to work in this process (one worker or one image)."""
    workers = min(workers, count)
    if workers <= 1:
        return None
    # fork: a spawned worker would import the kx_vision package afresh, and with it Keras. But forking a
    # process that runs JAX's or TensorFlow's threads (prepare called from Python, a notebook, a test) can
    # deadlock the child: spawn there.
    threaded = any(name in sys.modules for name in ("jax", "tensorflow", "torch"))
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods and not threaded else "spawn")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)


def run(command, source, output, options, workers=None, allow_large=False):
    """Prepare every image under `source` into `output` (`command`: "resize" or "crop"); prints warnings
    and a summary line, returns the `Summary`."""
    start = time.perf_counter()
    source, output = os.fspath(source), os.fspath(output)
    files = list_sources(source, output)
    _check_folders(source, output, options)
    if _remove_stale_temporaries(output):
        print(f"removed temporary files that an interrupted run left in {output}", file=sys.stderr)
    function = resize_one if command == "resize" else crop_one
    bases = output_bases(files, source, output)
    tasks = [(function, path, bases[path], options, allow_large) for path in files]
    summary = Summary()
    pool = _pool(default_workers() if workers is None else workers, len(tasks))
    try:
        if pool is None:
            outcomes = map(_work, tasks)
        else:  # submitted (and the workers forked) before the progress bar starts a thread
            outcomes = (f.result() for f in concurrent.futures.as_completed([pool.submit(_work, t) for t in tasks]))
        bar = _progress(len(tasks), command)
        try:
            for outcome in outcomes:
                bar.update(1)
                if outcome.status == "written":
                    if outcome.note:
                        summary.notes.append((outcome.source, outcome.note))
                    summary.written += 1
                    summary.files += outcome.files
                    summary.kept += outcome.kept
                elif outcome.status == "done":
                    summary.done += 1
                else:
                    (summary.small if outcome.status == "small" else summary.unreadable).append(
                        (outcome.source, outcome.reason))
        finally:
            bar.close()
    finally:  # done, a write error or Ctrl-C: running images finish (writes are atomic), the rest are dropped
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    _report(command, summary, options, output, time.perf_counter() - start)
    return summary


def _report(command, summary, options, output, seconds):
    for path, note in summary.notes[:_MAX_LISTED]:
        print(f"warning: {path}: {note}", file=sys.stderr)
    if len(summary.notes) > _MAX_LISTED:
        print(f"warning: ... and {len(summary.notes) - _MAX_LISTED} more written with the same change",
              file=sys.stderr)
    problems = summary.unreadable + summary.small
    for path, reason in problems[:_MAX_LISTED]:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if len(problems) > _MAX_LISTED:
        print(f"warning: ... and {len(problems) - _MAX_LISTED} more skipped inputs", file=sys.stderr)
    if command == "resize":
        written = f"{summary.written} written"
        if summary.kept:
            written += f" ({summary.kept} kept at their size, not above --size {options.size})"
    else:
        written = f"{summary.written} cut into {summary.files} crops"
    parts = [written, f"{summary.done} skipped as done", f"{len(summary.unreadable)} unreadable"]
    if command == "crop":
        parts.append(f"{len(summary.small)} smaller than --crop {options.crop}")
    print(f"prepare {command}: {', '.join(parts)} -> {output} ({seconds:.1f} s)")


# === Command line ===

def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


EPILOG = ("Writes lossless PNGs (or uncompressed BMPs: --format bmp), mirrors subfolders, skips what a previous run "
          "finished. Exit status: 0 all done; "
          "1 some inputs skipped (named in warnings), the others written; 2 nothing done (bad argument or folder).")


def _subcommand(sub, name, help, description):
    """A subcommand's parser, with the arguments both take."""
    parser = sub.add_parser(name, help=help, description=description, epilog=EPILOG)
    parser.add_argument("source", metavar="SRC", help="folder of images (subfolders included)")
    parser.add_argument("output", metavar="DST", help="output folder (created if missing)")
    parser.add_argument("--workers", type=_positive, default=None,
                        help="processes working in parallel (default: the number of CPUs, here "
                             f"{default_workers()}); 1 works in this process")
    parser.add_argument("--allow-large-images", action="store_true",
                        help="accept images beyond Pillow's decompression-bomb limit (about 179 megapixels)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                        help="output files (default: %(default)s); bmp: uncompressed 24-bit RGB or 8-bit grayscale, "
                             "~14x faster to decode than PNG for ~1.4x the disk, for patches streamed in "
                             "training; transparency dropped, 16-bit images skipped")
    cli.add_verbose_argument(parser)
    return parser


def _parser():
    parser = argparse.ArgumentParser(prog="python -m kx_vision.prepare", description=__doc__.split("\n")[0],
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _subcommand(sub, "resize", "a smaller copy of a folder, aspect ratio kept",
                    "Scale every image so that its shorter (or longer) side is --size pixels, keeping its aspect "
                    "ratio; never enlarges. Images by area averaging (OpenCV INTER_AREA), masks (--masks) by "
                    "nearest neighbour.")
    p.add_argument("--size", type=_positive, required=True, help="target length of the side chosen by --side")
    p.add_argument("--side", choices=("shorter", "longer"), default="shorter",
                   help="the side scaled to --size (default: %(default)s, as the lesson's resize_imgs; "
                        "'longer' as fastai v2's resize_images)")
    p.add_argument("--masks", action="store_true",
                   help="segmentation masks: nearest neighbour, mode and palette kept, class ids unchanged "
                        "(png only)")
    p = _subcommand(sub, "crop", "overlapping crops of large images (BasicSR's sub-images)",
                    "Cut every image into --crop x --crop crops every --step pixels, plus one at the right and "
                    "bottom edges (BasicSR's extract_subimages); writes <stem>_s001.png, <stem>_s002.png, ... "
                    "(or .bmp) row by row.")
    p.add_argument("--crop", type=_positive, required=True, help="side of the square crops, in pixels")
    p.add_argument("--step", type=_positive, default=None, help="distance between crops (default: --crop / 2)")
    p.add_argument("--thresh-size", type=_non_negative, default=0,
                   help="add a last crop at the edge only if more than this many pixels are left over "
                        "(default: %(default)s: always)")
    return parser


def _command(args):
    if args.command == "resize":
        options = ResizeOptions(args.size, args.side, args.masks, args.format)
    else:
        options = CropOptions(args.crop, args.step or max(1, args.crop // 2), args.thresh_size, args.format)
    summary = run(args.command, args.source, args.output, options, args.workers, args.allow_large_images)
    return SKIPPED if summary.skipped else 0


def main(argv=None):
    """Exit status: 0 every input done, 1 some skipped, 2 nothing done (one line on stderr), 130 interrupted."""
    args = _parser().parse_args(argv)
    return cli.run(lambda: _command(args),
                   interrupted="interrupted: run the same command again to finish (finished files are kept)")


if __name__ == "__main__":
    sys.exit(main())
