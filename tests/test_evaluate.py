import json
import os
import weakref

import keras
import numpy as np
import pytest
from conftest import shared_dir
from PIL import Image
from tests_helpers import numpy_y_psnr

from kx_vision import evaluate
from kx_vision.data import transforms
from kx_vision.inference import tiling
from kx_vision.models import EDSR


@pytest.fixture
def images_dir(tmp_path):
    """Two real photographs (the package's public-domain validation sample), downsized to keep tests fast."""
    from kx_vision.tasks.superres import SAMPLE_DIR

    folder = tmp_path / "set"
    folder.mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.join(SAMPLE_DIR, "val")))):
        image = Image.open(os.path.join(SAMPLE_DIR, "val", name)).convert("RGB")
        image.resize((image.width // 4, image.height // 4), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def tiny_model(path, scale=2):
    model = EDSR(scale=scale, num_blocks=1, num_filters=8)
    model.save(path)
    return model


def test_bicubic_json_is_last_line_and_matches_functions(images_dir, capsys):
    assert evaluate.main(["superres", "--model", "bicubic", "--data", str(images_dir), "--scale", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["scale"] == 2 and result["images"] == 2
    assert "img0.png" in "\n".join(lines[:-1]) and "mean" in "\n".join(lines[:-1])
    # Recompute the mean Y-PSNR independently with NumPy.
    scores = []
    for name in ("img0.png", "img1.png"):
        hr = np.asarray(Image.open(images_dir / name)).astype(np.float32) / 255
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        lr = np.asarray(transforms.bicubic_downscale(hr[None], 2))
        sr = np.round(np.clip(np.asarray(transforms.bicubic_upscale(lr, 2))[0], 0, 1) * 255) / 255
        scores.append(numpy_y_psnr(hr, sr, 2))
    assert result["psnr"] == pytest.approx(np.mean(scores), abs=1e-3)
    assert 0 < result["ssim"] <= 1


def test_trained_model_beats_its_initialisation(images_dir, tmp_path, capsys):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    path = tmp_path / "m.keras"
    model.save(path)
    evaluate.main(["superres", "--model", str(path), "--data", str(images_dir), "--json"])
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # A few steps on the evaluation images themselves: the scores must move up.
    names, images = evaluate.load_hr_images(str(images_dir))
    hr = np.stack([transforms.crop_to_multiple(im, 2)[:60, :60] for im in images]).astype(np.float32) / 255
    lr = np.asarray(transforms.bicubic_downscale(hr, 2))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mae")
    model.fit(lr, hr, epochs=60, verbose=0)
    model.save(path)
    evaluate.main(["superres", "--model", str(path), "--data", str(images_dir), "--json"])
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert after["psnr"] > before["psnr"] + 1 and after["scale"] == 2


def test_scale_mismatch_and_missing_model_are_clear(images_dir, tmp_path, capsys):
    tiny_model(tmp_path / "x2.keras")
    assert evaluate.main(["superres", "--model", str(tmp_path / "x2.keras"), "--data", str(images_dir), "--scale", "4"]) == 2
    assert "x2 model but --scale 4" in capsys.readouterr().err
    assert evaluate.main(["superres", "--model", str(tmp_path / "nope.keras"), "--data", str(images_dir)]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_self_ensemble_of_equivariant_model_equals_model(rng):
    # Bicubic upscaling commutes with the dihedral transforms, so its self-ensemble is itself.
    predict = tiling.bicubic(2)
    x = rng.random((1, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(tiling.self_ensemble(predict)(x), predict(x), atol=1e-5)


def test_self_ensemble_averages_the_eight_transforms(rng):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    predict = tiling.as_predict_fn(model)
    x = rng.random((1, 8, 8, 3)).astype(np.float32)
    want = np.mean(
        [np.asarray(transforms.dihedral(predict(np.asarray(transforms.dihedral(x, k))), tiling.inverse_dihedral_index(k)))
         for k in range(8)],
        axis=0,
    )
    np.testing.assert_allclose(tiling.self_ensemble(predict)(x), want, atol=1e-5)
    for k in range(8):
        back = transforms.dihedral(transforms.dihedral(x, k), tiling.inverse_dihedral_index(k))
        np.testing.assert_array_equal(np.asarray(back), x)


def test_tfds_source_with_mock_data(capsys):
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(1)
    examples = [{"hr": rng.integers(0, 256, (40, 36, 3), dtype=np.uint8),
                 "lr": rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)} for _ in range(3)]

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(
            lambda: iter(examples),
            output_signature={"hr": tf.TensorSpec((None, None, 3), tf.uint8),
                              "lr": tf.TensorSpec((None, None, 3), tf.uint8)},
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        code = evaluate.main(["superres", "--model", "bicubic", "--data", "tfds:div2k/bicubic_x2:validation",
                              "--scale", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 3 and 5 < result["psnr"] < 20  # noise images: bicubic does poorly


def test_tfds_evaluation_reads_one_example_at_a_time():
    """A tfds evaluation set is read as it is scored, not loaded whole; a set that cannot be read is named at once."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from kx_vision.errors import DataError

    made = [0]

    def generate():
        for i in range(50):
            made[0] += 1
            yield {"hr": np.full((24, 20, 3), i, np.uint8), "lr": np.zeros((12, 10, 3), np.uint8)}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(generate, output_signature={
            "hr": tf.TensorSpec((None, None, 3), tf.uint8), "lr": tf.TensorSpec((None, None, 3), tf.uint8)})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        items = evaluate.iter_hr_images("tfds:div2k/bicubic_x2")
        name, image = next(items)
        assert name == "div2k/bicubic_x2:validation:0" and image.shape == (24, 20, 3) and made[0] < 10
        rest = list(items)
        assert [int(image[0, 0, 0]) for _, image in rest] == list(range(1, 50)) and made[0] == 50
    with pytest.raises(DataError, match="no_such_set"):
        evaluate.iter_hr_images("tfds:no_such_set")  # raised by the call, before anything iterates


@pytest.mark.shared_data
def test_cli_bicubic_set5_x4_matches_paper(capsys):
    folder = shared_dir("sr", "Set5")
    assert evaluate.main(["superres", "--model", "bicubic", "--data", str(folder), "--scale", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 5 and result["psnr"] == pytest.approx(28.42, abs=0.05)


# --- issue 19: evaluation reads, predicts and scores one image at a time ---


class LiveArrays:
    """Wraps a decoding function and counts the arrays it returned that are still alive (weak references)."""

    def __init__(self, load):
        self.load, self.alive, self.most, self.decoded = load, 0, 0, 0

    def _gone(self):
        self.alive -= 1

    def __call__(self, *args, **kwargs):
        array = self.load(*args, **kwargs)
        weakref.finalize(array, self._gone)
        self.decoded += 1
        self.alive += 1
        self.most = max(self.most, self.alive)
        return array


def smooth_image(rng, height, width):
    y, x = np.mgrid[:height, :width].astype(np.float64)
    waves = [np.sin(x * rng.uniform(0.1, 0.5) + y * rng.uniform(0.1, 0.5) + rng.uniform(0, 6)) for _ in range(3)]
    return np.clip(np.stack(waves, -1) * 100 + 128 + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def seg_set(tmp_path, rng):
    """12 tiny image/mask pairs of two sizes, classes 0-2 and void 3, and a tiny untrained U-Net (3 classes)."""
    from seg_helpers import tiny_backbone

    from kx_vision.models import UNet

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(12):
        height, width = (20, 28) if i % 3 else (24, 20)
        Image.fromarray(smooth_image(rng, height, width)).save(tmp_path / "images" / f"f{i:02d}.png")
        Image.fromarray(rng.integers(0, 4, (height, width), dtype=np.uint8)).save(tmp_path / "masks" / f"f{i:02d}.png")
    model = UNet(num_classes=3, backbone=tiny_backbone(stages=3, width=4), max_filters=8)
    model.save(tmp_path / "unet.keras")
    args = ["segmentation", "--model", str(tmp_path / "unet.keras"), "--images", str(tmp_path / "images"),
            "--masks", str(tmp_path / "masks"), "--num-classes", "3", "--ignore-class", "3", "--json"]
    return tmp_path, model, args


def test_segmentation_holds_one_pair_at_a_time_and_scores_like_numpy_on_the_whole_set(seg_set, monkeypatch, capsys):
    from kx_vision.data import masks

    root, model, args = seg_set
    images, labels = LiveArrays(masks.load_image), LiveArrays(masks.load_mask)
    monkeypatch.setattr(masks, "load_image", images)
    monkeypatch.setattr(masks, "load_mask", labels)
    assert evaluate.main(args + ["--save-examples", str(root / "examples")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Each pair decoded once; while the next is decoded, the previous one is the only other alive.
    assert images.decoded == labels.decoded == 12 and images.most <= 2 and labels.most <= 2
    assert result["images"] == 12
    assert sorted(os.listdir(root / "examples")) == ["confusion_matrix.png"] + [f"f{i:02d}.png" for i in range(12)]
    # NumPy reference: every image and mask at once, one confusion matrix over all their pixels.
    names = sorted(os.listdir(root / "images"))
    truth = [np.asarray(Image.open(root / "masks" / name)).astype(np.int64) for name in names]
    predicted = [keras.ops.convert_to_numpy(model(np.asarray(Image.open(root / "images" / name))[None] / 255.0))
                 .argmax(-1)[0] for name in names]
    truth, predicted = np.concatenate([t.ravel() for t in truth]), np.concatenate([p.ravel() for p in predicted])
    valid = truth != 3
    cm = np.bincount(truth[valid] * 3 + predicted[valid], minlength=9).reshape(3, 3)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.diag(cm) / union
    assert [result["per_class_iou"][str(k)] for k in range(3)] == pytest.approx(iou, abs=1e-12)
    assert result["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(np.trace(cm) / valid.sum(), abs=1e-12)


def test_segmentation_errors_are_those_of_the_whole_set_reader(seg_set, monkeypatch, capsys):
    from kx_vision.data import masks

    root, _, args = seg_set
    # A truncated image is skipped with a warning naming it, counted, and the rest scored.
    data = (root / "images" / "f05.png").read_bytes()
    (root / "images" / "f05.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as caught:
        assert evaluate.main(args) == 0
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"skipping image/mask pair {root / 'images' / 'f05.png'}") for m in messages)
    assert "skipped 1 unreadable image/mask pair(s) of 12" in messages
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 11
    # A mask of another size stops before anything is decoded or predicted, naming both files.
    Image.fromarray(np.zeros((20, 27), np.uint8)).save(root / "masks" / "f10.png")
    images = LiveArrays(masks.load_image)
    monkeypatch.setattr(masks, "load_image", images)
    assert evaluate.main(args + ["--save-examples", str(root / "examples")]) == 2
    err = capsys.readouterr().err
    assert f"image {root / 'images' / 'f10.png'} is 28x20 but its mask {root / 'masks' / 'f10.png'} is 27x20" in err
    assert images.decoded == 0 and not (root / "examples").exists()


def test_superres_holds_one_image_at_a_time_and_scores_like_numpy(tmp_path, rng, monkeypatch, capsys):
    from kx_vision.data import images

    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(smooth_image(rng, 24, 32)).save(folder / f"im{i:02d}.png")
    decoded = LiveArrays(images.load_image)
    monkeypatch.setattr(images, "load_image", decoded)
    assert evaluate.main(["superres", "--model", "bicubic", "--data", str(folder), "--scale", "2", "--json",
                          "--save-examples", str(tmp_path / "examples")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert decoded.decoded == 12 and decoded.most <= 2
    assert [row["image"] for row in result["per_image"]] == [f"im{i:02d}.png" for i in range(12)]
    assert len(os.listdir(tmp_path / "examples")) == 12
    want = []
    for i in range(12):
        hr = np.asarray(Image.open(folder / f"im{i:02d}.png")).astype(np.float32) / 255
        lr = np.asarray(transforms.bicubic_downscale(hr[None], 2))
        sr = np.round(np.clip(np.asarray(transforms.bicubic_upscale(lr, 2))[0], 0, 1) * 255) / 255
        want.append(numpy_y_psnr(hr, sr, 2))
    assert [row["psnr"] for row in result["per_image"]] == pytest.approx(want, abs=1e-3)
    assert result["psnr"] == pytest.approx(np.mean(want), abs=1e-3)


def test_segmentation_counts_do_not_wrap_around(monkeypatch):
    # Keras's MeanIoU counts in int32 on JAX (int64 needs jax_enable_x64): it wraps past 2**31 pixels of a class,
    # about a thousand Carvana images. Simulated with an int16 counter (32,767) and 17 images of 40x50 pixels.
    class NarrowMeanIoU(keras.metrics.MeanIoU):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, dtype="int16", **kwargs)

    monkeypatch.setattr(keras.metrics, "MeanIoU", NarrowMeanIoU)
    image, mask = np.zeros((40, 50, 3), np.uint8), np.ones((40, 50), np.uint8)
    cm, count = evaluate.segmentation_confusion(lambda batch: np.zeros(batch.shape[:3] + (2,), np.float32),
                                                (("x", image, mask) for _ in range(17)), 2)
    assert count == 17 and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[0, 0], [17 * 40 * 50, 0]])
