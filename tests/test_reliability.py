"""Nothing a user has is lost: reruns, kills, divergence, bad output folders (issue 17, training side)."""

import errno
import hashlib
import json
import os
import subprocess
import sys

import keras
import pytest
from tests_helpers import CrashAfterFirstEpoch, EpochsSeen

from kx_vision import cli, train
from kx_vision import config as config_lib
from kx_vision.tasks import superres
from kx_vision.training import optimizers, trainer


def tiny_config(folders, **extra):
    assignments = [
        f"data.train={folders / 'train'}", f"data.val={folders / 'val'}", "data.patch_size=16", "data.batch_size=4",
        "model.num_blocks=1", "model.num_filters=8", "epochs=2", "steps_per_epoch=3", "optimizer.warmup_steps=0",
        "data.pipeline=numpy",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return config_lib.load(superres.SuperResConfig, None, assignments)


def cli_args(folders, out, **extra):
    args = ["superres", "--output", str(out)]
    for key, value in config_lib.flatten(tiny_config(folders, **extra)).items():
        value = ",".join(value) if isinstance(value, list) else ("null" if value is None else value)
        args += ["--set", f"{key}={value}"]
    return args


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def history_epochs(out):
    lines = (out / "history.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


class CrashAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_finished_run_is_left_alone_continued_or_overwritten(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(cli_args(folders, out)) == 0
    best, model = digest(out / "checkpoints" / "best.keras"), digest(out / "model.keras")
    capsys.readouterr()

    assert train.main(cli_args(folders, out)) == 0  # the same command again: nothing is trained or written
    printed = capsys.readouterr().out
    assert f"{out} holds a finished run of 2 epochs; its model is {out / 'model.keras'}" in printed
    assert "--overwrite" in printed
    assert digest(out / "checkpoints" / "best.keras") == best and digest(out / "model.keras") == model
    assert history_epochs(out) == [0, 1]

    seen = EpochsSeen()
    trainer.fit(superres.SuperResTask, tiny_config(folders, epochs=3), str(out), verbose=0, extra_callbacks=[seen])
    assert seen.seen == [2]  # more epochs continue the finished run
    assert "continuing the finished run from epoch 2 of 3" in capsys.readouterr().out
    assert history_epochs(out) == [0, 1, 2]

    seen = EpochsSeen()
    trainer.fit(superres.SuperResTask, tiny_config(folders, epochs=3), str(out), verbose=0, extra_callbacks=[seen], overwrite=True)
    assert seen.seen == [0, 1, 2]
    assert history_epochs(out) == [0, 1, 2]


def test_finished_run_with_another_config_is_refused(folders, tmp_path):
    out = tmp_path / "run"
    trainer.fit(superres.SuperResTask, tiny_config(folders), str(out), verbose=0)
    from kx_vision.errors import ConfigError

    with pytest.raises(ConfigError, match=r"finished run with a different config \(model.num_filters differ"):
        trainer.fit(superres.SuperResTask, tiny_config(folders, **{"model.num_filters": 4}), str(out), verbose=0)


def test_resumed_run_says_where_it_resumes(folders, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, tiny_config(folders, epochs=3), str(out), verbose=0, extra_callbacks=[CrashAfterFirstEpoch()])
    capsys.readouterr()
    trainer.fit(superres.SuperResTask, tiny_config(folders, epochs=3), str(out), verbose=0)
    printed = capsys.readouterr().out
    assert f"resuming from epoch 1 of 3 (backup {out / 'backup' / 'all' / 'epoch-00001.weights.h5'})" in printed
    assert history_epochs(out) == [0, 1, 2]


def test_best_checkpoint_survives_a_resume(folders, tmp_path, monkeypatch):
    # With "max" on the validation loss, the first epoch (highest loss) is the best and every later one worse.
    monkeypatch.setattr(superres.SuperResTask, "monitor", ("val_loss", "max"))
    out = tmp_path / "run"
    config = tiny_config(folders, epochs=3, **{"optimizer.learning_rate": 0.01})
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, config, str(out), verbose=0, extra_callbacks=[CrashAfterFirstEpoch()])
    best = digest(out / "checkpoints" / "best.keras")
    _, summary = trainer.fit(superres.SuperResTask, config, str(out), verbose=0)
    assert digest(out / "checkpoints" / "best.keras") == best  # never replaced by a worse model after the resume
    assert summary["best"]["epoch"] == 1 and summary["best"]["monitor"] == "val_loss"


def test_killed_backup_write_and_unreadable_backup(folders, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    config = tiny_config(folders, epochs=3)
    original = keras.Model.save_weights

    class KilledWhileWriting(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                def killed(model, path, *args, **kwargs):  # writes half a file, then the process "dies"
                    with open(path, "wb") as f:
                        f.write(b"\x89HDF\r\n\x1a\n truncated")
                    raise KeyboardInterrupt

                monkeypatch.setattr(keras.Model, "save_weights", killed)

    # Epoch 0 is backed up, then the run is killed while writing epoch 1's backup.
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, config, str(out), verbose=0, extra_callbacks=[KilledWhileWriting()])
    monkeypatch.setattr(keras.Model, "save_weights", original)
    seen = EpochsSeen()
    trainer.fit(superres.SuperResTask, config, str(out), verbose=0, extra_callbacks=[seen])  # no OSError: the backup is intact
    assert seen.seen == [1, 2]

    # A backup damaged after it was written: the one before it is used, with one warning.
    out2 = tmp_path / "run2"
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(superres.SuperResTask, config, str(out2), verbose=0, extra_callbacks=[CrashAtEpochEnd(1)])
    state = json.loads((out2 / "backup" / "all" / "state.json").read_text())
    assert state["epoch"] == 2 and state["previous"]["epoch"] == 1
    (out2 / "backup" / "all" / state["weights"]).write_bytes(b"garbage")
    seen = EpochsSeen()
    with pytest.warns(UserWarning, match=r"^backup .* is unreadable") as warned:
        trainer.fit(superres.SuperResTask, config, str(out2), verbose=0, extra_callbacks=[seen])
    assert len([w for w in warned if "is unreadable" in str(w.message)]) == 1
    assert seen.seen == [1, 2]


class ExplodeAtEpoch(keras.callbacks.Callback):
    """Sets an absurd learning rate at the start of `epoch`: the loss becomes NaN/inf within steps."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.optimizer.learning_rate = 1e35


def test_divergence_stops_with_a_message_and_keeps_the_last_good_state(folders, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(folders, epochs=3, **{"optimizer.schedule": "constant", "steps_per_epoch": 12})
    with pytest.raises(trainer.TrainingDiverged, match=r"training diverged in epoch 2 .*last.keras \(epoch 1\)"):
        trainer.fit(superres.SuperResTask, config, str(out), verbose=0, extra_callbacks=[ExplodeAtEpoch(1)])
    assert not (out / "model.keras").exists() and not (out / "summary.json").exists()
    state = json.loads((out / "backup" / "all" / "state.json").read_text())
    assert state["epoch"] == 1  # the backup of the last good epoch is kept
    last = keras.saving.load_model(out / "checkpoints" / "last.keras", compile=False)
    assert all(keras.ops.all(keras.ops.isfinite(w)) for w in last.weights)


def test_cli_divergence_exits_non_zero(folders, tmp_path, capsys):
    args = cli_args(folders, tmp_path / "run", **{"optimizer.learning_rate": 1e30, "optimizer.schedule": "constant"})
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "error: training diverged in epoch 1" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_failed_start_leaves_no_run_folder(folders, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_args(folders, out) + ["--set", "data.train=/nonexistent/folder"]
    assert train.main(args) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_output_that_is_a_file(folders, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert train.main(cli_args(folders, target)) == 2
    assert f"--output {target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_full_disk_and_read_only_give_one_line(folders, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "model.keras"))

    monkeypatch.setattr(config_lib, "dump", full)  # the first file a run writes
    assert train.main(cli_args(folders, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "run the same command again" in err
    assert "Traceback" not in err

    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/read/only/run")

    assert cli.run(denied) == 2
    assert "cannot write /read/only/run: Permission denied" in capsys.readouterr().err


def test_stale_temporaries_are_removed_on_the_next_start(folders, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    dead = out / "checkpoints" / ".tmp-999999999-last.keras"  # no process has this id
    dead.write_bytes(b"half")
    trainer.fit(superres.SuperResTask, tiny_config(folders), str(out), verbose=0)
    assert not dead.exists()


def test_warmup_is_clamped_to_a_quarter_of_the_steps():
    config = config_lib.load(superres.SuperResConfig, None, ["optimizer.warmup_steps=100", "optimizer.learning_rate=1e-3"])
    with pytest.warns(UserWarning, match="warmup_steps=100 is more than a quarter of the 90 planned steps; warming up "
                      "over 22 steps"):
        optimizer = optimizers.build_optimizer(config, total_steps=90)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (11, 22, 89)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3) and rates[2] < 1e-4


def test_style_weights_error_suggests_only_what_style_accepts(monkeypatch):
    import numpy as np
    from keras.src.utils import file_utils

    from kx_vision.errors import WeightsUnavailableError
    from kx_vision.losses import StyleTransferLoss

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        StyleTransferLoss(np.zeros((32, 32, 3), "float32"), weights="imagenet")
    assert "loss.vgg_weights" in str(info.value) and "loss.name" not in str(info.value)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's start-up logs: checked once, "
                    "in the TensorFlow run")
def test_tensorflow_start_up_logs_are_hidden(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    code = "import tensorflow as tf; tf.config.list_physical_devices()"
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    noisy = [m for m in ("cudart_stub", "cuInit", "absl::InitializeLog", "cpu_feature_guard") if m in loud.stderr]
    if not noisy:
        pytest.skip("this TensorFlow prints no start-up lines here")
    quiet = subprocess.run([sys.executable, "-m", "kx_vision.train", "superres", "--output", str(tmp_path / "r"),
                            "--set", "data.train=/nonexistent"], env=env, capture_output=True, text=True)
    assert quiet.returncode == 2
    assert not [m for m in noisy if m in quiet.stderr], quiet.stderr
    assert quiet.stderr.strip().startswith("error: image folder not found")
