"""The PyTorch peer (`benchmarks/torch_peer.py`, issue 31 item 7) trains the same network as kx_vision's EDSR:
its weights, converted, give a Keras model with the same outputs, and its run writes a loadable `.keras` file.
Needs PyTorch (the `bench` extra), which CI does not install."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[bench]'); the peer "
                            "benchmark's tests need it")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import torch_peer  # noqa: E402
from kx_vision.models import EDSR  # noqa: E402


def _outputs(torch_model, keras_model, image):
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    return keras.ops.convert_to_numpy(keras_model(image)), expected


@pytest.mark.parametrize("scale, residual_scale", [(2, 0.1), (4, 1.0)])
def test_converted_peer_gives_the_torch_outputs(scale, residual_scale, rng):
    torch.manual_seed(0)
    peer = torch_peer.EDSR(scale, num_blocks=2, num_filters=8, residual_scale=residual_scale).eval()
    converted = torch_peer.keras_edsr(peer)
    assert isinstance(converted, EDSR) and converted.count_params() == sum(p.numel() for p in peer.parameters())
    image = rng.uniform(0, 1, (1, 17, 23, 3)).astype(np.float32)
    got, expected = _outputs(peer, converted, image)
    assert got.shape == expected.shape == (1, 17 * scale, 23 * scale, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_pixel_shuffle_order_matters(rng):
    # The check above would catch a conversion that forgot to reorder the upsampling conv's channels.
    torch.manual_seed(0)
    peer = torch_peer.EDSR(2, num_blocks=1, num_filters=8).eval()
    converted = torch_peer.keras_edsr(peer)
    layer = converted.get_layer("upsample_0_conv")
    conv = peer.upsample[0]
    layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()])
    got, expected = _outputs(peer, converted, rng.uniform(0, 1, (1, 9, 11, 3)).astype(np.float32))
    assert np.abs(got - expected).max() > 1e-2


def test_keras_weights_seed_the_peer(rng):
    # `--init keras`: the peer starts from a kx_vision EDSR's initial weights (ICNR upsampling included).
    keras_model = EDSR(scale=4, num_blocks=2, num_filters=8)
    peer = torch_peer.keras_to_torch(keras_model, torch_peer.EDSR(4, num_blocks=2, num_filters=8)).eval()
    got, expected = _outputs(peer, keras_model, rng.uniform(0, 1, (1, 17, 23, 3)).astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_conversion_refuses_another_network():
    peer = torch_peer.EDSR(2, num_blocks=2, num_filters=8)
    with pytest.raises(ValueError, match="not the same network"):
        torch_peer.torch_to_keras(peer, EDSR(scale=2, num_blocks=3, num_filters=8))


def test_sampler_gives_aligned_patches():
    hr = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lr = hr[::2, ::2]  # any LR whose pixel (y, x) belongs to HR pixel (2y, 2x) shows the alignment
    sample = torch_peer.PatchSampler([(lr, hr)], scale=2, patch=8, batch=16, seed=0)
    x, y = sample()
    assert x.shape == (16, 3, 4, 4) and y.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # every symmetry keeps the pairing: the LR patch is the HR patch subsampled at the matching corner
    for xi, yi in zip(x.numpy(), y.numpy()):
        assert any(np.array_equal(xi, yi[:, a::2, b::2]) for a in (0, 1) for b in (0, 1))


def test_peer_run_writes_a_loadable_keras_model(folders, tmp_path, capsys):
    out, log = tmp_path / "peer.keras", tmp_path / "peer.jsonl"
    record = torch_peer.main(["--data", str(folders / "train"), "--budget-s", "2", "--patch", "16", "--batch", "4",
                              "--blocks", "1", "--filters", "8", "--warmup", "3", "--threads", "1",
                              "--log-every", "0", "--out", str(out), "--log", str(log)])
    assert record["steps"] > 1 and record["train_s"] >= 2 and record["images"] == 3
    assert [json.loads(line) for line in log.read_text().splitlines()] == [record]
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == record
    model = keras.saving.load_model(out)
    assert isinstance(model, EDSR) and (model.scale, model.num_blocks, model.num_filters) == (2, 1, 8)
    prediction = keras.ops.convert_to_numpy(model(np.full((1, 8, 8, 3), 0.5, np.float32)))
    assert prediction.shape == (1, 16, 16, 3) and np.isfinite(prediction).all()
