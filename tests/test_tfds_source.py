"""tensorflow-datasets as an image source (`kx_vision.data.tfds_source`), on tfds's mock data."""

import sys
import warnings

import numpy as np
import pytest

from kx_vision.data import tfds_source
from kx_vision.data.skips import SkippedDataWarning
from kx_vision.errors import DataError


def test_specs():
    assert tfds_source.parse("tfds:div2k/bicubic_x2:train") == ("div2k/bicubic_x2", "train")
    assert tfds_source.parse("tfds:div2k/bicubic_x4") == ("div2k/bicubic_x4", "train")
    assert tfds_source.parse("tfds:div2k/bicubic_x4", default_split="validation")[1] == "validation"
    assert tfds_source.parse("tfds:oxford_iiit_pet:train[:10%]") == ("oxford_iiit_pet", "train[:10%]")
    assert tfds_source.is_tfds("tfds:x") and not tfds_source.is_tfds("data/tfds") and not tfds_source.is_tfds(None)
    with pytest.raises(DataError, match="names no data set"):
        tfds_source.parse("tfds::train")


def test_features_become_rgb_uint8():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(tfds_source.to_rgb(gray), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(tfds_source.to_rgb(gray[..., None]), np.repeat(gray[..., None], 3, -1))
    rgba = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    np.testing.assert_array_equal(tfds_source.to_rgb(rgba), rgba[..., :3])
    deep = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(tfds_source.to_rgb(deep)[..., 0], [[0, 1, 255]])


def _mock(tfds, tf, examples, signature):
    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_hr_images_of_div2k_from_mock_data():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(1)
    examples = [{"hr": rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8),
                 "lr": rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)} for i in range(3)]
    signature = {"hr": tf.TensorSpec((None, None, 3), tf.uint8), "lr": tf.TensorSpec((None, None, 3), tf.uint8)}
    with _mock(tfds, tf, examples, signature):
        images = list(tfds_source.tfds_images("tfds:div2k/bicubic_x2:train"))
        assert len(images) == 3
        for image, example in zip(images, examples):
            np.testing.assert_array_equal(image, example["hr"])  # the HR image, not DIV2K's own LR
        assert len(list(tfds_source.tfds_images("tfds:div2k/bicubic_x2:train", limit=2))) == 2
        names, loaded = tfds_source.load_tfds_images("tfds:div2k/bicubic_x2", limit=1)
        assert names == ["div2k/bicubic_x2:validation:0"] and loaded[0].shape == (40, 36, 3)
    # tfds's own random mock examples of the real feature spec.
    with tfds.testing.mock_data(num_examples=2):
        images = list(tfds_source.tfds_images("tfds:div2k/bicubic_x2:train"))
    assert len(images) == 2 and all(i.ndim == 3 and i.shape[-1] == 3 and i.dtype == np.uint8 for i in images)


def test_image_feature_grayscale_and_bad_sets():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [{"image": np.full((8, 6, 1), 7, np.uint8), "label": np.int64(0)}]
    signature = {"image": tf.TensorSpec((None, None, 1), tf.uint8), "label": tf.TensorSpec((), tf.int64)}
    with _mock(tfds, tf, examples, signature):
        (image,) = tfds_source.tfds_images("tfds:mnist:train")
    assert image.shape == (8, 6, 3) and (image == 7).all()
    with _mock(tfds, tf, [{"label": np.int64(0)}], {"label": tf.TensorSpec((), tf.int64)}):
        with pytest.raises(DataError, match=r"tfds set 'mnist' has no 'hr' or 'image' feature: \['label'\]"):
            list(tfds_source.tfds_images("tfds:mnist:train"))
    with _mock(tfds, tf, [], signature):
        with pytest.raises(DataError, match="tfds set 'mnist' split 'test' is empty"):
            list(tfds_source.tfds_images("tfds:mnist:test"))
    with pytest.raises(DataError, match="cannot load tensorflow-datasets set 'no_such_set_kx'"):
        list(tfds_source.tfds_images("tfds:no_such_set_kx:train"))


