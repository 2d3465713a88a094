"""Pictures of results: `evaluate --save-examples`, the samples drawn after every epoch (callbacks.ExampleImages,
Task.render_examples) and their TensorBoard images. Each saved panel is read back and compared with the
arrays it shows, computed here independently."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image
from seg_helpers import tiny_backbone
from test_visualize import expected_boxes, read_png
from tests_helpers import numpy_y_psnr, tiny_config

from kx_vision import config as config_lib
from kx_vision import evaluate
from kx_vision.data import transforms
from kx_vision.data.arrays import Pairs
from kx_vision.inference import pictures
from kx_vision.models import EDSR, StyleTransferNet, UNet
from kx_vision.tasks import segmentation, style, superres
from kx_vision.training import trainer
from kx_vision.training.callbacks import ExampleImages, take_examples

BAND = pictures.caption_height()
GAP = 4


def run_model(model, x):
    return keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x, "float32"), training=False))


def bicubic_up(lr, scale):
    return pictures.to_uint8(keras.ops.convert_to_numpy(transforms.bicubic_upscale(lr, scale)))


def panels(image, boxes):
    return [[None if box is None else image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]] for box in row]
            for row in boxes]


# --- during training ---

def test_training_draws_validation_samples_every_epoch(folders, tmp_path):
    out = tmp_path / "run"
    trainer.fit(superres, tiny_config(folders, samples=2), out, verbose=0)
    assert sorted(os.listdir(out / "samples")) == ["epoch_001.png", "epoch_002.png"]
    hr = np.asarray(Image.open(folders / "val" / "0.png"))  # 40 x 36: the sample is the whole image
    lr = np.asarray(transforms.bicubic_downscale(hr[None].astype(np.float32) / 255, 2))
    last = read_png(out / "samples" / "epoch_002.png")
    boxes, size = expected_boxes([[(40, 36)] * 3], GAP, BAND)
    assert last.shape == (*size, 3)  # one validation image: one row of bicubic | model | truth
    (bicubic, model_panel, truth), = panels(last, boxes)
    np.testing.assert_array_equal(truth, hr)
    np.testing.assert_array_equal(bicubic, bicubic_up(lr, 2))
    model = keras.saving.load_model(out / "model.keras")  # the last epoch's model
    want = pictures.to_uint8(run_model(model, lr))
    assert np.abs(model_panel.astype(int) - want).max() <= 1 and np.mean(model_panel == want) > 0.99
    first = read_png(out / "samples" / "epoch_001.png")
    np.testing.assert_array_equal(panels(first, boxes)[0][2], hr)
    assert not np.array_equal(panels(first, boxes)[0][1], model_panel)  # a picture of each epoch's model

    if all(importlib.util.find_spec(m) for m in ("tensorboard", "tensorflow")):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        logs = out / "logs" / "samples"
        images = {}
        for name in os.listdir(logs):
            for event in EventFileLoader(str(logs / name)).Load():
                for value in event.summary.value:
                    if value.tag == "samples":
                        images[event.step] = value
        assert sorted(images) == [1, 2]
        for step, value in images.items():
            import io

            # As TensorBoard reads it (the loader migrates image summaries): width, height, PNG.
            assert value.metadata.plugin_data.plugin_name == "images"
            width, height, png = value.tensor.string_val
            decoded = np.asarray(Image.open(io.BytesIO(png)))
            np.testing.assert_array_equal(decoded, read_png(out / "samples" / f"epoch_{step:03d}.png"))
            assert (int(height), int(width)) == size

    # `samples` changes no computation: the finished run continues with another value (0: no pictures).
    trainer.fit(superres, tiny_config(folders, samples=0, epochs=3), out, verbose=0)
    assert sorted(os.listdir(out / "samples")) == ["epoch_001.png", "epoch_002.png"]


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    """`(model, path)`: a small CamVid U-Net and its .keras file, shared by the segmentation tests."""
    model = UNet(num_classes=11, backbone=tiny_backbone(), max_filters=8)
    path = tmp_path_factory.mktemp("models") / "unet.keras"
    model.save(path)
    return model, path


def camvid_examples(rng, count=2, size=(32, 48)):
    images = rng.random((count, *size, 3)).astype(np.float32)
    masks = rng.integers(0, 12, (count, *size)).astype(np.int32)  # 11: void
    return images, masks


def test_segmentation_samples_show_image_truth_and_prediction(tiny_unet, tmp_path, rng):
    images, masks = camvid_examples(rng, 3)
    batches = [(images[:1], masks[:1]), (images[1:], masks[1:])]  # the first batches of the validation data
    task = segmentation.SegmentationTask(config_lib.load(segmentation.SegmentationConfig, None, []))
    model = tiny_unet[0]
    callback = ExampleImages(task.render_examples, batches, 2, str(tmp_path / "samples"))
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"loss": 1.0})
    callback.on_epoch_end(1, {"loss": float("nan")})  # a diverged epoch: nothing drawn
    callback.on_epoch_end(2, {"loss": 0.9})
    assert sorted(os.listdir(tmp_path / "samples")) == ["epoch_001.png", "epoch_003.png"]
    picture = read_png(tmp_path / "samples" / "epoch_003.png")
    legend = pictures.legend(segmentation.CAMVID_CLASSES, max_height=32)
    boxes, size = expected_boxes([[(32, 48)] * 3 + [legend.shape[:2]], [(32, 48)] * 3], GAP, BAND)
    assert picture.shape == (*size, 3)  # 2 samples: one row each, the legend beside the first
    shown = panels(picture, boxes)
    predicted = [run_model(model, images[i : i + 1]).argmax(-1)[0] for i in range(2)]
    for i in range(2):
        image = pictures.to_uint8(images[i])
        truth = np.round(0.5 * image + 0.5 * pictures.PALETTE[masks[i]]).astype(np.uint8)
        truth[masks[i] == 11] = image[masks[i] == 11]  # void shows the image
        np.testing.assert_array_equal(shown[i][0], image)
        np.testing.assert_array_equal(shown[i][1], truth)
        np.testing.assert_array_equal(shown[i][2], np.round(0.5 * image + 0.5 * pictures.PALETTE[predicted[i]]))
    np.testing.assert_array_equal(shown[0][3], legend)


def test_style_samples_show_content_and_stylised(rng):
    task = style.StyleTask(config_lib.load(style.StyleConfig, None, []))
    model = StyleTransferNet(num_filters=4, num_blocks=1)
    content = rng.random((2, 1, 24, 28, 3)).astype(np.float32)
    grid = task.render_examples(model, [(c, c) for c in content])
    boxes, size = expected_boxes([[(24, 28)] * 2] * 2, GAP, BAND)
    assert grid.boxes == boxes and grid.image.shape == (*size, 3)
    for i in range(2):
        np.testing.assert_array_equal(grid.panel(i, 0), pictures.to_uint8(content[i]))
        np.testing.assert_array_equal(grid.panel(i, 1), pictures.to_uint8(run_model(model, content[i])))


def test_a_new_task_gets_input_prediction_target_by_default(rng):
    import denoise_task

    task = denoise_task.DenoiseTask()
    model = task.build_model()
    noisy, clean = rng.random((2, 1, 16, 20, 3)).astype(np.float32)
    grid = task.render_examples(model, [(noisy, clean)])
    assert [box[2:] for box in grid.boxes[0]] == [(16, 20)] * 3
    np.testing.assert_array_equal(grid.panel(0, 0), pictures.to_uint8(noisy))
    np.testing.assert_array_equal(grid.panel(0, 1), pictures.to_uint8(run_model(model, noisy)))
    np.testing.assert_array_equal(grid.panel(0, 2), pictures.to_uint8(clean))


def test_take_examples_cuts_single_samples_in_order(rng):
    pairs = [(rng.random((1, 4 + i, 5, 3)), rng.random((1, 8 + 2 * i, 10, 3))) for i in range(3)]
    taken = take_examples(Pairs(pairs), 2)
    assert len(taken) == 2 and all(np.array_equal(t[0], p[0]) for t, p in zip(taken, pairs))
    x, y = rng.random((5, 3, 3, 3)), rng.random((5, 3, 3, 3))
    taken = take_examples([(x[:2], y[:2]), (x[2:], y[2:])], 4)
    np.testing.assert_array_equal(np.concatenate([t[0] for t in taken]), x[:4])
    assert [t[1].shape for t in taken] == [(1, 3, 3, 3)] * 4
    assert take_examples([({"a": x}, y)], 2) == []  # several inputs: nothing this callback can draw
    if importlib.util.find_spec("tensorflow"):
        import tensorflow as tf

        taken = take_examples(tf.data.Dataset.from_tensor_slices((x, y)).batch(2), 3)
        np.testing.assert_allclose(np.concatenate([t[1] for t in taken]), y[:3])


def test_a_picture_that_fails_never_stops_training(tmp_path):
    def broken(model, examples):
        raise ValueError("no picture")

    callback = ExampleImages(broken, [(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)))], 1, str(tmp_path / "s"))
    callback.on_train_begin()
    with pytest.warns(UserWarning) as warned:
        callback.on_epoch_end(0)
        callback.on_epoch_end(1)
    assert not (tmp_path / "s").exists()
    assert sum("cannot draw the validation samples (ValueError: no picture)" in str(w.message) for w in warned) == 1


# --- evaluate --save-examples ---

@pytest.fixture
def photos(tmp_path):
    """The package's two validation photographs, downsized to keep the test fast."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.join(superres.SAMPLE_DIR, "val")))):
        image = Image.open(os.path.join(superres.SAMPLE_DIR, "val", name)).convert("RGB")
        image.resize((image.width // 4, image.height // 4), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def test_evaluate_superres_saves_bicubic_model_truth_with_zoomed_crops(photos, tmp_path, capsys):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    model.save(tmp_path / "edsr.keras")
    folder = tmp_path / "examples"
    assert evaluate.main(["superres", "--model", str(tmp_path / "edsr.keras"), "--data", str(photos), "--json",
                          "--limit", "1", "--save-examples", str(folder)]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_image"]
    assert sorted(os.listdir(folder)) == sorted(f"{r['image'][:-4]}_x2_{r['psnr']:.2f}dB.png" for r in rows)
    for row in rows:
        hr = transforms.crop_to_multiple(np.asarray(Image.open(photos / row["image"])), 2)
        lr = np.asarray(transforms.bicubic_downscale(hr[None].astype(np.float32) / 255, 2))
        bicubic, sr = bicubic_up(lr, 2), pictures.to_uint8(run_model(model, lr))
        assert row["bicubic_psnr"] == pytest.approx(numpy_y_psnr(hr / 255, bicubic / 255, 2), abs=1e-3)
        height, width = hr.shape[:2]
        side = max(min(height, width) // 4, 16)
        factor = min(height, width) // side
        boxes, size = expected_boxes([[(height, width)] * 3, [(side * factor,) * 2] * 3], GAP, BAND)
        picture = read_png(row["example"])
        assert picture.shape == (*size, 3)
        shown = panels(picture, boxes)
        for j, image in enumerate((bicubic, sr, hr)):
            np.testing.assert_array_equal(shown[0][j], image)
        top, left = pictures.detail_box(hr, side)
        np.testing.assert_array_equal(shown[1][2][::factor, ::factor], hr[top : top + side, left : left + side])
        np.testing.assert_array_equal(shown[1][1][::factor, ::factor], sr[top : top + side, left : left + side])


def test_evaluate_segmentation_saves_overlays_and_a_confusion_matrix(tiny_unet, tmp_path, capsys):
    model, path = tiny_unet
    sample, folder = segmentation.SAMPLE_DIR, tmp_path / "examples"
    assert evaluate.main(["segmentation", "--model", str(path), "--images", f"{sample}/val",
                          "--masks", f"{sample}/valannot", "--num-classes", "11", "--ignore-class", "11",
                          "--limit", "1", "--json", "--save-examples", str(folder)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    name = sorted(os.listdir(f"{sample}/val"))[0]
    assert sorted(os.listdir(folder)) == sorted(["confusion_matrix.png", name.replace(".jpg", ".png")])
    with Image.open(result["confusion_matrix_png"]) as cm:
        assert cm.size == pictures.confusion_matrix_size(11)
    image = np.asarray(Image.open(f"{sample}/val/{name}"))
    picture = read_png(folder / name.replace(".jpg", ".png"))
    height, width = image.shape[:2]
    boxes, _ = expected_boxes([[(height, width)] * 3], GAP, BAND)
    shown = panels(picture, boxes)[0]
    predicted = run_model(model, image[None].astype(np.float32) / 255).argmax(-1)[0]
    np.testing.assert_array_equal(shown[0], image)
    np.testing.assert_array_equal(shown[2], np.round(0.5 * image + 0.5 * pictures.PALETTE[predicted]))
