"""Streaming training data (`kx_vision.data.streaming`): files listed, shuffled per pass, decoded by threads,
cropped on the fly; the same batches from a cache, from the files, and through both pipelines."""

import keras
import numpy as np
import pytest
from PIL import Image

from kx_vision import config as config_lib
from kx_vision.data import arrays, sources, streaming, transforms
from kx_vision.data.skips import SkippedDataWarning
from kx_vision.errors import DataError


def _write(folder, count, rng, size=(24, 20)):
    """`count` PNGs of `size` (width, height) in `folder`; image i has blue = 10 * i everywhere, so any
    crop names its source (`_source`), and random red and green, so a crop has one place in it."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image[..., 2] = 10 * i
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        images.append(image)
    return images


def _source(patch):
    return int(patch[0, 0, 2]) // 10


def _contains(image, patch):
    size = patch.shape[0]
    return any(np.array_equal(image[top : top + size, left : left + size], patch)
               for top in range(image.shape[0] - size + 1) for left in range(image.shape[1] - size + 1))


def _truncate(path):
    """Keep the header (the size still reads), lose the pixels."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_a_pass_visits_each_image_once_with_patches_per_image_crops(tmp_path, rng):
    images = _write(tmp_path, 7, rng)
    stream, note = streaming.open_stream(tmp_path, 8, 4, patches_per_image=3, seed=1, cache="never")
    assert not stream.cached and "streamed from the files (data.cache=never)" in note
    per_pass = stream.patches_per_pass
    assert per_pass == 21
    passes = [stream.patches(k * per_pass, per_pass) for k in range(2)]
    for patches, dihedral in passes:
        sources = [_source(p) for p in patches]
        assert np.bincount(sources, minlength=7).tolist() == [3] * 7  # every image, 3 crops each
        assert all(_contains(images[s], p) for s, p in zip(sources, patches))  # crops, not yet transformed
        assert set(dihedral.tolist()) <= set(range(8))
    # Each image decoded once per pass (the next window may already be decoding ahead).
    assert 2 * 7 <= stream.decodes <= 3 * 7
    assert not np.array_equal(passes[0][0], passes[1][0])  # each pass has its own order and crops
    # Seeded: the same seed gives the same stream, another seed another.
    again, _ = streaming.open_stream(tmp_path, 8, 4, patches_per_image=3, seed=1, cache="never")
    np.testing.assert_array_equal(again.patches(0, per_pass)[0], passes[0][0])
    other, _ = streaming.open_stream(tmp_path, 8, 4, patches_per_image=3, seed=2, cache="never")
    assert not np.array_equal(other.patches(0, per_pass)[0], passes[0][0])


def test_streamed_and_cached_give_the_same_batches(tmp_path, rng):
    _write(tmp_path, 5, rng)
    streamed, _ = streaming.open_stream(tmp_path, 8, 4, patches_per_image=2, seed=3, cache="never")
    cached, note = streaming.open_stream(tmp_path, 8, 4, patches_per_image=2, seed=3, cache="always")
    assert cached.cached and "decoded into memory" in note
    for index in (0, 1, 7, 2):  # any order: a batch is a function of its index
        for a, b in zip(streamed.batch(index), cached.batch(index)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("min_side", [None, 24])
def test_streamed_bmp_sub_images_give_the_batches_of_their_pngs(min_side, tmp_path, rng):
    """`prepare --format bmp` output streams through read-not-decoded views: the same batches as the PNGs
    (with min_side, the upscaled content crops too)."""
    images = _write(tmp_path / "png", 5, rng, size=(23, 19))  # odd widths: BMP rows padded
    (tmp_path / "bmp").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "bmp" / f"{i:02d}.bmp")
    options = dict(patches_per_image=2, seed=3, cache="never", min_side=min_side)
    png, _ = streaming.open_stream(tmp_path / "png", 8, 4, **options)
    bmp, _ = streaming.open_stream(tmp_path / "bmp", 8, 4, **options)
    for index in (0, 3, 1):
        for a, b in zip(png.batch(index), bmp.batch(index)):
            np.testing.assert_array_equal(a, b)


def test_memory_holds_a_few_windows_not_the_images(tmp_path, rng):
    _write(tmp_path, 12, rng)
    stream, _ = streaming.open_stream(tmp_path, 8, 1, patches_per_image=4, seed=0, cache="never")
    assert stream.window_images == 2  # 8 batches of patches: 6 windows per pass
    for index in range(150):  # several passes
        stream.batch(index)
    assert stream.images is None and len(stream._windows) <= streaming.KEPT_WINDOWS
    stream.close()


