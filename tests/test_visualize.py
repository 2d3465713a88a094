"""kx_vision.inference.pictures: the saved pictures show exactly the arrays they are made of."""

import numpy as np
import pytest
from PIL import Image

from kx_vision.errors import KxVisionError
from kx_vision.inference import pictures


def read_png(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def expected_boxes(sizes, gap, band):
    """The documented layout, computed independently: margins and gaps of `gap`, columns as wide as
    their widest panel, rows as tall as their tallest panel plus the caption band."""
    widths = [max(row[j][1] for row in sizes if j < len(row) and row[j]) for j in range(max(map(len, sizes)))]
    heights = [max(s[0] for s in row if s) + band for row in sizes]
    boxes, top = [], gap
    for i, row in enumerate(sizes):
        left, line = gap, []
        for j, size in enumerate(row):
            line.append(None if size is None else (top + band, left, size[0], size[1]))
            left += widths[j] + gap
        boxes.append(line)
        top += heights[i] + gap
    return boxes, (top, gap + sum(w + gap for w in widths))


def test_saved_grid_panels_equal_the_arrays_they_show(tmp_path, rng):
    a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    b = rng.random((20, 25, 3)).astype(np.float32) * 1.2 - 0.1  # floats outside [0, 1] are clipped
    c = rng.integers(0, 256, (10, 12), dtype=np.uint8)  # grey
    shown = pictures.grid([[a, b], [None, c]], [["a caption far longer than its panel", "b"], [None, "c"]], gap=3)
    path = pictures.save_png(shown, tmp_path / "grid.png")
    back = read_png(path)
    band = pictures.caption_height()
    boxes, size = expected_boxes([[(30, 40), (20, 25)], [None, (10, 12)]], 3, band)
    assert shown.boxes == boxes and back.shape == (*size, 3)
    np.testing.assert_array_equal(back, shown.image)

    def panel(i, j):
        top, left, height, width = boxes[i][j]
        return back[top : top + height, left : left + width]

    np.testing.assert_array_equal(panel(0, 0), a)
    np.testing.assert_array_equal(panel(0, 1), np.round(np.clip(b, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(panel(1, 1), np.repeat(c[..., None], 3, -1))
    # Captions are drawn in the band above their panel, cut at the column's edge, and nowhere else.
    top, left, _, _ = boxes[0][0]
    caption = back[top - band : top, left : left + 40]
    assert (caption < 128).any()
    empty = back[boxes[1][1][0] - band - 3 : boxes[1][1][0], : boxes[1][1][1]]  # left of 'c': no panel, no text
    assert (empty == 255).all()


def test_to_uint8_rounds_and_clips():
    floats = np.array([[[-0.5, 0.0, 0.5 / 255]], [[0.2, 1.0, 7.0]]], np.float32)
    np.testing.assert_array_equal(pictures.to_uint8(floats)[..., 0], [[0], [51]])
    np.testing.assert_array_equal(pictures.to_uint8(floats)[1, 0], [51, 255, 255])
    assert pictures.to_uint8(np.zeros((1, 4, 5, 1), np.float32)).shape == (4, 5, 3)
    with pytest.raises(KxVisionError, match=r"shape \(4, 5, 2\)"):
        pictures.to_uint8(np.zeros((4, 5, 2)))


def test_overlay_blends_class_colours_and_leaves_ignored_pixels(rng):
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 12, (6, 7))
    out = pictures.overlay(image, labels, alpha=0.25, ignore_class=11)
    want = np.round(0.75 * image + 0.25 * pictures.PALETTE[labels]).astype(np.uint8)
    want[labels == 11] = image[labels == 11]
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(pictures.PALETTE[3], [128, 64, 128])  # CamVid's road


def test_predicted_masks_carry_the_palette(tmp_path):
    from kx_vision import predict
    from kx_vision.models import UNet

    UNet(num_classes=3, backbone="simple", backbone_weights=None, max_filters=8).save(tmp_path / "unet.keras")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    predict.run_segmentation(str(tmp_path / "unet.keras"), str(tmp_path / "in"), str(tmp_path / "out"))
    palette = np.asarray(Image.open(tmp_path / "out" / "a_mask.png").getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette, pictures.PALETTE)


def test_detail_box_finds_the_textured_square(rng):
    image = np.full((60, 80, 3), 100, np.uint8)
    image[20:36, 50:66] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert pictures.detail_box(image, 16) == (20, 50)


def test_superres_strip_shows_the_images_and_zoomed_crops_of_one_place(rng):
    truth = np.full((64, 48, 3), 90, np.uint8)
    truth[40:52, 8:20] = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    bicubic, model = (rng.integers(0, 256, truth.shape, dtype=np.uint8) for _ in range(2))
    strip = pictures.superres_strip(bicubic, model, truth, 28.0, 29.5, zoom_size=12)
    factor = 48 // 12
    top, left = pictures.detail_box(truth, 12)
    assert (top, left) == (40, 8)
    for j, image in enumerate((bicubic, model, truth)):
        np.testing.assert_array_equal(strip.panel(0, j), image)
        crop = strip.panel(1, j)
        assert crop.shape == (12 * factor, 12 * factor, 3)
        np.testing.assert_array_equal(crop[::factor, ::factor], image[40:52, 8:20])
        np.testing.assert_array_equal(crop[factor - 1 :: factor, factor - 1 :: factor], image[40:52, 8:20])


def test_legend_fits_its_height():
    names = [f"class {i}" for i in range(11)]
    tall = pictures.legend(names)
    short = pictures.legend(names, max_height=tall.shape[0] // 3)
    assert short.shape[0] <= tall.shape[0] // 3 and short.shape[1] > tall.shape[1]
    # The first swatch has the first class's colour.
    swatch = tall[tall.shape[0] // 22, 3]
    np.testing.assert_array_equal(swatch, pictures.PALETTE[0])


def test_confusion_matrix_png_has_its_size_labels_and_row_percentages(tmp_path):
    cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    names = ["sky", "road", "car"]
    figure = pictures.confusion_matrix_figure(cm, names, "void ignored")
    axes = figure.axes[0]
    assert axes.get_xlabel() == "predicted class" and axes.get_ylabel() == "true class"
    assert figure.axes[1].get_ylabel() == "pixels of the true class (%)"  # the colour bar, with its unit
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    shown = np.asarray(axes.images[0].get_array().filled(np.nan))
    np.testing.assert_allclose(shown[[0, 2]], [[80, 20, 0], [25, 25, 50]])  # each row: % of its true class
    assert np.isnan(shown[1]).all()  # no 'road' in the truth: a blank row, not a division by zero
    path = pictures.save_confusion_matrix(cm, tmp_path / "cm.png", names)
    with Image.open(path) as image:
        assert image.size == pictures.confusion_matrix_size(3)
    assert pictures.confusion_matrix_size(11)[0] > pictures.confusion_matrix_size(3)[0]


def test_every_plot_names_its_axes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from kx_vision.training import lr_finder

    figures, savefig = [], Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    lr_finder.save_plot({"lrs": [1e-4, 1e-3, 1e-2], "losses": [1.0, 0.5, 2.0], "suggestion": 1e-3}, tmp_path / "lr.png")
    pictures.save_confusion_matrix(np.eye(2, dtype=np.int64), tmp_path / "cm.png")
    assert len(figures) == 2
    for figure in figures:
        plot, *bars = figure.axes
        assert plot.get_xlabel() and plot.get_ylabel() and plot.get_title()
        assert all(bar.get_ylabel() for bar in bars)  # a colour bar says what its colours mean
    assert "log scale" in figures[0].axes[0].get_xlabel() and "(%)" in figures[1].axes[1].get_ylabel()
