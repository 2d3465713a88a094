import json
import os

import keras
import numpy as np
import pytest
from conftest import shared_dir
from PIL import Image
from tests_helpers import numpy_y_psnr

from kx_vision import evaluate, inference
from kx_vision.data import transforms
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
    assert "x2 model but --scale is 4" in capsys.readouterr().err
    assert evaluate.main(["superres", "--model", str(tmp_path / "nope.keras"), "--data", str(images_dir)]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_self_ensemble_of_equivariant_model_equals_model(rng):
    # Bicubic upscaling commutes with the dihedral transforms, so its self-ensemble is itself.
    predict = inference.bicubic(2)
    x = rng.random((1, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(inference.self_ensemble(predict)(x), predict(x), atol=1e-5)


def test_self_ensemble_averages_the_eight_transforms(rng):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    predict = inference.as_predict_fn(model)
    x = rng.random((1, 8, 8, 3)).astype(np.float32)
    want = np.mean(
        [np.asarray(transforms.dihedral(predict(np.asarray(transforms.dihedral(x, k))), inference.inverse_dihedral_index(k)))
         for k in range(8)],
        axis=0,
    )
    np.testing.assert_allclose(inference.self_ensemble(predict)(x), want, atol=1e-5)
    for k in range(8):
        back = transforms.dihedral(transforms.dihedral(x, k), inference.inverse_dihedral_index(k))
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


@pytest.mark.shared_data
def test_cli_bicubic_set5_x4_matches_paper(capsys):
    folder = shared_dir("sr", "Set5")
    assert evaluate.main(["superres", "--model", "bicubic", "--data", str(folder), "--scale", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 5 and result["psnr"] == pytest.approx(28.42, abs=0.05)