def test_auto_cache_decision_is_the_decoded_size_from_the_headers(tmp_path, rng):
    assert sources.decoded_mib([(640, 480)] * 150) == pytest.approx(131.8, abs=0.05)
    assert not sources.use_cache("auto", [(640, 480)] * 150)  # 132 MiB > the 128 MiB default
    assert sources.use_cache("auto", [(640, 480)] * 145)  # 127 MiB
    assert sources.use_cache("auto", [(640, 480)] * 150, limit_mib=200)
    assert sources.use_cache("always", [(4096, 4096)] * 1000) and not sources.use_cache("never", [(8, 8)])
    _write(tmp_path, 3, rng)  # 3 x 24 x 20 x 3 bytes
    limit = 3 * 24 * 20 * 3 / 2**20
    stream, note = streaming.open_stream(tmp_path, 8, 2, cache_limit_mib=limit)
    assert stream.cached and "auto: at most data.cache_limit_mib" in note
    stream, note = streaming.open_stream(tmp_path, 8, 2, cache_limit_mib=limit * 0.99)
    assert not stream.cached and "auto: more than data.cache_limit_mib" in note


def test_small_images_are_found_from_headers_without_decoding(tmp_path, rng, monkeypatch):
    _write(tmp_path, 3, rng)
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(tmp_path / "tiny.png")
    from kx_vision.data import images

    monkeypatch.setattr(images, "load_image", lambda path: pytest.fail("decoded while listing"))
    with pytest.raises(DataError, match=r"tiny.png is 30x10, smaller than the 16x16 patch size"):
        streaming.open_stream(tmp_path, 16, 2, cache="never")
    with pytest.warns(UserWarning, match="skipped 1 of 4 training images smaller than the 16x16 patch"):
        stream, _ = streaming.open_stream(tmp_path, 16, 2, cache="never", skip_small=True)
    assert len(stream) == 3 and stream.decodes == 0


def test_unreadable_file_mid_stream_is_skipped_counted_and_reported(tmp_path, rng):
    _write(tmp_path, 6, rng)
    _truncate(tmp_path / "03.png")
    stream, _ = streaming.open_stream(tmp_path, 8, 4, patches_per_image=2, cache="never")
    assert len(stream) == 6  # its header reads: it is found when decoded
    data = arrays.SuperResPatches(stream, 2, steps_per_epoch=3)  # one pass: 12 patches
    sources = [_source(p) for index in range(len(data)) for p in data.patches(index)]
    assert len(sources) == 12 and 3 not in sources  # batches stay full, from the readable images
    assert list(stream.skipped) == [str(tmp_path / "03.png")]
    with pytest.warns(SkippedDataWarning) as caught:  # the skip log's one channel
        data.on_epoch_end()
        data.on_epoch_end()  # nothing new: no second warning
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1, lines
    assert lines[0].startswith("skipped 1 unreadable training image file(s) in epoch 1 (1 of 6 so far")
    assert "03.png" in lines[0]


def test_every_file_unreadable_stops_with_one_message(tmp_path, rng):
    _write(tmp_path, 2, rng)
    for name in ("00.png", "01.png"):
        _truncate(tmp_path / name)
    stream, _ = streaming.open_stream(tmp_path, 8, 2, cache="never")
    with pytest.raises(DataError, match="none of the 2 training image files could be read"):
        stream.batch(0)


def test_epochs_reshuffle_and_pairs_are_bicubic_of_the_transformed_patch(tmp_path, rng):
    images = _write(tmp_path, 4, rng, size=(20, 20))
    stream, _ = streaming.open_stream(tmp_path, 8, 4, seed=5, cache="never")
    data = arrays.SuperResPatches(stream, 2, steps_per_epoch=2)
    lr, hr = data[0]
    assert lr.shape == (4, 4, 4, 3) and hr.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(lr, keras.ops.convert_to_numpy(transforms.bicubic_downscale(hr, 2)))
    patches, dihedral = stream.batch(0)
    for patch, k, target in zip(patches, dihedral, (hr * 255).round().astype(np.uint8)):
        np.testing.assert_array_equal(target, arrays.dihedral_numpy(patch, int(k)))
        assert _contains(images[_source(patch)], patch)
    first = [data.patches(i) for i in range(2)]
    data.on_epoch_end()
    second = [data.patches(i) for i in range(2)]
    assert not np.array_equal(first[0], second[0])  # a new epoch, new patches
    patches, dihedral = stream.batch(2)  # epoch 1, batch 0: batch 2 of the stream
    np.testing.assert_array_equal(second[0], [arrays.dihedral_numpy(p, int(k)) for p, k in zip(patches, dihedral)])
    fresh = arrays.SuperResPatches(streaming.open_stream(tmp_path, 8, 4, seed=5, cache="always")[0], 2,
                                   steps_per_epoch=2)
    np.testing.assert_array_equal(fresh.patches(1), first[1])  # seeded: the same batches again


