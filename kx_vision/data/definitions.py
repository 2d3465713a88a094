"""The one definition of the two transforms that make a super-resolution training pair (the 8 dihedral
symmetries of the patch, and the bicubic degradation that makes its LR input) and of the augmentation of a
segmentation pair (at the end).

Three array libraries apply them, each through a thin adapter that only supplies its primitives:

- `keras.ops` (`kx_vision.data.transforms.dihedral` / `bicubic_downscale`): any backend, on the accelerator;
  validation pairs, evaluation, the self-ensemble, the PyDataset pipeline's degradation;
- TensorFlow ops (`kx_vision.data.superres.random_dihedral_tf` / `degrade_tf`): inside the tf.data graph,
  where `k` is a tensor and `keras.ops` cannot run under the JAX backend;
- NumPy (`dihedral_numpy` here, re-exported by `kx_vision.data.arrays`): the PyDataset pipeline's transforms.

What index `k` means, how indices compose and invert (the self-ensemble undoes each transform), how the
LR image is made and rounded are written here once; `tests/test_data_arrays.py` checks that the adapters
agree. This module needs NumPy only.
"""

import math
from typing import NamedTuple

import numpy as np

NUM_DIHEDRAL = 8


def dihedral_parts(k):
    """`(turns, flip)` of symmetry `k` of the square: `k % 4` counter-clockwise quarter turns of the image,
    then a left-right flip when `k >= 4` (`tf.image.rot90(x, k % 4)`, then `tf.image.flip_left_right`).
    0 is the identity. Works on a Python int and on an integer tensor alike."""
    return k % 4, k >= 4


def check_dihedral_index(k):
    """`k` as a Python int in [0, 8), or a ValueError."""
    k = int(k)
    if not 0 <= k < NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in [0, {NUM_DIHEDRAL}), got {k}")
    return k


def apply_dihedral(images, k, rot90, flip_if):
    """Symmetry `k` (see `dihedral_parts`) of `(..., H, W, C)` images, from an array library's primitives:

    - `rot90(images, turns)`: `turns` counter-clockwise quarter turns in the H/W plane;
    - `flip_if(images, flip)`: a left-right flip (reversed W axis) where `flip` is true, else `images`.

    `turns` and `flip` are Python values for a Python `k` and tensors for a tensor `k`.
    """
    turns, flip = dihedral_parts(k)
    return flip_if(rot90(images, turns), flip)


def dihedral_numpy(images, k):
    """Symmetry `k` of `(..., H, W, C)` NumPy images (a view, not a copy)."""
    k = check_dihedral_index(k)
    return apply_dihedral(
        np.asarray(images),
        k,
        rot90=lambda x, turns: np.rot90(x, turns, axes=(-3, -2)),
        flip_if=lambda x, flip: x[..., ::-1, :] if flip else x,
    )


def _composition_table():
    """`table[a][b]`: the index of "symmetry `a`, then symmetry `b`", read off the definition above by
    applying it to a probe whose 8 images are distinct (the four corners of a 2x2 square)."""
    probe = np.arange(4).reshape(2, 2, 1)
    index = {dihedral_numpy(probe, k).tobytes(): k for k in range(NUM_DIHEDRAL)}
    if len(index) != NUM_DIHEDRAL:
        raise AssertionError("the dihedral definition does not give 8 distinct symmetries")
    return tuple(
        tuple(index[dihedral_numpy(dihedral_numpy(probe, a), b).tobytes()] for b in range(NUM_DIHEDRAL))
        for a in range(NUM_DIHEDRAL)
    )


DIHEDRAL_COMPOSITION = _composition_table()


def compose_dihedral(a, b):
    """`c` with `dihedral(dihedral(x, a), b) == dihedral(x, c)`."""
    return DIHEDRAL_COMPOSITION[check_dihedral_index(a)][check_dihedral_index(b)]


def inverse_dihedral(k):
    """The index undoing symmetry `k`: `dihedral(dihedral(x, k), inverse_dihedral(k)) == x` (quarter turns
    invert to the opposite turns; the four reflections, `k >= 4`, are their own inverses)."""
    return DIHEDRAL_COMPOSITION[check_dihedral_index(k)].index(0)


class Degradation(NamedTuple):
    """How the LR input is made from the HR image: resized by `interpolation` with `antialias` (bicubic with
    antialiasing is MATLAB `imresize` semantics, the benchmarks' degradation, as `tf.image.resize` and
    `keras.ops.image.resize` give it), then clipped to [0, 1] and rounded to `levels + 1` levels, as LR
    benchmark images are stored as 8-bit files."""

    interpolation: str = "bicubic"
    antialias: bool = True
    levels: int = 255


DEGRADATION = Degradation()


def lr_size(height, width, scale):
    """`(height // scale, width // scale)`, or a ValueError when the image is not a multiple of `scale`."""
    if height % scale or width % scale:
        raise ValueError(f"image size {height}x{width} is not a multiple of the scale {scale}")
    return height // scale, width // scale


