from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kx_vision.data import masks as masks_module
from kx_vision.data.masks import PairReader, find_pairs, group_split, load_mask, load_pairs, sequence_of
from kx_vision.errors import DataError


def _pair(folder, name, image, mask):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}.jpg" if image.ndim == 3 else folder / "images" / f"{name}.png")
    Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


def test_mask_values_outside_classes_name_the_file(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 13
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png has values \[13\] outside the declared classes \(0..10 and ignore 11\)"):
        load_mask(tmp_path / "m.png", num_classes=11, ignore_class=11)
    mask[0, 0] = 11
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png", 11, 11)[0, 0] == 11
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="not colours"):
        load_mask(tmp_path / "rgb.png", 2)
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "b.png", 1, divisor=255), [[0, 1]])


def test_pairs_by_name_and_missing_mask(tmp_path, rng):
    _pair(tmp_path, "a", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / "b.png").write_bytes((tmp_path / "masks" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"1 of 2 image\(s\) in .*images have no mask in .*masks .*: b.png$"):
        find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    (tmp_path / "images" / "b.png").unlink()
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match="is 8x8 but its mask"):
        load_pairs(find_pairs(str(tmp_path / "images"), str(tmp_path / "masks")), 2)


def test_unreadable_images_and_masks_are_skipped_and_counted(tmp_path, rng):
    for name in ("a", "b", "c", "d"):
        _pair(tmp_path, name, rng.integers(0, 256, (16, 12, 3), dtype=np.uint8), rng.integers(0, 3, (16, 12), dtype=np.uint8))
    truncated = (tmp_path / "images" / "b.jpg").read_bytes()
    (tmp_path / "images" / "b.jpg").write_bytes(truncated[: len(truncated) // 2])  # a truncated JPEG
    (tmp_path / "masks" / "c.png").write_bytes((tmp_path / "masks" / "c.png").read_bytes()[:40])  # a truncated mask
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    with pytest.warns(UserWarning) as caught:
        images, masks = load_pairs(pairs, 3)
    messages = [str(w.message) for w in caught]
    assert len(images) == len(masks) == 2 and images[0].shape == (16, 12, 3)
    np.testing.assert_array_equal(masks[1], np.asarray(Image.open(tmp_path / "masks" / "d.png")))
    assert any("b.jpg" in m and "cannot read image" in m for m in messages)
    assert any("c.png" in m and "cannot read mask" in m for m in messages)
    assert "skipped 2 unreadable image/mask pair(s) of 4" in messages[-1]
    # A mask of another size, or with values outside the classes, is a mistake in the data set: it stops.
    Image.fromarray(np.zeros((16, 10), np.uint8)).save(tmp_path / "masks" / "d.png")
    with pytest.raises(DataError, match=r"image .*d.jpg is 12x16 but its mask .*d.png is 10x16"):
        load_pairs(pairs[3:], 3)
    Image.fromarray(np.full((16, 12), 7, np.uint8)).save(tmp_path / "masks" / "d.png")
    with pytest.raises(DataError, match=r"d.png has values \[7\] outside the declared classes"):
        load_pairs(pairs[3:], 3)
    # Nothing readable at all.
    with pytest.raises(DataError, match="none of the 2 image/mask pairs could be read"), pytest.warns(UserWarning):
        load_pairs(pairs[1:3], 3)


def test_group_split_keeps_sequences_together():
    names = [f"{seq}_{i:05d}.png" for seq in ("0001TP", "0006R0", "0016E5", "Seq05VD") for i in range(10)]
    items = [(n, n) for n in names]
    train, val = group_split(items, 0.25, seed=1)
    train_groups = {sequence_of(a) for a, _ in train}
    val_groups = {sequence_of(a) for a, _ in val}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(train) + len(val) == 40 and len(val) >= 10
    assert sequence_of("path/to/0016E5_07959.png") == "0016E5"


@pytest.mark.parametrize("rotate_degrees", [0.0, 10.0])
def test_augmentation_moves_image_and_mask_together(rng, rotate_degrees):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.definitions import draw_augmentation
    from kx_vision.data.segmentation import augment_pair

    # Large blocks of classes 0..3; the image encodes the class as its grey level.
    mask = np.kron(rng.integers(0, 4, (6, 8)), np.ones((10, 10), np.int64)).astype(np.uint8)
    image = np.repeat((mask * 60 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    for s in range(6):
        img, msk = augment_pair(tf.constant(image), tf.constant(mask), draw_augmentation(np.random.default_rng(s)),
                                tf.constant([48, 64]), rotate_degrees=rotate_degrees)
        img, msk = img.numpy(), msk.numpy()[..., 0]
        _check_image_follows_mask(img, msk, mask)


def _check_image_follows_mask(img, msk, mask):
    height, width = msk.shape
    assert img.shape == (height, width, 3)
    assert set(np.unique(msk)) <= set(np.unique(mask))  # nearest-neighbour: ids stay ids
    # Away from class borders (and the image's own: a class one pixel wide there is blended in by the bilinear
    # resize but may not be picked by nearest) the jittered grey level is a fixed increasing function of the class.
    pad = np.pad(msk, 2, constant_values=255)
    interior = np.all([pad[2 + dy : height + 2 + dy, 2 + dx : width + 2 + dx] == msk
                       for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)
    means = []
    for c in np.unique(msk[interior]):
        values = img[..., 0][interior & (msk == c)]
        assert values.std() < 0.02
        means.append(values.mean())
    assert np.all(np.diff(means) > 0.1)


def test_pipeline_batches_and_validation(rng):
    pytest.importorskip("tensorflow")
    from kx_vision.data.segmentation import train_dataset, validation_dataset

    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    masks = [rng.integers(0, 3, (30, 40), dtype=np.uint8) for _ in range(3)]
    reader = PairReader.from_arrays(images, masks)
    dataset = train_dataset(reader, (32, 48), 2, rotate_degrees=10)
    assert dataset.cardinality() == 1  # 3 pairs, batches of 2, the remainder dropped
    x, y = next(iter(dataset))
    assert x.shape == (2, 32, 48, 3) and y.shape == (2, 32, 48, 1) and str(y.dtype) == "<dtype: 'int32'>"
    vx, vy = next(iter(validation_dataset(reader, (32, 48), 3)))
    assert vx.shape == (3, 32, 48, 3) and float(np.max(vx)) <= 1.0


# --- layouts: Carvana, CamVid's _L, masks beside the images ---


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_carvana_layout_gif_masks_and_car_split(tmp_path, rng):
    cars = ["0cdf5b5d0ce1", "11acdf9da22b", "2faf504842df", "fff9b3a5373f"]
    binary = (rng.random((12, 16)) > 0.5).astype(np.uint8)
    for car in cars:
        for view in range(1, 5):
            _save(tmp_path / "train" / f"{car}_{view:02d}.jpg", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            # Carvana's masks: palette GIFs holding 0/1 (some tools write 0/255).
            _save(tmp_path / "train_masks" / f"{car}_{view:02d}_mask.gif", binary * (255 if view % 2 else 1))
    pairs = find_pairs(str(tmp_path / "train"), str(tmp_path / "train_masks"))
    assert len(pairs) == 16
    assert all(Path(m).name == Path(i).stem + "_mask.gif" for i, m in pairs)
    for _, mask_path in pairs[:2]:  # a 0/1 and a 0/255 GIF: both read as 0/1 by a binary task
        np.testing.assert_array_equal(load_mask(mask_path, num_classes=1), binary)
    train, val = group_split(pairs, 0.25, seed=0)
    assert len(val) == 4 and len(train) == 12
    assert len({sequence_of(i) for i, _ in val}) == 1  # the 4 views of one car
    assert not {sequence_of(i) for i, _ in train} & {sequence_of(i) for i, _ in val}
    assert sequence_of("train/0cdf5b5d0ce1_01.jpg") == "0cdf5b5d0ce1"
    # Masks beside the images, in the same folder.
    for image, mask in pairs[:3]:
        (tmp_path / "together").mkdir(exist_ok=True)
        for path in (image, mask):
            (tmp_path / "together" / Path(path).name).write_bytes(Path(path).read_bytes())
    together = find_pairs(str(tmp_path / "together"), str(tmp_path / "together"))
    assert [(Path(i).name, Path(m).name) for i, m in together] == [(Path(i).name, Path(m).name) for i, m in pairs[:3]]
    # Unpaired images are named, first ones first, with the masks that matched nothing.
    (tmp_path / "train_masks" / "0cdf5b5d0ce1_01_mask.gif").rename(tmp_path / "train_masks" / "0cdf5b5d0ce1_1_mask.gif")
    with pytest.raises(DataError, match=r"1 of 16 image\(s\) in .*train have no mask in .*train_masks .*_mask or _L "
                       r"added.*: 0cdf5b5d0ce1_01.jpg; mask\(s\) matching no image: 0cdf5b5d0ce1_1_mask.gif"):
        find_pairs(str(tmp_path / "train"), str(tmp_path / "train_masks"))


def test_camvid_L_suffix_and_unpaired_list(tmp_path, rng):
    for i in range(8):
        _save(tmp_path / "images" / f"0001TP_{i:06d}.png", rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        if i < 2:
            _save(tmp_path / "labels" / f"0001TP_{i:06d}_L.png", np.full((6, 8), i, np.uint8))
    with pytest.raises(DataError, match=r"6 of 8 image\(s\).*: 0001TP_000002.png, 0001TP_000003.png, "
                       r"0001TP_000004.png, 0001TP_000005.png, 0001TP_000006.png and 1 more$"):
        find_pairs(str(tmp_path / "images"), str(tmp_path / "labels"))
    for i in range(2, 8):
        _save(tmp_path / "labels" / f"0001TP_{i:06d}_L.png", np.full((6, 8), i, np.uint8))
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert [int(load_mask(m, 8)[0, 0]) for _, m in pairs] == list(range(8))


def test_black_and_white_palette_masks_are_read_by_colour(tmp_path):
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    # Index 0 is white here: the indices say the opposite of the picture.
    image = Image.fromarray(1 - mask, mode="P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    image.save(tmp_path / "reversed.gif")
    np.testing.assert_array_equal(load_mask(tmp_path / "reversed.gif", 1), mask)
    # A coloured palette (CamVid / VOC style) keeps its indices as class ids.
    image = Image.fromarray(mask * 2, mode="P")
    image.putpalette([128, 128, 128, 128, 0, 0, 64, 128, 0])
    image.save(tmp_path / "classes.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "classes.png", 3), mask * 2)
    # 0/255 with several classes is not guessed: the message says what to do.
    Image.fromarray(mask * 255).save(tmp_path / "binary.png")
    with pytest.raises(DataError, match=r"values \[255\] outside .*divide by 255 \(mask_divisor\)"):
        load_mask(tmp_path / "binary.png", 3)


# --- streaming: PairReader ---


def _folder_of_pairs(root, rng, count, size=(16, 12)):
    for i in range(count):
        _save(root / "images" / f"s{i // 3}_{i:03d}.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        _save(root / "masks" / f"s{i // 3}_{i:03d}.png", rng.integers(0, 3, size, dtype=np.uint8))
    return find_pairs(str(root / "images"), str(root / "masks"))


def test_reader_checks_sizes_from_headers_before_decoding(tmp_path, rng, monkeypatch):
    pairs = _folder_of_pairs(tmp_path, rng, 6)
    _save(tmp_path / "masks" / "s1_004.png", np.zeros((16, 10), np.uint8))
    decoded = []
    monkeypatch.setattr(masks_module, "load_image", lambda path: decoded.append(path))
    with pytest.raises(DataError, match=r"image .*s1_004.jpg is 12x16 but its mask .*s1_004.png is 10x16"):
        PairReader(pairs, 3)
    assert not decoded


def test_reader_streams_skips_and_reports_unusable_pairs(tmp_path, rng, monkeypatch):
    pairs = _folder_of_pairs(tmp_path, rng, 9)
    data = (tmp_path / "images" / "s1_004.jpg").read_bytes()
    (tmp_path / "images" / "s1_004.jpg").write_bytes(data[: len(data) // 2])  # truncated: found when decoded
    _save(tmp_path / "masks" / "s2_007.png", np.full((16, 12), 9, np.uint8))  # a value outside the classes
    reader = PairReader(pairs, 3, workers=2)
    assert reader.decoded_bytes == 8 * 16 * 12 * 4 and not reader.cache  # from the headers that open
    reader.probe()  # the first pair is fine: nothing raised
    with pytest.warns(UserWarning) as caught:
        streamed = list(reader.stream(range(9), rng=np.random.default_rng(0)))
        assert reader.end_pass("this epoch") == 2
    messages = [str(w.message) for w in caught]
    assert len(streamed) == 9 and [p for p, _ in streamed] == list(range(9))  # replaced: a pass keeps its length
    assert any("s1_004.jpg" in m and "cannot read image" in m for m in messages)
    assert any("s2_007.png has values [9] outside the declared classes" in m for m in messages)
    assert messages[-1] == "this epoch: skipped 2 unusable training image/mask pair(s) of 9 (s1_004.jpg, s2_007.jpg)"
    np.testing.assert_array_equal(streamed[0][1][1], np.asarray(Image.open(pairs[0][1])))
    # Known bad pairs are not decoded again; without a rng they are left out; without cache nothing is kept.
    decoded = []
    real = masks_module.load_image
    monkeypatch.setattr(masks_module, "load_image", lambda path: decoded.append(path) or real(path))
    with pytest.warns(UserWarning, match="validation: skipped 2 unusable"):
        assert len(list(reader.stream(range(9)))) == 7
        reader.end_pass("validation")
    assert len(decoded) == 7 and not reader._cached
    # With the cache, each usable pair is decoded once.
    reader.cache, decoded[:] = True, []
    for _ in range(2):
        list(reader.stream(range(9)))
    assert len(decoded) == 7


def test_reader_probe_stops_a_systematic_mistake(tmp_path, rng):
    pairs = _folder_of_pairs(tmp_path, rng, 4)
    for _, mask in pairs:
        _save(Path(mask), np.full((16, 12), 255, np.uint8))  # 0/255 masks read without mask_divisor
    reader = PairReader(pairs, 3)
    with pytest.raises(DataError, match=r"none of the 4 training image/mask pairs can be used; the first: mask "
                       r".*s0_000.png has values \[255\]"):
        reader.probe()
    assert PairReader(pairs, 3, divisor=255).probe() is None


def test_task_streams_or_caches_by_size(tmp_path, rng):
    from kx_vision import config as config_lib
    from kx_vision.tasks import segmentation

    _folder_of_pairs(tmp_path, rng, 9, size=(40, 48))
    base = [f"data.train_images={tmp_path / 'images'}", f"data.train_masks={tmp_path / 'masks'}",
            "data.val_images=[]", "data.val_masks=[]", "num_classes=3", "ignore_class=null",
            "data.image_size=32,32", "data.batch_size=2", "data.pipeline=numpy"]
    task = segmentation.SegmentationTask(config_lib.load(segmentation.SegmentationConfig, None, base))
    data = task.build_data()
    assert data.extras["cache"] is True  # 9 x 40 x 48 x 4 bytes, far below data.cache_limit_mib
    train_pairs = len(data.extras["train_reader"])
    assert train_pairs + len(data.extras["val_reader"]) == 9 and data.steps_per_epoch == train_pairs // 2
    task = segmentation.SegmentationTask(config_lib.load(segmentation.SegmentationConfig, None,
                                                         base + ["data.cache_limit_mib=0.06"]))
    data = task.build_data()
    assert data.extras["cache"] is False and not data.extras["train_reader"].cache
    x, y = data.train[0]
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 1) and y.dtype == np.int32
