import numpy as np
import pytest
from keras import ops

from kx_vision.models import EDSR
from kx_vision.models.loading import load_model, transfer_weights


def test_x2_to_x4_transfers_by_name_and_reports(tmp_path):
    x2 = EDSR(scale=2, num_blocks=2, num_filters=8)
    path = tmp_path / "x2.keras"
    x2.save(path)
    x4 = EDSR(scale=4, num_blocks=2, num_filters=8)
    fresh_new_stage = ops.convert_to_numpy(x4.get_layer("upsample_1_conv").kernel)
    report = transfer_weights(load_model(path), x4)
    assert report["new"] == ["upsample_1_conv"]
    assert report["reinitialised"] == [] and report["unused"] == []
    assert set(report["transferred"]) == {
        "head_conv", "block_0", "block_1", "body_conv", "upsample_0_conv", "tail_conv"}
    # Every transferred weight equals its source, including the layers *after* the inserted stage.
    for name in report["transferred"]:
        for a, b in zip(x2.get_layer(name).weights, x4.get_layer(name).weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    # The new stage keeps its ICNR initialisation (tiled kernel).
    kernel = ops.convert_to_numpy(x4.get_layer("upsample_1_conv").kernel)
    np.testing.assert_array_equal(kernel, fresh_new_stage)
    np.testing.assert_array_equal(kernel[..., :8], kernel[..., 8:16])


def test_shape_mismatch_is_reinitialised(tmp_path):
    source = EDSR(scale=2, num_blocks=1, num_filters=8)
    target = EDSR(scale=2, num_blocks=1, num_filters=16)
    report = transfer_weights(source, target)
    assert report["transferred"] == [] and "head_conv" in report["reinitialised"]


@pytest.mark.parametrize("source", ["keras_file", "preset_dir"])
def test_init_from_cli_trains_new_stage_first(tmp_path, capsys, source):
    """init_from takes a .keras file, a preset folder or a preset name (configs/presets/edsr_8x32_x4.yaml grows
    from the shipped x2 preset by name)."""
    pytest.importorskip("tensorflow")
    from PIL import Image

    from kx_vision import train

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / split / "a.png")
    x2 = EDSR(scale=2, num_blocks=1, num_filters=8)
    x2.save(tmp_path / "x2.keras")
    seed = tmp_path / "x2.keras" if source == "keras_file" else x2.save_to_preset(tmp_path / "x2_preset")
    base = ["superres", "--output", str(tmp_path / "run")]
    sets = [f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}", "scale=4",
            "model.num_blocks=1", "model.num_filters=8", "data.patch_size=16", "data.batch_size=2",
            "epochs=2", "steps_per_epoch=2", f"init_from={seed}",
            "freeze_transferred_epochs=1", "optimizer.warmup_steps=0"]
    for s in sets:
        base += ["--set", s]
    assert train.main(base) == 0
    out = capsys.readouterr().out
    assert "weight transfer: 5 layers transferred" in out and "new: upsample_1_conv" in out
    assert "training only upsample_1_conv" in out
    x4 = load_model(tmp_path / "run" / "model.keras")
    assert x4.scale == 4
    # Phase 1 trained only the new stage, phase 2 everything: the transferred head changed in phase 2.
    phase1 = EDSR(scale=4, num_blocks=1, num_filters=8)
    phase1.load_weights(tmp_path / "run" / "phase_frozen.weights.h5")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(phase1.get_layer("head_conv").kernel), ops.convert_to_numpy(x2.get_layer("head_conv").kernel))
    assert not np.array_equal(
        ops.convert_to_numpy(x4.get_layer("head_conv").kernel), ops.convert_to_numpy(x2.get_layer("head_conv").kernel))