def test_keras_fit_takes_consecutive_epochs_of_the_stream(tmp_path, rng):
    _write(tmp_path, 4, rng, size=(16, 16))
    stream, _ = streaming.open_stream(tmp_path, 8, 2, cache="always")
    asked = []
    batch = stream.batch
    stream.batch = lambda index: asked.append(index) or batch(index)
    data = arrays.SuperResPatches(stream, 2, steps_per_epoch=3)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.UpSampling2D(2), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(data, epochs=2, verbose=0)
    # fit reads a batch to build the model and ends that pseudo-epoch: it must not skip an epoch of the stream
    assert data.epoch == 2 and sorted(set(asked)) == list(range(6))


def test_content_crops_upscale_small_images(tmp_path, rng):
    _write(tmp_path, 2, rng, size=(20, 12))
    streamed, _ = streaming.open_stream(tmp_path, 16, 2, min_side=16, cache="never", what="content image")
    cached, _ = streaming.open_stream(tmp_path, 16, 2, min_side=16, cache="always", what="content image")
    assert streamed.sizes == [(27, 16)] * 2
    np.testing.assert_array_equal(streamed.batch(0)[0], cached.batch(0)[0])
    content, target = arrays.ContentCrops(streamed, steps_per_epoch=1)[0]
    assert content.shape == (2, 16, 16, 3) and np.array_equal(content, target)


def test_tf_data_gives_the_numpy_pipeline_batches_and_reports_each_epoch(tmp_path, rng):
    pytest.importorskip("tensorflow")
    from kx_vision.data.superres import stream_dataset

    _write(tmp_path, 5, rng)
    _truncate(tmp_path / "02.png")
    stream, _ = streaming.open_stream(tmp_path, 8, 3, patches_per_image=2, seed=4, cache="never")
    steps = 4
    data = arrays.SuperResPatches(streaming.open_stream(tmp_path, 8, 3, patches_per_image=2, seed=4,
                                                        cache="never")[0], 2, steps_per_epoch=steps)
    with pytest.warns(SkippedDataWarning) as caught:
        batches = [(lr.numpy(), hr.numpy()) for lr, hr in stream_dataset(stream, 2, steps_per_epoch=steps).take(6)]
    assert any("skipped 1 unreadable training image file(s) in epoch 1" in str(w.message) for w in caught)
    for index, (lr, hr) in enumerate(batches):
        if index == steps:
            data.on_epoch_end()
        want_lr, want_hr = data[index % steps]
        np.testing.assert_array_equal(hr, want_hr)
        # Both round to 8-bit levels; a value within float error of a .5 boundary may land one level apart.
        assert np.abs(np.round(lr * 255) - np.round(want_lr * 255)).max() <= 1


def _config(task, folder, *assignments):
    from kx_vision.tasks import get_task

    keys = (["data.train=" + str(folder), "data.val=" + str(folder), "data.patch_size=8"] if task == "superres"
            else ["data.content=" + str(folder), "data.val=" + str(folder), "data.crop_size=16"])
    cls = get_task(task)
    return cls(config_lib.load(cls.Config, None, keys + ["data.batch_size=2", "steps_per_epoch=3", *assignments]))


@pytest.mark.parametrize("task", ["superres", "style"])
@pytest.mark.parametrize("cache", ["never", "always"])
def test_tasks_build_streaming_or_cached_data(task, cache, tmp_path, rng, capsys):
    _write(tmp_path, 3, rng)
    pipelines = ["numpy"] + (["tf_data"] if _has_tensorflow() else [])
    for pipeline in pipelines:
        data = _config(task, tmp_path, f"data.cache={cache}", "data.patches_per_image=2",
                       f"data.pipeline={pipeline}").build_data()
        stream = data.extras["train_stream"]
        assert stream.cached == (cache == "always") and stream.patches_per_image == 2
        batch = data.train[0] if pipeline == "numpy" else next(iter(data.train))
        size = 8 if task == "superres" else 16
        assert tuple(np.asarray(batch[1]).shape) == (2, size, size, 3)
    assert "training data: 3 " in capsys.readouterr().out


def _has_tensorflow():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None