def test_without_tensorflow_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` raises ImportError
    with pytest.raises(DataError, match=r"tfds:div2k/bicubic_x2:train needs tensorflow-datasets and TensorFlow"):
        next(tfds_source.tfds_images("tfds:div2k/bicubic_x2:train"))


# --- tfds sets as training data (`kx_vision.data.tfds_source.TfdsSource` through `kx_vision.data.streaming`) ---

HEIGHT, WIDTH = 64, 80


def _marked(index):
    """A 64x80 image that says where each pixel comes from: red = the image's index, green = row, blue = column."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([np.full((HEIGHT, WIDTH), index), rows, cols], -1).astype(np.uint8)


def _mock_sets(tfds, tf, counts, made=None, size=None):
    """Mock data where split `S` of set `NAME/CONFIG` has `counts[(NAME/CONFIG, S)]` marked images (red = index
    plus 100 for a `_x4` set), generated lazily one by one (`made` counts them); `size` overrides an image's size
    (`size(index)` -> (height, width) or None)."""
    made = [0] if made is None else made
    signature = {"hr": tf.TensorSpec((None, None, 3), tf.uint8), "lr": tf.TensorSpec((None, None, 3), tf.uint8)}

    def generate(count, offset):
        for index in range(count):
            made[0] += 1
            image = _marked(index + offset)
            if size and size(index):
                image = image[: size(index)[0], : size(index)[1]]
            yield {"hr": image, "lr": image[::2, ::2]}

    def as_dataset(self, split, **kwargs):
        name = f"{self.name}/{self.builder_config.name}"
        count, offset = counts[(name, split)], 100 if name.endswith("_x4") else 0
        return tf.data.Dataset.from_generator(lambda: generate(count, offset), output_signature=signature)

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def _config(train, *extra, val="tfds:div2k/bicubic_x2:validation"):
    from kx_vision import config as config_lib
    from kx_vision.tasks import superres

    train = ",".join(train) if isinstance(train, list) else train
    assignments = [f"data.train={train}", f"data.val={val}", "data.patch_size=16", "data.batch_size=4",
                   "model.num_blocks=1", "model.num_filters=8", "epochs=1", "steps_per_epoch=2",
                   "optimizer.warmup_steps=0", *extra]
    return config_lib.load(superres.SuperResConfig, None, assignments)


def _dihedrals(patch):
    """The 8 symmetries of a square `(P, P, C)` patch, in NumPy."""
    turns = [np.rot90(patch, k) for k in range(4)]
    return turns + [np.fliplr(t) for t in turns]


def _source_of(patch, size=16):
    """`(image index, top, left, symmetry)` of the marked image crop that `patch` is a symmetry of, else None."""
    for k, candidate in enumerate(_dihedrals(patch)):
        index, top, left = (int(v) for v in candidate[0, 0])
        if top + size <= HEIGHT and left + size <= WIDTH and np.array_equal(candidate, _marked(index % 100)[
                top : top + size, left : left + size] + np.array([index - index % 100, 0, 0], np.uint8)):
            return index, top, left, k
    return None


def test_training_streams_crops_of_a_tfds_set_without_holding_it(tmp_path, capsys):
    """data.train=tfds:...: 2 training steps through the trainer; the batches are dihedral transforms of crops
    of the mocked images, LR is their bicubic degradation, and a set of 5,000 images is streamed (data.cache=auto
    stops decoding into memory past data.cache_limit_mib), not read whole."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.data import tfds_source, transforms
    from kx_vision.tasks import superres
    from kx_vision.training import trainer

    made = [0]
    counts = {("div2k/bicubic_x2", "train"): 5000, ("div2k/bicubic_x2", "validation"): 1}
    config = _config(["tfds:div2k/bicubic_x2:train"], "data.patches_per_image=2", "data.cache_limit_mib=0.1")
    with _mock_sets(tfds, tf, counts, made):
        data = superres.SuperResTask(config).build_data()
        assert "streamed from tensorflow-datasets (data.cache=auto" in capsys.readouterr().out
        stream = data.extras["train_stream"]
        assert isinstance(stream.source, tfds_source.TfdsSource) and made[0] < 20  # the probe stopped at 0.1 MiB
        sources = []
        for lr, hr in data.train.take(3):
            lr, hr = np.asarray(lr), np.asarray(hr)
            assert lr.shape == (4, 8, 8, 3) and hr.shape == (4, 16, 16, 3) and lr.dtype == np.float32
            reference = np.asarray(transforms.bicubic_downscale(hr, 2))
            np.testing.assert_allclose(lr, reference, atol=1.01 / 255)  # LR is this HR patch, degraded
            for patch in np.round(hr * 255).astype(np.uint8):
                found = _source_of(patch)
                assert found is not None, "an HR patch is no symmetry of a crop of a mocked image"
                sources.append(found)
        assert len({s[0] for s in sources}) > 1 and len({s[3] for s in sources}) > 1
        assert made[0] < 300 and stream.decodes < 200  # streamed: a few buffers, not 5,000 images
        model, summary = trainer.fit(superres.SuperResTask, config, tmp_path / "run", verbose=0)
    assert np.isfinite(summary["psnr"]) and model.scale == 2
    assert made[0] < 1000


def test_cache_always_gives_the_batches_of_a_folder_of_the_same_images(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    from kx_vision.data import streaming
    from kx_vision.tasks import superres

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    for index in range(3):
        Image.fromarray(_marked(index)).save(tmp_path / "train" / f"{index}.png")
    Image.fromarray(_marked(0)).save(tmp_path / "val" / "0.png")
    counts = {("div2k/bicubic_x2", "train"): 3, ("div2k/bicubic_x2", "validation"): 1}
    with _mock_sets(tfds, tf, counts):
        from_tfds = superres.SuperResTask(_config(["tfds:div2k/bicubic_x2:train"], "data.cache=always")).build_data()
        stream = from_tfds.extras["train_stream"]
        assert isinstance(stream, streaming.PatchStream) and stream.cached and len(stream) == 3
        tfds_batches = [[np.asarray(t) for t in pair] for pair in from_tfds.train.take(2)]
        mixed = superres.SuperResTask(_config([str(tmp_path / "train"), "tfds:div2k/bicubic_x2:train"],
                                              "data.cache=always")).build_data()
        assert len(mixed.extras["train_stream"]) == 6  # folders and tfds sets mix in memory
    folder = superres.SuperResTask(_config([str(tmp_path / "train")], "data.cache=always",
                                           val=str(tmp_path / "val"))).build_data()
    for (lr_a, hr_a), (lr_b, hr_b) in zip(tfds_batches, folder.train.take(2)):
        np.testing.assert_array_equal(hr_a, np.asarray(hr_b))
        np.testing.assert_array_equal(lr_a, np.asarray(lr_b))
    np.testing.assert_array_equal(from_tfds.extras["val_pairs"][0][1], folder.extras["val_pairs"][0][1])


def test_a_pass_visits_every_image_of_every_set_once():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")

    counts = {("div2k/bicubic_x2", "train"): 5, ("div2k/bicubic_x4", "train"): 3}
    with _mock_sets(tfds, tf, counts):
        source = tfds_source.TfdsSource(["tfds:div2k/bicubic_x2", "tfds:div2k/bicubic_x4:train"], seed=1)
        passes = {}
        for pass_index in (0, 1):
            for position, key in enumerate(source.keys(pass_index)):
                image = source.decode(key)
                passes.setdefault(pass_index, []).append((position, int(image[0, 0, 0])))
    expected = [0, 1, 2, 3, 4, 100, 101, 102]
    for pass_index in (0, 1):
        positions, indices = zip(*passes[pass_index])
        assert list(positions) == list(range(8)) and sorted(indices) == expected
    assert [i for _, i in passes[0]] != [i for _, i in passes[1]]  # shuffled afresh each pass


def test_small_image_found_while_streaming_stops_training_with_one_line(tmp_path, capsys):
    """The DataError raised inside the tf.data graph reaches the user as one line, not TensorFlow's traceback."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision import train

    counts = {("div2k/bicubic_x2", "train"): 4, ("div2k/bicubic_x2", "validation"): 1}
    assignments = ["data.train=tfds:div2k/bicubic_x2:train", "data.val=tfds:div2k/bicubic_x2:validation",
                   "data.cache=never", "data.patch_size=16", "data.batch_size=4", "model.num_blocks=1",
                   "model.num_filters=8", "epochs=1", "steps_per_epoch=2", "samples=0"]
    argv = ["superres", "--output", str(tmp_path / "run")]
    for assignment in assignments:
        argv += ["--set", assignment]
    with _mock_sets(tfds, tf, counts, size=lambda index: (12, 40) if index == 1 else None):
        assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training image ") and "is 40x12, smaller than the 16x16 patch size" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_small_images_skipped_and_reported_or_stopping():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.data import streaming
    from kx_vision.data.superres import stream_dataset

    counts = {("div2k/bicubic_x2", "train"): 4}
    small = lambda index: (12, 40) if index in (1, 3) else None  # noqa: E731
    with _mock_sets(tfds, tf, counts, size=small):
        stream, _ = streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="never", skip_small=True)
        with pytest.warns(SkippedDataWarning) as caught:
            for _, hr in stream_dataset(stream, 2, augment=False, steps_per_epoch=2).take(2):
                assert {_source_of(p)[0] for p in np.round(np.asarray(hr) * 255).astype(np.uint8)} <= {0, 2}
        assert stream.small >= 2
        printed = " ".join(str(w.message) for w in caught)
        assert "skipped" in printed and "smaller than the 16x16 patch" in printed and "is 40x12" in printed
        stream, _ = streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="never")
        with pytest.raises(Exception, match=r"is 40x12, smaller than the 16x16 patch size; .*data.skip_small=true"):
            list(stream_dataset(stream, 2).take(3))
        with pytest.raises(DataError, match=r"training image 1 of tfds:div2k/bicubic_x2:train is 40x12"):
            streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="always")
    with _mock_sets(tfds, tf, counts, size=lambda index: (12, 40)):
        stream, _ = streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="never", skip_small=True)
        with pytest.raises(Exception, match="no training image of tfds:div2k/bicubic_x2:train is at least 16"):
            list(stream_dataset(stream, 2).take(1))


def test_tfds_training_needs_tf_data_and_streams_no_mix(tmp_path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.data import streaming
    from kx_vision.errors import ConfigError
    from kx_vision.tasks import superres

    config = _config(["tfds:div2k/bicubic_x2:train"], "data.pipeline=numpy")
    with pytest.raises(ConfigError, match=r"config key 'data.train': 'tfds:div2k/bicubic_x2:train' is a "
                                          r"tensorflow-datasets set, which needs TensorFlow and tensorflow-datasets "
                                          r"installed and data.pipeline=tf_data \(or auto\) \(data.pipeline is numpy\)"):
        superres.SuperResTask(config).build_data()
    (tmp_path / "a.png").write_bytes(b"")
    from PIL import Image

    Image.fromarray(_marked(0)).save(tmp_path / "a.png")
    with _mock_sets(tfds, tf, {("div2k/bicubic_x2", "train"): 2}):
        with pytest.raises(ConfigError, match=r"'data.train' mixes image folders .* only when held in memory"):
            streaming.open_stream([str(tmp_path), "tfds:div2k/bicubic_x2:train"], 16, 4, cache="never")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ConfigError, match=r"\(tensorflow_datasets not installed\)"):
        tfds_source.check_pipeline(["data/x", "tfds:div2k"], "tf_data")
    tfds_source.check_pipeline(["data/x"], "numpy")  # folders only: nothing to say


def test_streams_tfds_own_mock_examples_left_encoded():
    """tfds's random mock examples of DIV2K's real features: the stream reads them encoded (PNG bytes, with
    their tfds_id) and decodes them itself."""
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.data import streaming
    from kx_vision.data.superres import stream_dataset

    with tfds.testing.mock_data(num_examples=3):
        stream, note = streaming.open_stream(["tfds:div2k/bicubic_x2"], 16, 2, cache="never")
        part = stream.source.sets[0]
        dataset, key, has_id, count = part.dataset, part.image_key, part.has_id, part.count
        assert dataset.element_spec[key].dtype.name == "string" and has_id and count == 3
        assert note.startswith("3 training images of tfds:div2k/bicubic_x2, streamed")
        lr, hr = (np.asarray(t) for t in next(iter(stream_dataset(stream, 2, augment=False))))
    assert lr.shape == (2, 8, 8, 3) and hr.shape == (2, 16, 16, 3) and 0 <= hr.min() <= hr.max() <= 1


def test_undecodable_examples_mid_stream_are_skipped_counted_and_reported():
    """An example whose image cannot be decoded is skipped (the stream goes on with the others), counted and
    reported at the end of the epoch; a set none of whose images decodes stops with one DataError."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.data import streaming
    from kx_vision.data.superres import stream_dataset

    good = [tf.io.encode_png(_marked(i)).numpy() for i in range(4)]

    def mock(encoded):
        signature = {"hr": tf.TensorSpec((), tf.string), "lr": tf.TensorSpec((), tf.string)}

        def as_dataset(self, split, **kwargs):
            return tf.data.Dataset.from_generator(lambda: ({"hr": e, "lr": e} for e in encoded),
                                                  output_signature=signature)

        return tfds.testing.mock_data(as_dataset_fn=as_dataset)

    with mock([good[0], b"not an image", good[2], good[3][: len(good[3]) // 2]]):  # garbage, a truncated PNG
        stream, _ = streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="never")
        sources = set()
        with pytest.warns(SkippedDataWarning) as caught:
            for _, hr in stream_dataset(stream, 2, augment=False, steps_per_epoch=3).take(3):
                sources |= {_source_of(p)[0] for p in np.round(np.asarray(hr) * 255).astype(np.uint8)}
        assert sources == {0, 2} and stream.unreadable >= 2
        printed = " ".join(str(w.message) for w in caught)
        assert "could not be decoded" in printed and "first: tfds:div2k/bicubic_x2:train: " in printed
        assert ("cannot identify its image" in printed or "truncated" in printed) and "BytesIO" not in printed
    with mock([b"not an image", b"nor this"]):
        stream, _ = streaming.open_stream(["tfds:div2k/bicubic_x2:train"], 16, 4, cache="never")
        with pytest.raises(Exception, match="none of the 2 training images of tfds:div2k/bicubic_x2:train could "
                                            "be decoded"):
            list(stream_dataset(stream, 2).take(1))


def test_style_content_from_a_tfds_set(capsys):
    """data.content=tfds:...: the style task streams content crops of the set (small images raised to the crop
    size, not skipped), validation from its `validation` split; the numpy pipeline is refused naming the key."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision import config as config_lib
    from kx_vision.data import SAMPLE_DIR
    from kx_vision.errors import ConfigError
    from kx_vision.tasks import style as style_task

    style = f"{SAMPLE_DIR}/train/" + sorted(__import__("os").listdir(f"{SAMPLE_DIR}/train"))[0]
    counts = {("div2k/bicubic_x2", "train"): 6, ("div2k/bicubic_x2", "validation"): 2}
    assignments = [f"style_image={style}", "loss.vgg_weights=null", "data.content=tfds:div2k/bicubic_x2:train",
                   "data.val=tfds:div2k/bicubic_x2", "data.crop_size=16", "data.batch_size=4", "data.cache=never",
                   "model.num_blocks=1", "steps_per_epoch=2"]
    config = config_lib.load(style_task.StyleConfig, None, assignments)
    with _mock_sets(tfds, tf, counts, size=lambda index: (12, 40) if index % 2 else None):
        data = style_task.StyleTask(config).build_data()
        assert "streamed from tensorflow-datasets" in capsys.readouterr().out
        stream = data.extras["train_stream"]
        assert isinstance(stream.source, tfds_source.TfdsSource) and not stream.cached
        for x, y in data.train.take(4):
            assert x.shape == (4, 16, 16, 3) and np.array_equal(np.asarray(x), np.asarray(y))
        assert stream.small == 0 and stream.decodes >= 6  # the 12x40 images were raised to 16, none skipped
        val = [np.asarray(x) for x, _ in data.val]
        assert len(val) == 2 and val[0].shape == (4, 16, 16, 3)
        numpy_config = config_lib.load(style_task.StyleConfig, None, assignments + ["data.pipeline=numpy"])
        with pytest.raises(ConfigError, match="config key 'data.content': 'tfds:div2k/bicubic_x2:train' is a "
                                              "tensorflow-datasets set"):
            style_task.StyleTask(numpy_config).build_data()


# --- segmentation from tfds sets (Oxford-IIIT Pet's trimaps, mapped to classes by data.label_map) ---


def _pet(index, height=40, width=48):
    """A pet photo whose trimap (1 pet, 2 background, 3 border) is a box in the middle; the image shows the
    trimap value as its grey level (50 per value), so an augmented image still tells its mask."""
    trimap = np.full((height, width), 2, np.uint8)
    trimap[8 + index % 4 : 30, 10:38] = 3
    trimap[11 + index % 4 : 27, 13:35] = 1
    image = np.repeat((trimap * 50)[..., None], 3, axis=-1).astype(np.uint8)
    return image, trimap[..., None]


def _mock_pets(tfds, tf, counts):
    signature = {"image": tf.TensorSpec((None, None, 3), tf.uint8),
                 "segmentation_mask": tf.TensorSpec((None, None, 1), tf.uint8),
                 "label": tf.TensorSpec((), tf.int64)}

    def as_dataset(self, split, **kwargs):
        count = counts[split]

        def generate():
            for index in range(count):
                image, trimap = _pet(index)
                yield {"image": image, "segmentation_mask": trimap, "label": np.int64(index % 37)}

        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(count))

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def _segmentation_config(*extra):
    from kx_vision import config as config_lib
    from kx_vision.tasks import segmentation

    assignments = ["data.train_images=tfds:oxford_iiit_pet:train", "data.val_images=tfds:oxford_iiit_pet:test",
                   "data.label_map=1:1,2:0,3:2", "num_classes=3", "ignore_class=null",
                   "class_names=background,pet,border",
                   "data.image_size=32,32", "data.batch_size=4", "model.backbone=simple", "model.max_filters=8",
                   *extra]
    return segmentation.SegmentationTask(config_lib.load(segmentation.SegmentationConfig, None, assignments))


@pytest.mark.parametrize("cache", ["never", "always"])
def test_segmentation_trains_from_a_tfds_set_with_mapped_trimaps(cache):
    """data.train_images=tfds:oxford_iiit_pet:...: the images and masks of the set go through the same core as
    folders (streamed, or held in memory), the trimap values become classes by data.label_map, and Keras trains
    on the batches; the numpy pipeline is refused naming the key."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    import keras

    from kx_vision.errors import ConfigError

    with _mock_pets(tfds, tf, {"train": 10, "test": 3}):
        task = _segmentation_config(f"data.cache={cache}")
        data = task.build_data()
        reader = data.extras["train_reader"]
        assert reader.source.in_memory == (cache == "always") and data.steps_per_epoch == 2
        seen = set()
        for images, masks in data.train.take(2):
            images, masks = np.asarray(images), np.asarray(masks)
            assert images.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32, 1) and masks.dtype == np.int32
            seen |= set(np.unique(masks).tolist())
            # Where the mask is one class all around, the image's grey level tells the trimap value it came
            # from (50 a step, before the photometric jitter): 1 (pet) <- class 1, 2 (background) <- class 0,
            # 3 (border) <- class 2.
            for image, mask in zip(images, masks[..., 0]):
                inner = mask[1:-1, 1:-1]
                same = np.all([mask[1 + dy : 31 + dy, 1 + dx : 31 + dx] == inner
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
                greys = {int(label): image[1:-1, 1:-1, 0][same & (inner == label)].mean()
                         for label in np.unique(inner[same])}
                by_trimap = [greys[label] for label in (1, 0, 2) if label in greys]
                assert np.all(np.diff(by_trimap) > 0.1), greys
        assert seen == {0, 1, 2}
        val = [np.asarray(m) for _, m in data.val]
        assert sum(len(m) for m in val) == 3
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(3, 1)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(data.train, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        with pytest.raises(ConfigError, match="config key 'data.train_images': 'tfds:oxford_iiit_pet:train' is a "
                                              "tensorflow-datasets set"):
            _segmentation_config("data.pipeline=numpy").build_data()


def test_segmentation_tfds_masks_outside_the_classes_stop_and_label_maps_are_checked():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.errors import ConfigError

    with _mock_pets(tfds, tf, {"train": 4, "test": 2}):
        # Without the map, trimap value 3 is no class of 3: the probe stops before training.
        for cache in ("never", "auto"):  # found by the probe, or while holding the set in memory
            with pytest.raises(DataError, match=r"none of the .*training image/mask pairs can be used; the first: "
                                                r"mask of .*tfds:oxford_iiit_pet:train.* has values \[3\] outside"), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _segmentation_config("data.label_map=[]", f"data.cache={cache}").build_data()
            skipped = [str(w.message) for w in caught if w.category is SkippedDataWarning]
            # Held in memory, the pairs read before the set was found wrong are reported, as one warning.
            assert skipped == ([] if cache == "never" else ["while loading them: skipped 4 unusable training "
                               "image/mask pair(s) of 4 (0 of tfds:oxford_iiit_pet:train, 1 of tfds:oxford_iiit_pet:"
                               "train, 2 of tfds:oxford_iiit_pet:train, 3 of tfds:oxford_iiit_pet:train)"]), skipped
    with pytest.raises(ConfigError, match=r"'data.label_map' takes VALUE:CLASS items"):
        _segmentation_config("data.label_map=1-1").check_config()
    with pytest.raises(ConfigError, match="'data.val_images' is empty"):
        _segmentation_config("data.val_images=[]").check_config()


def _mapped(values, label_map):
    """The NumPy reference of data.label_map: each value its class where the map names it, else kept."""
    return np.vectorize(lambda value: label_map.get(int(value), int(value)), otypes=[np.uint8])(values)


def test_label_map_matches_its_numpy_reference(rng):
    """Masks as arrays (tfds features) and as encoded PNGs (files, encoded features) are mapped alike: values the
    map names become its classes, the others are kept, and a value that is no class after the map stops."""
    import io

    from PIL import Image

    from kx_vision.data import masks

    label_map = masks.parse_label_map(["1:1", "2:0", "3:2", "7:3"])
    assert label_map == {1: 1, 2: 0, 3: 2, 7: 3}
    values = rng.choice([0, 1, 2, 3, 7], (24, 20)).astype(np.uint8)  # 0: not named by the map, kept as class 0
    expected = _mapped(values, label_map)
    assert set(np.unique(expected).tolist()) == {0, 1, 2, 3}
    read = masks.mask_reader(4, label_map=label_map)
    np.testing.assert_array_equal(read(values[..., None], "example 0"), expected)
    png = io.BytesIO()
    Image.fromarray(values).save(png, format="PNG")
    np.testing.assert_array_equal(read(png.getvalue(), "example 0"), expected)
    with pytest.raises(DataError, match=r"mask of example 0 has values \[7\] outside the declared classes "
                                        r"\(0..3\) after data.label_map"):
        masks.mask_reader(4, label_map={1: 1, 2: 0, 3: 2})(values, "example 0")


@pytest.mark.parametrize("cache", ["never", "always"])
def test_one_epoch_of_tfds_segmentation_batches_has_the_mapped_classes(cache):
    """Without augmentation and at the set's own size, an epoch of training batches (streamed, or held in memory)
    and a pass of validation batches hold each pair's trimap mapped as the NumPy reference maps it."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")

    label_map = {1: 1, 2: 0, 3: 2}
    with _mock_pets(tfds, tf, {"train": 10, "test": 3}):
        data = _segmentation_config("data.image_size=40,48", "data.augment=false", f"data.cache={cache}").build_data()
        train = [(np.asarray(x), np.asarray(y)) for x, y in data.train]  # one epoch: the dataset ends
        val = [(np.asarray(x), np.asarray(y)) for x, y in data.val]
    assert data.steps_per_epoch == 2 and len(train) == 2  # 10 pairs, batches of 4, the last incomplete dropped
    assert [len(x) for x, _ in val] == [3]
    for images, labels in train + val:
        assert images.shape[1:] == (40, 48, 3) and images.dtype == np.float32
        assert labels.shape[1:] == (40, 48, 1) and labels.dtype == np.int32
        for image, label in zip(images, labels[..., 0]):
            trimap = np.round(image[..., 0] * 255 / 50).astype(np.uint8)  # the grey level tells the trimap value
            assert set(np.unique(trimap).tolist()) == {1, 2, 3}
            np.testing.assert_array_equal(label, _mapped(trimap, label_map))
    # Validation keeps the set's stored order: examples 0, 1, 2, whose pet box starts 11, 12, 13 rows down.
    np.testing.assert_array_equal([np.argmax(label[:, 24, 0] == 1) for label in val[0][1]], [11, 12, 13])
