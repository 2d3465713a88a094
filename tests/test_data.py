import numpy as np
import pytest
from keras import ops
from PIL import Image

from kx_vision.data import transforms
from kx_vision.data.images import list_images, load_image, load_images
from kx_vision.errors import DataError


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def test_decodes_rgb_gray_rgba_palette_and_16bit(tmp_path, rng):
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    paths = {
        "rgb": _save(tmp_path / "rgb.png", rgb),
        "gray": _save(tmp_path / "gray.png", gray),
        "rgba": _save(tmp_path / "rgba.png", np.dstack([rgb, np.full((10, 12), 7, np.uint8)])),
    }
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(paths["rgb"]), rgb)
    np.testing.assert_array_equal(load_image(paths["gray"]), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(load_image(paths["rgba"]), rgb)
    palette = load_image(tmp_path / "pal.png")
    assert palette.shape == (10, 12, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), np.repeat(gray[..., None], 3, -1))


def test_bmp_fast_path_reads_what_pillow_reads(tmp_path, rng, monkeypatch):
    """24-bit BMPs go through OpenCV (faster); its pixels are Pillow's, and every other BMP, a truncated one or a
    huge one goes to Pillow with its usual result or error naming the file."""
    from kx_vision.data import images

    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)  # odd width: rows padded to 4 bytes
    path = _save(tmp_path / "rgb.bmp", rgb)
    assert images._read_bmp_fast(path) is not None
    np.testing.assert_array_equal(load_image(path), rgb)
    gray = _save(tmp_path / "gray.bmp", rgb[..., 0])
    rgba = _save(tmp_path / "rgba.bmp", np.dstack([rgb, np.full((13, 17), 9, np.uint8)]))
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.bmp")
    for other in (gray, rgba, tmp_path / "pal.bmp"):
        assert images._read_bmp_fast(other) is None
        np.testing.assert_array_equal(load_image(other), images.read_image(other)[0])
    np.testing.assert_array_equal(load_image(gray), np.repeat(rgb[..., :1], 3, -1))
    truncated = tmp_path / "truncated.bmp"
    truncated.write_bytes((tmp_path / "rgb.bmp").read_bytes()[:-7])
    assert images._read_bmp_fast(truncated) is None
    with pytest.raises(images.UnreadableFileError, match="truncated.bmp"):
        load_image(truncated)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 13 x 17 = 221 > 2 x 100: Pillow refuses it, naming it
    assert images._read_bmp_fast(path) is None
    with pytest.raises(images.TooLargeImageError, match="rgb.bmp"):
        load_image(path)