def quantize(images, clip, round_, levels=DEGRADATION.levels):
    """Images in [0, 1] clipped and rounded to `levels + 1` levels, from the library's `clip(x, lo, hi)` and
    `round_(x)` (round half to even, as NumPy, TensorFlow and JAX round)."""
    return round_(clip(images, 0.0, 1.0) * float(levels)) / float(levels)


def degrade(images, size, resize, clip, round_, quantize_levels=True):
    """The LR input of `(N, H, W, C)` float HR images in [0, 1], at `size = (h, w)`, from an array library's
    primitives: `resize(images, size, interpolation, antialias)`, and `clip`, `round_` as in `quantize`."""
    lr = resize(images, size, DEGRADATION.interpolation, DEGRADATION.antialias)
    return quantize(lr, clip, round_) if quantize_levels else lr


# --- the segmentation augmentation ---
#
# A random crop covering `MIN_CROP`-100% of each side, a random left-right flip, resized to the batches' size
# (bilinear with antialiasing for the image, nearest-neighbour for the mask, so class ids stay ids), a random
# rotation within +-`rotate_degrees` about the centre (the same angle for both: bilinear for the image, nearest
# for the mask, borders reflected, as fastai's `rotate`), then a random brightness/contrast change of the image
# only. The parameters are drawn here, in NumPy, for both pipelines; TensorFlow (`kx_vision.data.segmentation`,
# inside tf.data) and NumPy/OpenCV/Pillow (`kx_vision.data.segmentation_arrays`) supply the array primitives.

MIN_CROP = 0.6  # smallest crop side, as a fraction of the image's
JITTER = 0.1  # brightness shift and contrast change, each uniform in [-JITTER, JITTER]
AUGMENTATION_DRAWS = 8  # uniform numbers in [0, 1) that one augmentation is made of


def draw_augmentation(rng, count=None):
    """The random numbers of one augmentation (float64, `AUGMENTATION_DRAWS` of them), or of `count` of them (an
    array of `count` rows), from a NumPy `Generator`; `augmentation_params` makes them parameters for an image of
    a given size."""
    return rng.random(AUGMENTATION_DRAWS if count is None else (count, AUGMENTATION_DRAWS))


def augmentation_params(draws, height, width, min_crop=MIN_CROP, rotate_degrees=0.0, to_int=int, cast=float,
                        minimum=min, maximum=max):
    """`(top, left, crop_height, crop_width, flip, angle, contrast, brightness)` of an `height` x `width` image
    from `draws`, with the library's `to_int` (truncation of a non-negative number), `cast` (an integer as a
    float) and `minimum` / `maximum` (of two numbers)."""
    crop_h = maximum(to_int(cast(height) * (min_crop + (1.0 - min_crop) * draws[0])), 1)
    crop_w = maximum(to_int(cast(width) * (min_crop + (1.0 - min_crop) * draws[1])), 1)
    top = minimum(to_int(draws[2] * cast(height - crop_h + 1)), height - crop_h)
    left = minimum(to_int(draws[3] * cast(width - crop_w + 1)), width - crop_w)
    flip = draws[4] < 0.5
    angle = (2.0 * draws[5] - 1.0) * float(rotate_degrees)
    contrast, brightness = (2.0 * draws[6] - 1.0) * JITTER, (2.0 * draws[7] - 1.0) * JITTER
    return top, left, crop_h, crop_w, flip, angle, contrast, brightness


def rotation_map(angle, height, width, cos, sin):
    """The inverse map of a rotation by `angle` degrees about the centre of an `height` x `width` image (floats),
    as the 6 numbers of an affine map: output pixel `(x, y)` reads input `(a0 x + a1 y + a2, b0 x + b1 y + b2)`
    (`ImageProjectiveTransformV3`'s first six, `cv2.warpAffine(..., WARP_INVERSE_MAP)`'s matrix)."""
    radians = angle * (math.pi / 180.0)
    c, s = cos(radians), sin(radians)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    return c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy


def jitter_map(mean, contrast, brightness):
    """`(scale, offset)` of the photometric change of an image in [0, 1] whose mean is `mean`:
    `(x - mean) * (1 + contrast) + mean + brightness = x * scale + offset`, clipped to [0, 1] after."""
    scale = 1.0 + contrast
    return scale, mean + brightness - mean * scale


def augment_pair(image, mask, params, size, flip_if, resize, rotate, jitter, rotates=True):
    """The segmentation augmentation with `params` (`augmentation_params`) of an `(H, W, 3)` image and its
    `(H, W)` mask, resized to `size`, from an array library's primitives: `flip_if(x, flip)`,
    `resize(image, mask, size)`, `rotate(image, mask, angle)` (when `rotates`) and
    `jitter(image, contrast, brightness)`."""
    top, left, crop_h, crop_w, flip, angle, contrast, brightness = params
    image, mask = image[top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]
    image, mask = resize(flip_if(image, flip), flip_if(mask, flip), size)
    if rotates:
        image, mask = rotate(image, mask, angle)
    return jitter(image, contrast, brightness), mask
