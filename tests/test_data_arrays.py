"""The TensorFlow-free super-resolution pipeline (`kx_vision.data.arrays`) against the tf.data one."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from kx_vision.data import arrays, definitions, transforms
from kx_vision.inference.tiling import inverse_dihedral_index


def _images(rng):
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 36), (33, 50), (48, 48))]


@pytest.mark.parametrize("shape", [(6, 5, 3), (6, 6, 3), (2, 6, 5, 3)], ids=["6x5", "6x6", "batch"])
@pytest.mark.parametrize("k", range(8))
def test_dihedral_matches_keras_ops_and_tensorflow(k, shape, rng):
    # The three adapters of the one definition (keras.ops, NumPy, TensorFlow in the tf.data graph) agree
    # exactly, on square and non-square images and batches.
    image = (rng.random(shape) * 255).astype(np.uint8)
    want = keras.ops.convert_to_numpy(transforms.dihedral(image, k))
    np.testing.assert_array_equal(arrays.dihedral_numpy(image, k), want)
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.superres import random_dihedral_tf

    np.testing.assert_array_equal(random_dihedral_tf(tf.constant(image), tf.constant(k)).numpy(), want)


def test_dihedral_means_quarter_turns_then_a_flip():
    # Index k is k % 4 counter-clockwise quarter turns, then a left-right flip when k >= 4.
    image = np.array([[1, 2, 3], [4, 5, 6]])[..., None]  # rows top to bottom
    quarter = np.array([[3, 6], [2, 5], [1, 4]])[..., None]  # turned counter-clockwise: right column on top
    np.testing.assert_array_equal(definitions.dihedral_numpy(image, 1), quarter)
    np.testing.assert_array_equal(definitions.dihedral_numpy(image, 5), quarter[:, ::-1])
    np.testing.assert_array_equal(definitions.dihedral_numpy(image, 2), image[::-1, ::-1])
    np.testing.assert_array_equal(definitions.dihedral_numpy(image, 4), image[:, ::-1])
    with pytest.raises(ValueError, match="dihedral index must be in"):
        transforms.dihedral(image, 8)


def test_dihedral_indices_form_the_group_of_the_square(rng):
    x = rng.random((1, 3, 4, 2)).astype(np.float32)  # no symmetry of its own: 8 distinct images
    apply = lambda image, k: keras.ops.convert_to_numpy(transforms.dihedral(image, k))  # noqa: E731
    images = [apply(x, k) for k in range(8)]
    assert len({image.tobytes() for image in images}) == 8
    for a in range(8):
        # The table says what doing a then b is, checked with the keras.ops adapter (the table is read off
        # the NumPy one).
        for b in range(8):
            np.testing.assert_array_equal(apply(images[a], b), images[definitions.compose_dihedral(a, b)])
        inverse = definitions.inverse_dihedral(a)
        np.testing.assert_array_equal(apply(images[a], inverse), x)
        assert definitions.compose_dihedral(inverse, a) == 0 and inverse_dihedral_index(a) == inverse
    table = np.array(definitions.DIHEDRAL_COMPOSITION)
    assert (table[0] == np.arange(8)).all() and (table[:, 0] == np.arange(8)).all()  # 0 is the identity
    assert all(sorted(row) == list(range(8)) for row in table)  # each row a permutation
    assert [definitions.inverse_dihedral(k) for k in range(8)] == [0, 3, 2, 1, 4, 5, 6, 7]
    assert definitions.compose_dihedral(1, 4) != definitions.compose_dihedral(4, 1)  # not commutative


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_same_patches_give_the_same_pairs_as_tf_data(scale, rng):
    tf = pytest.importorskip("tensorflow")
    from kx_vision.data.superres import degrade_tf

    patches = (rng.random((4, 12 * scale, 12 * scale, 3)) * 255).astype(np.uint8)
    lr, hr = arrays.make_pairs(patches, scale)
    want = degrade_tf(tf.constant(patches, tf.float32) / 255.0, scale).numpy()
    np.testing.assert_array_equal(hr, patches / np.float32(255))
    # Both round to 8-bit levels; a value within float error of a .5 boundary may land one level apart.
    levels, want_levels = np.round(lr * 255), np.round(want * 255)
    assert np.abs(levels - want_levels).max() <= 1
    assert np.mean(levels != want_levels) < 0.01


def test_patches_are_crops_of_the_images_with_every_transform(rng):
    images = _images(rng)
    data = arrays.SuperResPatches(images, 2, 16, 8, steps_per_epoch=40, seed=3)
    lr, hr = data[0]
    assert lr.shape == (8, 8, 8, 3) and hr.shape == (8, 16, 16, 3) and lr.dtype == hr.dtype == np.float32
    np.testing.assert_array_equal(data.patches(5), data.patches(5))  # batch i is fixed within an epoch
    variants, sources = set(), []
    for index in range(len(data)):
        for patch in data.patches(index):
            found = [(i, k) for i, image in enumerate(images) for k in range(8)
                     if _contains(image, arrays.dihedral_numpy(patch, definitions.inverse_dihedral(k)))]
            assert found, "a patch is not a (transformed) crop of any image"
            sources.append(found[0][0])
            variants.update(k for _, k in found)
    assert variants == set(range(8))
    counts = np.bincount(sources, minlength=3)  # images drawn uniformly, as EDSR samples
    assert counts.min() > 0.2 * len(sources)
    first = data.patches(0)
    data.on_epoch_end()
    assert not np.array_equal(first, data.patches(0))  # a new epoch draws new patches


def _contains(image, patch):
    size = patch.shape[0]
    for top in range(image.shape[0] - size + 1):
        rows = image[top : top + size]
        for left in range(image.shape[1] - size + 1):
            if rows[0, left, 0] == patch[0, 0, 0] and np.array_equal(rows[:, left : left + size], patch):
                return True
    return False


def test_small_images_are_refused(rng):
    with pytest.raises(ValueError, match="smaller than the 64x64 patch size"):
        arrays.SuperResPatches(_images(rng), 2, 64, 4, steps_per_epoch=1)


# Block `import tensorflow` the way a machine without it would fail it.
NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorboard", "tensorflow_datasets"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, _NoTensorFlow())
    import importlib.util
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in ("tensorflow", "tensorboard") else _find_spec(name, *a)
""")


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the TensorFlow-free path is for JAX machines")
def test_superres_trains_without_tensorflow(tmp_path, rng):
    from PIL import Image

    for split, count in (("train", 3), ("val", 1)):
        (tmp_path / split).mkdir()
        for i, image in enumerate(_images(rng)[:count]):
            Image.fromarray(image).save(tmp_path / split / f"{i}.png")
    (tmp_path / "sitecustomize.py").write_text(NO_TENSORFLOW)
    args = ["superres", "--output", str(tmp_path / "run")]
    for assignment in (f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}", "data.patch_size=16",
                       "data.batch_size=4", "model.num_blocks=1", "model.num_filters=8", "epochs=2",
                       "steps_per_epoch=3"):
        args += ["--set", assignment]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    done = subprocess.run([sys.executable, "-m", "kx_vision.train", *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation Y-PSNR" in done.stdout
    assert (tmp_path / "run" / "model.keras").is_file() and (tmp_path / "run" / "history.csv").is_file()
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, cwd=tmp_path)
    assert check.returncode != 0  # the block really was in place
