import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image
from seg_helpers import tiny_backbone

from kx_vision import config as config_lib
from kx_vision import evaluate, predict, train
from kx_vision.models import UNet
from kx_vision.tasks import segmentation

pytest.importorskip("tensorflow")  # the tf.data pipeline
SAMPLE = segmentation.SAMPLE_DIR
SAMPLE_PATH = Path(SAMPLE)


def test_short_training_on_camvid_frames_lowers_the_loss():
    # The embedded sample is 12 real CamVid frames (+ 4 validation frames) with their labels.
    config = config_lib.load(segmentation.SegmentationConfig, None, ["data.image_size=64,96", "data.batch_size=4"])
    task = segmentation.SegmentationTask(config)
    data = task.build_data()
    images, masks = next(iter(data.train))
    images, masks = np.asarray(images), np.asarray(masks)
    assert images.shape == (4, 64, 96, 3) and masks.max() <= 11
    model = UNet(num_classes=11, backbone=tiny_backbone(), max_filters=16)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=task.build_loss())
    before = model.evaluate(images, masks, verbose=0)
    model.fit(data.train, epochs=4, verbose=0, shuffle=False)
    assert model.evaluate(images, masks, verbose=0) < before


@pytest.fixture(scope="module")
def tiny_unet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "unet.keras"
    UNet(num_classes=11, backbone=tiny_backbone(), max_filters=8).save(path)
    return path


def test_evaluate_segmentation_json(tiny_unet_file, capsys):
    args = ["segmentation", "--model", str(tiny_unet_file), "--images", f"{SAMPLE}/val", "--masks", f"{SAMPLE}/valannot",
            "--num-classes", "11", "--ignore-class", "11", "--limit", "2", "--json"]
    assert evaluate.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"miou", "pixel_accuracy", "per_class_iou", "images"} <= set(result) and result["images"] == 2
    # Recompute with NumPy from the model's own predictions at full resolution.
    model = keras.saving.load_model(tiny_unet_file)
    names = sorted(p.name for p in SAMPLE_PATH.joinpath("val").iterdir())[:2]
    cm = np.zeros((11, 11), np.int64)
    for name in names:
        image = np.asarray(Image.open(SAMPLE_PATH / "val" / name), np.float32)[None] / 255
        label = np.asarray(Image.open(SAMPLE_PATH / "valannot" / name.replace(".jpg", ".png"))).astype(np.int64)
        pred = ops.convert_to_numpy(model(image)).argmax(-1)[0]
        valid = label != 11
        cm += np.bincount(label[valid] * 11 + pred[valid], minlength=121).reshape(11, 11)
    assert result["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    assert evaluate.main(args[:-5] + ["--num-classes", "3", "--json"]) == 2
    assert "predicts 11 classes but --num-classes is 3" in capsys.readouterr().err


def test_predict_segmentation_writes_ids_and_overlay(tiny_unet_file, tmp_path):
    frame = f"{SAMPLE}/val/0016E5_07959.jpg"
    assert predict.main(["segmentation", "--model", str(tiny_unet_file), "--input", frame, "--output", str(tmp_path)]) == 0
    mask = np.asarray(Image.open(tmp_path / "0016E5_07959_mask.png"))
    overlay = np.asarray(Image.open(tmp_path / "0016E5_07959_overlay.png"))
    model = keras.saving.load_model(tiny_unet_file)
    want = ops.convert_to_numpy(model(np.asarray(Image.open(frame), np.float32)[None] / 255)).argmax(-1)[0]
    np.testing.assert_array_equal(mask, want)
    assert overlay.shape == (360, 480, 3)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason=(
    "end-to-end CLI orchestration runs once per CI, in the TensorFlow run (backend numerics: test_parity; "
    "training under JAX: test_train, test_data_arrays, test_distribute); JAX on CPU takes minutes here"))
def test_train_cli_freeze_then_unfreeze_and_progressive_resize(tmp_path, capsys):
    common = ["--set", "model.backbone=simple", "--set", "model.max_filters=8", "--set", "data.batch_size=4",
              "--set", "optimizer.warmup_steps=0", "--set", "jit_compile=false"]
    small = ["segmentation", "--output", str(tmp_path / "small"), "--set", "data.image_size=32,32",
             "--set", "epochs=2", "--set", "freeze_backbone_epochs=1"] + common
    assert train.main(small) == 0
    out = capsys.readouterr().out
    assert "(backbone frozen)" in out and "mIoU" in out
    summary = json.loads((tmp_path / "small" / "summary.json").read_text())
    assert 0 <= summary["miou"] <= 1 and len(summary["per_class_iou"]) == 11
    large = ["segmentation", "--output", str(tmp_path / "large"), "--set", "data.image_size=64,64",
             "--set", "epochs=1", "--set", f"init_from={tmp_path / 'small' / 'model.keras'}"] + common
    assert train.main(large) == 0
    out = capsys.readouterr().out
    assert "weight transfer:" in out and "new:" not in out and "reinitialised:" not in out
