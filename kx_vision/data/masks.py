"""Segmentation data without TensorFlow: image/mask pairing, mask decoding and validation, group split."""

import os
import random
import warnings

import numpy as np
from PIL import Image

from kx_vision.data.images import UnreadableFileError, list_images, load_image
from kx_vision.errors import DataError


def find_pairs(image_dirs, mask_dirs):
    """`[(image_path, mask_path)]` matched by file stem across parallel lists of folders.

    Raises `DataError` naming the folder and files when an image has no mask.
    """
    if isinstance(image_dirs, str):
        image_dirs = [image_dirs]
    if isinstance(mask_dirs, str):
        mask_dirs = [mask_dirs]
    if len(image_dirs) != len(mask_dirs):
        raise DataError(f"{len(image_dirs)} image folder(s) but {len(mask_dirs)} mask folder(s); give one mask folder per image folder")
    pairs = []
    for image_dir, mask_dir in zip(image_dirs, mask_dirs):
        masks = {os.path.splitext(os.path.basename(p))[0]: p for p in list_images([mask_dir])}
        images = list_images([image_dir])
        missing = [p for p in images if os.path.splitext(os.path.basename(p))[0] not in masks]
        if missing:
            shown = ", ".join(os.path.basename(p) for p in missing[:3])
            raise DataError(f"{len(missing)} image(s) in {image_dir} have no mask of the same name in {mask_dir} (e.g. {shown})")
        pairs.extend((p, masks[os.path.splitext(os.path.basename(p))[0]]) for p in images)
    return pairs


def load_mask(path, num_classes, ignore_class=None, divisor=1):
    """A mask file as `(H, W)` uint8 class ids, validated.

    Masks hold one class id per pixel (8-bit grayscale or palette indices; not colours). Values are
    divided by `divisor` first (255 for 0/255 binary masks). Any value outside `0..num_classes-1`
    (`0..1` for binary) and `ignore_class` raises `DataError` naming the file and the values; a file
    that cannot be decoded raises `UnreadableFileError`.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1", "I", "I;16"):
                raise DataError(
                    f"mask {path} has mode {image.mode}; masks must hold one class id per pixel "
                    "(8-bit grayscale or palette), not colours"
                )
            mask = np.asarray(image).astype(np.int64)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow's many failure types (truncated, not an image, ...)
        raise UnreadableFileError(f"cannot read mask {path}: {error}") from error
    if divisor != 1:
        mask = mask // divisor
    allowed = set(range(max(num_classes, 2)))
    if ignore_class is not None:
        allowed.add(int(ignore_class))
    bad = sorted(set(np.unique(mask).tolist()) - allowed)
    if bad:
        declared = f"0..{max(num_classes, 2) - 1}" + (f" and ignore {ignore_class}" if ignore_class is not None else "")
        raise DataError(f"mask {path} has values {bad[:10]} outside the declared classes ({declared})"
                        + (f" after dividing by {divisor}" if divisor != 1 else ""))
    return mask.astype(np.uint8)


def load_pairs(pairs, num_classes, ignore_class=None, divisor=1):
    """Decode `(image, mask)` file pairs; `(images, masks)` lists of uint8 arrays, sizes checked.

    As for super-resolution images (`images.load_images`), a pair whose image cannot be used
    (unreadable, truncated, too large) or whose mask cannot be decoded is skipped with a warning naming
    the file, and the skipped pairs are counted in a last warning. A mask that holds colours or values
    outside the classes, or whose size differs from its image's, stops with a `DataError` naming it:
    that is a mistake in the data set, not a damaged file.
    """
    images, masks, skipped = [], [], []

    def skip(path, error):
        warnings.warn(f"skipping image/mask pair {path}: {error}", stacklevel=3)
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
            raise DataError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        images.append(image)
        masks.append(mask)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image/mask pair(s) of {len(pairs)}", stacklevel=2)
    if not images:
        if skipped:
            raise DataError(f"none of the {len(pairs)} image/mask pairs could be read (first: {pairs[0][0]})")
        raise DataError("no image/mask pairs")
    return images, masks


def sequence_of(path):
    """Group of a file for splitting: the part of its name before the first '_' (a CamVid
    sequence such as `0016E5`, a Carvana car id), or the whole stem if there is none."""
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
