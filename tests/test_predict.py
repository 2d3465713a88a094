import numpy as np
import pytest
from PIL import Image

from kx_vision import predict
from kx_vision.inference import tiling
from kx_vision.models import EDSR


@pytest.fixture
def model_file(tmp_path):
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    path = tmp_path / "x2.keras"
    model.save(path)
    return model, path


@pytest.mark.parametrize("size, tile, overlap", [((45, 61), 32, 24), ((40, 40), 28, 24), ((37, 50), 40, 28)])
def test_tiled_equals_untiled(model_file, rng, size, tile, overlap):
    model, _ = model_file
    fn = tiling.as_predict_fn(model)
    image = rng.random((*size, 3)).astype(np.float32)
    whole = np.clip(fn(image[None])[0], 0, 1)
    tiled = tiling.predict_tiled(fn, image, 2, tile=tile, overlap=overlap, dtype="float32")
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 1e-3


def test_tiling_is_exact_when_the_dead_zone_covers_the_receptive_field(model_file, rng):
    # This model's receptive-field radius is 6 LR pixels; overlap // 4 = 6 covers it.
    model, _ = model_file
    fn = tiling.as_predict_fn(model)
    image = rng.random((50, 47, 3)).astype(np.float32)
    whole = np.clip(fn(image[None])[0], 0, 1)
    tiled = tiling.predict_tiled(fn, image, 2, tile=30, overlap=24, dtype="float32")
    assert np.abs(tiled - whole).max() < 1e-5
    as_uint8 = tiling.predict_tiled(fn, image, 2, tile=30, overlap=24)
    assert as_uint8.dtype == np.uint8 and np.abs(as_uint8 / 255.0 - whole).max() <= 0.5 / 255 + 1e-5


def test_cli_writes_lossless_png_and_never_overwrites_inputs(model_file, tmp_path, rng, capsys):
    _, path = model_file
    src = tmp_path / "in"
    src.mkdir()
    rgba = np.dstack([rng.integers(0, 256, (30, 26, 3), dtype=np.uint8), np.full((30, 26), 9, np.uint8)])
    Image.fromarray(rgba).save(src / "photo.png")
    out = tmp_path / "out"
    assert predict.main(["superres", "--model", str(path), "--input", str(src), "--output", str(out), "--tile", "16", "--overlap", "8"]) == 0
    result = np.asarray(Image.open(out / "photo_x2.png"))
    assert result.shape == (60, 52, 3)
    assert "alpha channel dropped" in capsys.readouterr().out
    # Writing into the input folder under the input's own name is refused.
    Image.fromarray(rgba[..., :3]).save(src / "shot_x2.png")
    before = (src / "shot_x2.png").read_bytes()
    code = predict.main(["superres", "--model", str(path), "--input", str(src / "shot_x2.png"), "--output", str(src)])
    assert code == 0 and (src / "shot_x2_x2.png").exists() and (src / "shot_x2.png").read_bytes() == before
    Image.fromarray(rgba[..., :3]).save(src / "a.png")
    Image.fromarray(rgba[..., :3]).save(src / "a_x2.png")
    assert predict.main(["superres", "--model", str(path), "--input", str(src), "--output", str(src)]) == 2
    assert "would overwrite an input file" in capsys.readouterr().err


def test_decompression_bomb_is_refused_unless_allowed(model_file, tmp_path, monkeypatch, capsys):
    _, path = model_file
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # Pillow refuses above twice this: 1400 < 1600 pixels
    args = ["superres", "--model", str(path), "--input", str(tmp_path / "big.png"), "--output", str(tmp_path / "o")]
    assert predict.main(args) == 2
    assert "decompression-bomb limit" in capsys.readouterr().err
    assert predict.main(args + ["--allow-large-images"]) == 0


def test_bad_inputs_are_clear(model_file, tmp_path, capsys):
    _, path = model_file
    assert predict.main(["superres", "--model", str(path), "--input", str(tmp_path / "none.png"), "--output", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert predict.main(["superres", "--model", str(path), "--input", str(tmp_path / "bad.png"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read image" in capsys.readouterr().err
