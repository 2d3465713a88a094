import numpy as np
import pytest
from PIL import Image

from kx_vision.data.masks import find_pairs, group_split, load_mask, load_pairs, sequence_of
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
    with pytest.raises(DataError, match=r"have no mask of the same name .*b.png"):
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


def test_augmentation_moves_image_and_mask_together(rng):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.segmentation import augment_pair

    # Large blocks of classes 0..3; the image encodes the class as its grey level.
    mask = np.kron(rng.integers(0, 4, (6, 8)), np.ones((10, 10), np.int64)).astype(np.uint8)
    image = np.repeat((mask * 60 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    for s in range(6):
        img, msk = augment_pair(tf.constant(image), tf.constant(mask), tf.constant([s, 7], tf.int64), tf.constant([48, 64]))
        img, msk = img.numpy(), msk.numpy()[..., 0]
        assert img.shape == (48, 64, 3) and msk.shape == (48, 64)
        assert set(np.unique(msk)) <= set(np.unique(mask))  # nearest-neighbour: ids stay ids
        # Away from class borders the (affinely jittered) grey level is a fixed increasing function of the class.
        pad = np.pad(msk, 1, mode="edge")
        interior = np.all([pad[1 + dy : 49 + dy, 1 + dx : 65 + dx] == msk for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
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
    x, y = next(iter(train_dataset(images, masks, (32, 48), 2)))
    assert x.shape == (2, 32, 48, 3) and y.shape == (2, 32, 48, 1) and str(y.dtype) == "<dtype: 'int32'>"
    vx, vy = next(iter(validation_dataset(images, masks, (32, 48), 3)))
    assert vx.shape == (3, 32, 48, 3) and float(np.max(vx)) <= 1.0
