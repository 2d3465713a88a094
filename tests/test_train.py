import json
import os

import keras
import numpy as np
import pytest
from PIL import Image
from tests_helpers import CrashAfterFirstEpoch, EpochsSeen

from kx_vision import config as config_lib
from kx_vision import train
from kx_vision.tasks import superres
from kx_vision.training import trainer

pytest.importorskip("tensorflow")  # the tf.data pipeline


def tiny_config(folders, **extra):
    assignments = [
        f"data.train={folders / 'train'}",
        f"data.val={folders / 'val'}",
        "data.patch_size=16",
        "data.batch_size=4",
        "model.num_blocks=1",
        "model.num_filters=8",
        "epochs=2",
        "steps_per_epoch=3",
        "optimizer.warmup_steps=0",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return config_lib.load(superres.SuperResConfig, None, assignments)


def test_one_training_step_lowers_the_loss(folders):
    config = tiny_config(folders)
    task = superres.SuperResTask(config)
    lr, hr = next(iter(task.build_data().train))
    lr, hr = np.asarray(lr), np.asarray(hr)
    model = task.build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=task.build_loss())
    before = model.evaluate(lr, hr, verbose=0)
    model.train_on_batch(lr, hr)
    after = model.evaluate(lr, hr, verbose=0)
    assert after < before


def test_perceptual_loss_training_step_lowers_the_loss(folders):
    config = tiny_config(folders, **{"loss.name": "perceptual", "loss.vgg_weights": "null"})
    task = superres.SuperResTask(config)
    lr, hr = (np.asarray(t) for t in next(iter(task.build_data().train)))
    model = task.build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=task.build_loss())
    before = model.evaluate(lr, hr, verbose=0)
    for _ in range(3):
        model.train_on_batch(lr, hr)
    assert model.evaluate(lr, hr, verbose=0) < before


def test_cli_trains_saves_and_reports(folders, tmp_path, capsys):
    out = tmp_path / "run"
    code = train.main(["superres", "--output", str(out)] + [a for k in tiny_config_args(folders) for a in ("--set", k)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation Y-PSNR (x2, 1 images): model" in printed and "bicubic" in printed
    model = keras.saving.load_model(out / "model.keras")
    assert model.scale == 2
    assert (out / "checkpoints" / "last.keras").is_file() and (out / "checkpoints" / "best.keras").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bicubic_psnr"] > 20
    assert os.listdir(out / "logs")


def tiny_config_args(folders):
    config = tiny_config(folders)
    return [f"{k}={','.join(v) if isinstance(v, list) else ('null' if v is None else v)}"
            for k, v in config_lib.flatten(config).items()]


def test_interrupted_run_resumes_from_last_epoch(folders, tmp_path):
    config = tiny_config(folders, epochs=3)
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, config, out, verbose=0, extra_callbacks=[CrashAfterFirstEpoch()])
    assert os.listdir(os.path.join(out, "backup"))
    epochs = EpochsSeen()
    trainer.fit(superres.SuperResTask, config, out, verbose=0, extra_callbacks=[epochs])
    assert epochs.seen == [1, 2]  # epoch 0 was not trained again
    # A different config is refused rather than mixed into the interrupted run.
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, config, str(tmp_path / "run2"), verbose=0, extra_callbacks=[CrashAfterFirstEpoch()])
    from kx_vision.errors import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        trainer.fit(superres.SuperResTask, tiny_config(folders, epochs=4), str(tmp_path / "run2"), verbose=0)


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("data.train=/nonexistent/folder", "image folder not found: /nonexistent/folder"),
        ("data.patch_sise=8", "unknown config key 'data.patch_sise'"),
        ("epochs=many", "'epochs' expects an integer"),
        ("data.patch_size=64", "smaller than the 64x64 patch size"),
        ("data.patch_size=15", "must be a multiple of 'scale'"),
    ],
)
def test_cli_bad_input_gives_one_clear_message(folders, tmp_path, capsys, assignment, expected):
    args = ["superres", "--output", str(tmp_path / "r")]
    for a in tiny_config_args(folders) + [assignment]:
        args += ["--set", a]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training(folders, tmp_path, precision):
    import csv

    config = tiny_config(folders, precision=precision, epochs=1, steps_per_epoch=4)
    seen = {}

    class Inspect(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["compute"] = self.model.get_layer("head_conv").compute_dtype
            seen["variable"] = self.model.get_layer("head_conv").kernel.dtype
            seen["output"] = self.model.output.dtype
            seen["optimizer"] = type(self.model.optimizer).__name__

    model, summary = trainer.fit(superres.SuperResTask, config, str(tmp_path / "run"), verbose=0, extra_callbacks=[Inspect()])
    assert seen["compute"] == precision.split("_")[1] and seen["variable"] == "float32"
    assert seen["output"] == "float32"  # losses and metrics see float32
    assert seen["optimizer"] == ("LossScaleOptimizer" if precision == "mixed_float16" else "Adam")
    with open(tmp_path / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert np.isfinite(float(rows[-1]["loss"])) and np.isfinite(summary["psnr"])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    # Saved models are rebuilt from their constructor arguments, under the policy in force when loading.
    reloaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert reloaded.get_layer("head_conv").compute_dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded.get_layer("head_conv").kernel),
                               keras.ops.convert_to_numpy(model.get_layer("head_conv").kernel))


def test_skip_small_drops_images_under_the_patch(folders, tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folders / "train" / "tiny.png")
    from kx_vision.errors import DataError

    with pytest.raises(DataError, match="tiny.png is 20x20, smaller than the 32x32 patch"):
        superres.SuperResTask(tiny_config(folders, **{"data.patch_size": 32})).build_data()
    with pytest.warns(UserWarning, match="skipped 1 of 4 training images"):
        data = superres.SuperResTask(tiny_config(folders, **{"data.patch_size": 32, "data.skip_small": "true"})).build_data()
    lr, hr = next(iter(data.train))
    assert tuple(hr.shape[1:3]) == (32, 32)