def test_bmp_view_is_the_image_without_decoding(tmp_path, rng):
    """The streams' crops of a 24-bit BMP come from its rows as stored, bottom-up (Pillow's) or top-down
    (negative height), rows padded to 4 bytes; anything else is load_image's array."""
    from kx_vision.data import images

    rgb = rng.integers(0, 256, (11, 15, 3), dtype=np.uint8)  # 45 bytes a row, padded to 48
    bottom_up = _save(tmp_path / "up.bmp", rgb)
    view = images.load_image_view(bottom_up)
    assert not view.flags.writeable and view.shape == rgb.shape
    np.testing.assert_array_equal(view, rgb)
    np.testing.assert_array_equal(view[3:9, 4:12], rgb[3:9, 4:12])
    data = bytearray((tmp_path / "up.bmp").read_bytes())
    offset, row = int.from_bytes(data[10:14], "little"), 48
    rows = [data[offset + i * row : offset + (i + 1) * row] for i in range(11)]
    data[offset : offset + 11 * row] = b"".join(reversed(rows))
    data[22:26] = (-11).to_bytes(4, "little", signed=True)
    (tmp_path / "down.bmp").write_bytes(bytes(data))
    np.testing.assert_array_equal(images.load_image_view(tmp_path / "down.bmp"), rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "down.bmp"), rgb)
    png = _save(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(images.load_image_view(png), rgb)
    truncated = tmp_path / "truncated.bmp"
    truncated.write_bytes((tmp_path / "up.bmp").read_bytes()[:-7])
    with pytest.raises(images.UnreadableFileError, match="truncated.bmp"):
        images.load_image_view(truncated)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        list_images([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in .*empty"):
        list_images([tmp_path / "empty"])


def test_corrupt_file_is_skipped_and_counted(tmp_path, rng):
    good = _save(tmp_path / "a.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image at all")
    with pytest.warns(UserWarning) as record:
        arrays, kept = load_images(list_images(tmp_path))
    assert kept == [good] and len(arrays) == 1
    messages = " ".join(str(w.message) for w in record)
    assert "b.png" in messages and "skipped 1 unreadable" in messages
    with pytest.raises(DataError, match="b.png"):
        load_image(bad)


def test_small_image_error_names_file(tmp_path, rng):
    _save(tmp_path / "tiny.png", rng.integers(0, 256, (10, 30, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"tiny.png is 30x10, smaller than the 16x16 patch"):
        load_images(list_images(tmp_path), min_size=16)


def test_dihedral_matches_numpy_and_gives_eight_distinct(rng):
    x = rng.random((2, 5, 5, 3)).astype("float32")
    seen = []
    for k in range(8):
        want = np.rot90(x, k % 4, axes=(1, 2))
        if k >= 4:
            want = want[:, :, ::-1]
        got = ops.convert_to_numpy(transforms.dihedral(x, k))
        np.testing.assert_array_equal(got, want)
        seen.append(got.tobytes())
    assert len(set(seen)) == 8


def test_tf_pipeline_transforms_match_keras_ops(rng):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.superres import degrade_tf, random_dihedral_tf

    x = rng.random((4, 8, 8, 3)).astype("float32")
    for k in range(8):
        np.testing.assert_array_equal(
            random_dihedral_tf(tf.constant(x[0]), tf.constant(k)).numpy(),
            ops.convert_to_numpy(transforms.dihedral(x[0], k)),
        )
    np.testing.assert_allclose(
        degrade_tf(tf.constant(x), 2).numpy(),
        ops.convert_to_numpy(transforms.bicubic_downscale(x, 2)),
        atol=1 / 255 + 1e-6,  # a rounding step apart at most, across backends
    )


def _keys_cubic(x):
    """The bicubic kernel of MATLAB's `imresize` (Keys, a = -0.5)."""
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))


def _imresize_rows(size, scale):
    """`(rows, weights)`: the LR rows whose antialiased kernel (the cubic stretched by `scale`) lies inside
    an image of `size` pixels, and their weights over its pixels, as MATLAB `imresize` computes them."""
    rows, weights = [], []
    for i in range(size // scale):
        centre = (i + 0.5) * scale - 0.5
        if centre - 2 * scale >= 0 and centre + 2 * scale <= size - 1:
            rows.append(i)
            weights.append(_keys_cubic((np.arange(size) - centre) / scale) / scale)
    return rows, np.array(weights)


@pytest.mark.parametrize("scale", [2, 3])
def test_degradation_is_matlab_imresize_then_8bit(scale, rng):
    # An independent reference: away from the borders (where MATLAB pads and TF renormalises), the LR image
    # is the antialiased Keys bicubic of MATLAB `imresize`, then clipped and rounded to 8-bit levels.
    hr = rng.random((2, 16 * scale, 12 * scale, 3)).astype(np.float32)
    rows, row_weights = _imresize_rows(hr.shape[1], scale)
    cols, col_weights = _imresize_rows(hr.shape[2], scale)
    want = np.einsum("ih,nhwc,jw->nijc", row_weights, hr.astype(np.float64), col_weights)
    exact = ops.convert_to_numpy(transforms.bicubic_downscale(hr, scale, quantize=False))
    np.testing.assert_allclose(exact[:, rows][:, :, cols], want, atol=2e-5)
    levels = ops.convert_to_numpy(transforms.bicubic_downscale(hr, scale)) * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    np.testing.assert_allclose(levels, np.clip(exact, 0, 1) * 255, atol=0.5 + 1e-3)
    with pytest.raises(ValueError, match="not a multiple of the scale"):
        transforms.bicubic_downscale(hr[:, 1:], scale)


def test_tf_degradation_matches_keras_ops_on_non_square_batches(rng):
    # The two adapters of the one degradation agree to one 8-bit level (a value within float error of a
    # rounding boundary may land on either side).
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.superres import degrade_tf

    x = rng.random((3, 12, 18, 3)).astype("float32")
    for scale in (2, 3):
        got = degrade_tf(tf.constant(x), scale).numpy()
        want = ops.convert_to_numpy(transforms.bicubic_downscale(x, scale))
        assert got.shape == want.shape == (3, 12 // scale, 18 // scale, 3)
        assert np.abs(np.round(got * 255) - np.round(want * 255)).max() <= 1


def _find_dihedral_crop(image, patch):
    """(k, top, left) such that patch is dihedral k of image[top:top+p, left:left+p], or None."""
    p = patch.shape[0]
    for k in range(8):
        # Undo transform k: try every crop's transform instead (small images keep this cheap).
        for top in range(image.shape[0] - p + 1):
            for left in range(image.shape[1] - p + 1):
                crop = image[top : top + p, left : left + p]
                if np.array_equal(ops.convert_to_numpy(transforms.dihedral(crop, k)), patch):
                    return k, top, left
    return None


def test_pipeline_applies_same_transform_to_input_and_target(rng):
    pytest.importorskip("tensorflow")
    from kx_vision.data.superres import train_dataset

    images = [rng.integers(0, 256, (14, 12, 3), dtype=np.uint8), rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)]
    dataset = train_dataset(images, scale=2, patch_size=8, batch_size=4, seed=3)
    lr, hr = next(iter(dataset))
    lr, hr = lr.numpy(), hr.numpy()
    assert lr.shape == (4, 4, 4, 3) and hr.shape == (4, 8, 8, 3)
    # The input is exactly the bicubic degradation of the (transformed) target...
    np.testing.assert_allclose(lr, ops.convert_to_numpy(transforms.bicubic_downscale(hr, 2)), atol=1 / 255 + 1e-6)
    found = set()
    for patch in (hr * 255).round().astype(np.uint8):
        # ...and the target is a dihedral transform of a crop of a source image.
        hits = [_find_dihedral_crop(image, patch) for image in images]
        hit = next(h for h in hits if h is not None)
        found.add(hit[0])
        # The input matches the target's transform, not the untransformed crop's degradation.
    assert found  # at least one patch located
    # Over many patches, all 8 transforms occur.
    ks = set()
    for _lr_b, hr_b in dataset.take(8):
        for patch in (hr_b.numpy() * 255).round().astype(np.uint8):
            hit = next(h for h in (_find_dihedral_crop(im, patch) for im in images) if h is not None)
            ks.add(hit[0])
    assert len(ks) >= 6


def test_validation_pairs_crop_to_multiple_of_scale(rng):
    pytest.importorskip("tensorflow")
    from kx_vision.data.superres import validation_pairs

    (lr, hr), = validation_pairs([rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)], 3)
    assert hr.shape == (1, 12, 9, 3) and lr.shape == (1, 4, 3, 3)


def test_scan_reads_sizes_from_headers_and_skips_unreadable_files(tmp_path, rng):
    from kx_vision.data.images import read_size, scan_images

    good = _save(tmp_path / "a.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning) as record:
        kept, sizes = scan_images(list_images(tmp_path), what="training image")
    assert kept == [good] and sizes == [(30, 20)]
    messages = " ".join(str(w.message) for w in record)
    assert "skipping training image: cannot read image" in messages and "b.png" in messages
    assert "skipped 1 unreadable training image file(s) of 2" in messages
    # A damaged file whose header still reads passes the scan; it fails when decoded.
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "c.png").write_bytes(data[: len(data) // 2])
    assert read_size(tmp_path / "c.png") == (30, 20)
    with pytest.raises(DataError, match="c.png"):
        load_image(tmp_path / "c.png")


@pytest.mark.parametrize("reader", ["scan_images", "load_images"])
def test_one_pass_reports_each_kind_once_and_stops_when_nothing_is_usable(tmp_path, rng, reader):
    """The folder scan and the decoding pass count their skips in one `data.skips.SkipLog`: one report per kind,
    the small images counted (not named one by one), and the right error when nothing is left."""
    from kx_vision.data import images as images_lib
    from kx_vision.data.skips import SkippedDataWarning

    read = getattr(images_lib, reader)
    _save(tmp_path / "a.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for name in ("b.png", "c.png"):
        _save(tmp_path / name, rng.integers(0, 256, (8, 30, 3), dtype=np.uint8))
    (tmp_path / "d.png").write_bytes(b"not an image")
    with pytest.warns(SkippedDataWarning) as record:
        kept = read(list_images(tmp_path), min_size=16, what="training image", skip_small=True)[1]
    assert kept == ([str(tmp_path / "a.png")] if reader == "load_images" else [(30, 20)])
    messages = [str(w.message) for w in record]
    assert messages[0].startswith("skipping training image: cannot read image") and "d.png" in messages[0]
    assert messages[1:] == ["skipped 1 unreadable training image file(s) of 4",
                            "skipped 2 of 4 training images smaller than the 16x16 patch"]
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match="no training image is at least 16 pixels on its short side"):
        with pytest.warns(SkippedDataWarning):
            read(list_images(tmp_path), min_size=16, what="training image", skip_small=True)
