"""Pictures of results: grids of images with captions, class colours, zoomed crops, a confusion matrix.

Pure NumPy and Pillow (matplotlib only for `confusion_matrix_figure`): no Keras, no data, no model. The
tasks (`Task.render_examples`), the samples callback and `evaluate --save-examples` compose their
pictures here, so that every picture of kx_vision has the same layout.

A grid (`grid`) puts panels in rows and columns, each panel under its caption, at its own pixels:
nothing is resized or blended, so a panel read back from the saved PNG equals the uint8 array it shows
(`Grid.panel` cuts one out; a test checks it). The layout, in pixels:

- a margin of `gap` around the grid and `gap` between cells;
- column `j` is as wide as its widest panel, row `i` is `caption_height` (0 when no panel has a
  caption) plus its tallest panel;
- a panel sits at the top-left of its cell, under the caption band; the rest is `background`.

Images are `(H, W, 3)` or `(H, W)` / `(H, W, 1)` (grey), uint8 as they are, or float in [0, 1] (clipped,
then rounded to the nearest 8-bit level, as `inference.predict_whole` does).
"""

import collections
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kx_vision.errors import KxVisionError
from kx_vision.fileio import atomic_write

# Colours of class ids in masks and overlays: CamVid's 11 classes (Sky, Building, Pole, Road, Pavement, Tree,
# SignSymbol, Fence, Car, Pedestrian, Bicyclist), its void (11, black), then a spread of hues up to 255.
# `kx_vision.predict` colours its masks and overlays with it too.
PALETTE = np.array([
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0],
] + [[(37 * i) % 256, (97 * i) % 256, (173 * i) % 256] for i in range(12, 256)], dtype=np.uint8)

CAPTION_FONT_SIZE = 13
CAPTION_COLOUR = (0, 0, 0)

class Grid(collections.namedtuple("Grid", ["image", "boxes"])):
    """A composed picture: `image`, a `(H, W, 3)` uint8 array, and `boxes`, one list per row of
    `(top, left, height, width)` of each panel (None for an empty cell)."""

    def panel(self, row, column):
        """The pixels of one panel (a view of `image`)."""
        top, left, height, width = self.boxes[row][column]
        return self.image[top : top + height, left : left + width]


# --- arrays ---

def to_uint8(image):
    """`image` as an `(H, W, 3)` uint8 array: uint8 kept, floats in [0, 1] clipped and rounded; grey
    repeated to three channels. A batch of one (`(1, H, W, C)`) is taken as its image."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise KxVisionError(f"cannot show an array of shape {image.shape} as an image: (H, W, 3) or (H, W) expected")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    return np.round(np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def is_image(array):
    """Whether `array` looks like one image `to_uint8` shows: `(H, W, 1 or 3)`, or a batch of one of them."""
    shape = np.shape(array)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    return len(shape) == 3 and shape[-1] in (1, 3) and min(shape[:2]) > 0


def colorize(labels, palette=PALETTE):
    """Class ids `(H, W)` as colours `(H, W, 3)` uint8."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    return np.asarray(palette, np.uint8)[labels.astype(np.int64)]


def overlay(image, labels, alpha=0.5, ignore_class=None, palette=PALETTE):
    """Class colours blended over an image: `(1 - alpha) * image + alpha * colour`, rounded to uint8
    (as `predict segmentation`'s `_overlay.png`); pixels of `ignore_class` show the image alone."""
    image = to_uint8(image)
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.shape != image.shape[:2]:
        raise KxVisionError(f"labels of shape {labels.shape} do not cover an image of {image.shape[:2]}")
    blended = (image * (1 - alpha) + colorize(labels, palette) * alpha).round().astype(np.uint8)
    if ignore_class is not None:
        keep = labels == ignore_class
        blended[keep] = image[keep]
    return blended


