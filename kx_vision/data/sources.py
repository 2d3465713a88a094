"""Where training items come from: one `Source` protocol, and the decision to hold a set in memory.

A source is a set of items that `kx_vision.data.streaming` decodes, caches and streams the same way whatever
they are:

- `FolderSource`: image files, their sizes read from the headers (nothing decoded);
- `ArraySource`: images (or image/mask pairs) already decoded, in memory;
- `kx_vision.data.masks.PairSource`: image/mask file pairs, sizes checked from the headers;
- `kx_vision.data.tfds_source.TfdsSource`: tensorflow-datasets sets (images, or images and masks), read in
  their own shuffled order (`sequential`).

This module imports nothing heavy (NumPy; Pillow only when an image is resized).
"""

import math
from typing import Protocol

import numpy as np

CACHE_MODES = ("auto", "always", "never")
# `data.cache=auto` keeps the decoded images in memory when they take at most this many MiB (width x height x
# 3 bytes each, from the file headers). 128 MiB holds the 291 images of T91 + BSD200 (104 MiB), where the
# cache is faster, and bounds what caching can add to a run's memory; DIV2K (800 2K images, ~5.5 GiB) streams.
CACHE_LIMIT_MIB = 128


class Source(Protocol):
    """A set of items to decode.

    - `what`: words for messages ("training image"); `skip_kind`: how an item that fails to decode is reported
      (a key of `kx_vision.data.skips.REPORTS`);
    - `count`: the number of items (None where a sequential source cannot tell before reading it);
    - `sizes`: `(width, height)` of each item as decoded, from the file headers; None where only decoding tells;
    - `sequential`: the items can only be read in the source's own order, pass after pass (`keys(pass)`),
      not by index; `in_memory`: decoding is a lookup;
    - `keys(pass_index)`: the keys of a pass's items (an index, or what a sequential source read), in the
      order the source gives them (`None`: a sequential source's stored order, unshuffled);
    - `name(key)`: the item's name in messages; `decode(key)`: the decoded item, or a `DataError` saying why not;
    - a sequential source also has a `description` ("tfds:div2k/bicubic_x2:train") for messages about a pass.
    """

    what: str
    skip_kind: str
    count: int | None
    sizes: list | None
    sequential: bool
    in_memory: bool

    def keys(self, pass_index=None): ...

    def name(self, key): ...

    def decode(self, key): ...


class _Indexed:
    """What sources read by index share."""

    sequential = False
    in_memory = False
    skip_kind = "unreadable"

    def keys(self, pass_index=None):
        return range(self.count)

    def __len__(self):
        return self.count


class FolderSource(_Indexed):
    """Image files: decoded as `(H, W, 3)` uint8 RGB, each short side raised to `min_side` first (bicubic).

    Training streams only crop, so an uncompressed BMP is read, not decoded (`images.load_image_view`)."""

    def __init__(self, paths, sizes, min_side=None, what="training image"):
        self.paths, self.min_side, self.what = list(paths), min_side, what
        self.sizes = [upscaled_size(w, h, min_side) for w, h in sizes]
        self.count = len(self.paths)

    @classmethod
    def scan(cls, folders, min_size=None, min_side=None, skip_small=False, what="training image"):
        """The images of `folders`, listed and their headers read (`images.scan_images`: unreadable ones
        skipped with a warning; one smaller than `min_size` refused, or skipped with `skip_small`)."""
        from kx_vision.data.images import list_images, scan_images

        paths, sizes = scan_images(list_images(folders), min_size=None if min_side else min_size, what=what,
                                   skip_small=skip_small)
        return cls(paths, sizes, min_side, what)

    def name(self, key):
        return self.paths[key]

    def decode(self, key):
        from kx_vision.data.images import load_image_view

        return upscale_to(load_image_view(self.paths[key]), self.min_side)


class ArraySource(_Indexed):
    """Items already decoded: `(H, W, 3)` uint8 images, or `(image, mask)` pairs."""

    in_memory = True

    def __init__(self, items, names=None, what="image"):
        self.items, self.what = list(items), what
        self.count = len(self.items)
        self.names = list(names) if names is not None else [f"<image {i}>" for i in range(self.count)]
        self.sizes = [_image_of(item).shape[1::-1] for item in self.items]

    def name(self, key):
        return self.names[key]

    def decode(self, key):
        return self.items[key]


def _image_of(item):
    return item[0] if isinstance(item, tuple) else item


def item_mib(item):
    """MiB an item (an image, or an image and its mask) takes decoded."""
    return sum(array.nbytes for array in (item if isinstance(item, tuple) else (item,))) / 2**20


def decoded_mib(sizes, channels=3):
    """MiB that images of `(width, height)` sizes take decoded, `channels` bytes a pixel (uint8 RGB: 3; RGB and
    its mask: 4)."""
    return sum(int(w) * int(h) * channels for w, h in sizes) / 2**20


def use_cache(mode, sizes, limit_mib=CACHE_LIMIT_MIB, channels=3):
    """Whether `data.cache=mode` keeps the decoded items in memory: always, never, or (auto) when their
    decoded size (`decoded_mib(sizes, channels)`) is at most `limit_mib`."""
    check_cache_mode(mode)
    if mode == "auto":
        return decoded_mib(sizes, channels) <= limit_mib
    return mode == "always"


def check_cache_mode(mode):
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")


def cache_reason(mode, cached, limit_mib):
    """Why a set is (not) held in memory, for the line a task prints about its data."""
    if mode != "auto":
        return f"data.cache={mode}"
    return f"data.cache=auto: {'at most' if cached else 'more than'} data.cache_limit_mib={limit_mib:g}"


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
    height, width = image.shape[:2]
    size = upscaled_size(width, height, min_side)
    if size == (width, height):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))
