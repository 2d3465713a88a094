"""tensorflow-datasets as an image source (`kx_vision.data.tfds_source`), on tfds's mock data."""

import sys

import numpy as np
import pytest

from kx_vision.data import tfds_source
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