def center_crop(image, height, width):
    """The central `height` x `width` window of `image` (the whole image along an axis that is smaller)."""
    top = max((image.shape[0] - height) // 2, 0)
    left = max((image.shape[1] - width) // 2, 0)
    return image[top : top + height, left : left + width]


def zoom(image, factor):
    """Nearest-neighbour enlargement by an integer `factor`: each pixel becomes a `factor` x `factor` block."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def detail_box(image, size):
    """`(top, left)` of the `size` x `size` window of `image` with the most detail (the largest sum of
    absolute horizontal and vertical differences of its grey level): where an upscaler's result is worth
    a closer look. The first such window, scanning rows then columns."""
    grey = to_uint8(image).astype(np.float64).mean(-1)
    height, width = grey.shape
    size = min(size, height, width)
    detail = np.zeros_like(grey)
    detail[:, 1:] += np.abs(np.diff(grey, axis=1))
    detail[1:, :] += np.abs(np.diff(grey, axis=0))
    total = np.pad(detail.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(top), int(left)


# --- composing ---

@functools.cache
def caption_font(size=CAPTION_FONT_SIZE):
    """Pillow's default font (its FreeType font at `size` px where Pillow has FreeType, else its bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def caption_height(font=None):
    """Height in pixels of the caption band above each panel."""
    font = font or caption_font()
    top, bottom = font.getbbox("Ag(|)")[1::2]
    return int(bottom - min(top, 0)) + 4


def grid_layout(sizes, gap=4, captions=False, font=None):
    """`(height, width, boxes)` of a grid of panels of `sizes` (rows of `(height, width)` or None): the
    layout described in the module docstring."""
    band = caption_height(font) if captions else 0
    columns = max(len(row) for row in sizes)
    widths = [max((row[j][1] for row in sizes if j < len(row) and row[j] is not None), default=0)
              for j in range(columns)]
    heights = [max((size[0] for size in row if size is not None), default=0) + band for row in sizes]
    lefts = np.cumsum([gap] + [w + gap for w in widths])
    tops = np.cumsum([gap] + [h + gap for h in heights])
    boxes = [[None if size is None else (int(tops[i]) + band, int(lefts[j]), int(size[0]), int(size[1]))
              for j, size in enumerate(row)] for i, row in enumerate(sizes)]
    return int(tops[-1]), int(lefts[-1]), boxes


def grid(rows, captions=None, gap=4, background=255, font=None):
    """Panels in rows (lists of images, None for an empty cell), each under its caption (`captions`: the
    same nesting, strings or None), laid out as the module docstring says. Returns a `Grid`. A caption
    longer than its column is cut at the column's edge."""
    panels = [[None if panel is None else to_uint8(panel) for panel in row] for row in rows]
    if not panels or not any(p is not None for row in panels for p in row):
        raise KxVisionError("nothing to show: a grid needs at least one panel")
    captions = captions or [[None] * len(row) for row in panels]
    has_captions = any(text for row in captions for text in row)
    font = font or caption_font()
    sizes = [[None if p is None else p.shape[:2] for p in row] for row in panels]
    height, width, boxes = grid_layout(sizes, gap, has_captions, font)
    canvas = np.full((height, width, 3), background, np.uint8)
    band = caption_height(font) if has_captions else 0
    widths = [max((size[1] for row in sizes for k, size in enumerate(row) if k == j and size is not None), default=0)
              for j in range(max(len(row) for row in sizes))]
    for i, row in enumerate(panels):
        for j, panel in enumerate(row):
            if panel is None:
                continue
            top, left, h, w = boxes[i][j]
            canvas[top : top + h, left : left + w] = panel
            text = captions[i][j] if i < len(captions) and j < len(captions[i]) else None
            if text:  # drawn on its own band, as wide as the column: a long caption is cut there
                label = Image.new("RGB", (widths[j], band), (background,) * 3)
                ImageDraw.Draw(label).text((1, 1), str(text), fill=CAPTION_COLOUR, font=font)
                canvas[top - band : top, left : left + widths[j]] = np.asarray(label)
    return Grid(canvas, boxes)


def legend(class_names, palette=PALETTE, max_height=None, swatch=12, font=None, background=255):
    """A panel naming the colour of each class: a swatch and the class name per line, in as many columns
    as keep it within `max_height` pixels (default: one column)."""
    font = font or caption_font()
    line = max(swatch, caption_height(font)) + 2
    per_column = max(1, (max_height or line * len(class_names)) // line)
    columns = -(-len(class_names) // per_column)
    column = swatch + 6 + max(int(font.getlength(str(name))) for name in class_names) + 8
    image = Image.new("RGB", (column * columns, line * min(per_column, len(class_names))), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(class_names):
        left, top = column * (i // per_column), line * (i % per_column)
        middle = top + (line - swatch) // 2
        draw.rectangle((left, middle, left + swatch - 1, middle + swatch - 1), fill=tuple(int(c) for c in palette[i]))
        draw.text((left + swatch + 6, top + 1), str(name), fill=CAPTION_COLOUR, font=font)
    return np.asarray(image)


def png_bytes(image):
    """An image (a `Grid` or an array `to_uint8` takes) encoded as PNG."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image.image if isinstance(image, Grid) else image)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image, path):
    """Write an image (a `Grid` or an array `to_uint8` takes) as a lossless PNG, atomically."""
    array = to_uint8(image.image if isinstance(image, Grid) else image)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path


# --- the pictures of each kind of result ---

def superres_strip(bicubic, model, truth, bicubic_psnr=None, model_psnr=None, zoom_size=None):
    """bicubic | model | ground truth, Y-PSNR in the captions, and below them the same
    `zoom_size`-pixel square of each (default: a quarter of the shorter side, at least 16 px), where the
    truth has the most detail (`detail_box`), enlarged by the largest integer factor that keeps it within
    the image. Returns a `Grid` (row 0: the images; row 1: the zoomed crops)."""
    bicubic, model, truth = (to_uint8(a) for a in (bicubic, model, truth))
    if not bicubic.shape == model.shape == truth.shape:
        raise KxVisionError(f"bicubic {bicubic.shape}, model {model.shape} and truth {truth.shape} differ in size")
    height, width = truth.shape[:2]
    size = min(zoom_size or max(min(height, width) // 4, 16), height, width)
    factor = max(min(height, width) // size, 1)
    top, left = detail_box(truth, size)
    crops = [zoom(image[top : top + size, left : left + size], factor) for image in (bicubic, model, truth)]

    def db(value):
        return "" if value is None else f" {value:.2f} dB"

    gain = f" ({model_psnr - bicubic_psnr:+.2f})" if None not in (model_psnr, bicubic_psnr) else ""
    where = f"x{factor} zoom, rows {top}-{top + size - 1}, columns {left}-{left + size - 1}"
    return grid([[bicubic, model, truth], crops],
                [[f"bicubic{db(bicubic_psnr)}", f"model{db(model_psnr)}{gain}", "ground truth"],
                 [where, f"model, x{factor}", f"ground truth, x{factor}"]])


def segmentation_row(image, truth, prediction, ignore_class=None, alpha=0.5, palette=PALETTE):
    """`(panels, captions)` of one image: the image, its truth and the prediction, each class colour
    blended over the image (`overlay`; `ignore_class` pixels of the truth show the image). The
    prediction's caption gives its pixel accuracy (`ignore_class` pixels not counted)."""
    truth = np.asarray(truth).reshape(np.shape(prediction))
    valid = truth != ignore_class if ignore_class is not None else np.ones(truth.shape, bool)
    accuracy = float(np.mean(truth[valid] == np.asarray(prediction)[valid])) if valid.any() else float("nan")
    panels = [to_uint8(image), overlay(image, truth, alpha, ignore_class, palette),
              overlay(image, prediction, alpha, None, palette)]
    return panels, ["image", "truth", f"prediction: {100 * accuracy:.0f}% right"]  # fits 128 px


def class_ids(probabilities):
    """Predicted class ids `(..., H, W)` from probabilities `(..., H, W, C)` (C = 1: sigmoid, threshold 0.5)."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] >= 0.5).astype(np.int64)
    return probabilities.argmax(-1)


# --- the confusion matrix ---

DPI = 100


def confusion_matrix_size(num_classes):
    """`(width, height)` in pixels of `confusion_matrix_figure`'s picture of `num_classes` classes."""
    side = 3.0 + 0.5 * num_classes  # inches: room for the tick labels and 0.5 inch per cell
    return int(round((side + 1.5) * DPI)), int(round(side * DPI))


def confusion_matrix_figure(cm, class_names=None, ignored=None):
    """A matplotlib figure of a confusion matrix (rows: true class, columns: predicted class), each row
    as the percentage of the true class's pixels given to each prediction (rows of a class absent from
    the truth are left blank), the percentages written in the cells up to 20 classes, and a colour bar.
    `ignored`: what was left out, for the title (e.g. "void ignored")."""
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend

    cm = np.asarray(cm, np.int64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None and len(class_names) == n else [str(i) for i in range(n)]
    totals = cm.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(totals > 0, 100.0 * cm / np.maximum(totals, 1), np.nan)
    width, height = confusion_matrix_size(n)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_subplot()
    shown = axes.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest")
    bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("pixels of the true class (%)")
    axes.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix ({int(cm.sum()):,} pixels{', ' + ignored if ignored else ''})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if not np.isnan(percent[i, j]):
                    axes.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if percent[i, j] > 60 else "black")
    figure.tight_layout()
    return figure


def save_confusion_matrix(cm, path, class_names=None, ignored=None):
    """`confusion_matrix_figure` as a PNG of `confusion_matrix_size` pixels, written atomically."""
    figure = confusion_matrix_figure(cm, class_names, ignored)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return path
