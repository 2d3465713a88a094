"""The Trainer without a run folder, its phase plan, and starts that fail before anything is written (issue 28)."""

import os

import keras
import numpy as np
import pytest
from tests_helpers import EpochsSeen, tiny_config

from kx_vision.tasks import superres
from kx_vision.tasks.base import Phase, phase_plan
from kx_vision.training import trainer
from kx_vision.training.run_folder import RunFolder


def files_under(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def test_in_memory_training_leaves_no_files_and_returns_a_history(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake would land here
    before = files_under(tmp_path)
    task = superres.SuperResTask(tiny_config(folders, **{"data.pipeline": "numpy"}))
    run = trainer.Trainer(task, verbose=0)
    history = run.fit()
    assert files_under(tmp_path) == before
    assert isinstance(history, keras.callbacks.History) and history.epoch == [0, 1]
    assert len(history.history["loss"]) == 2 and len(history.history["val_loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.model is run.model and run.model.scale == 2
    assert np.isfinite(run.summary["psnr"]) and "best" not in run.summary  # no checkpoints in memory
    assert "validation Y-PSNR (x2, 1 images): model" in capsys.readouterr().out  # the report, as a run prints it


def test_in_memory_training_goes_on_with_a_given_model(folders):
    task = superres.SuperResTask(tiny_config(folders, epochs=1, **{"data.pipeline": "numpy"}))
    first = trainer.Trainer(task, verbose=0)
    first.fit()
    weights = [np.array(w) for w in first.model.get_weights()]
    second = trainer.Trainer(task, verbose=0)
    second.fit(model=first.model)
    assert second.model is first.model
    assert any(not np.array_equal(a, np.array(b)) for a, b in zip(weights, second.model.get_weights()))


def test_phase_plan_from_frozen_layers_and_epochs():
    assert phase_plan(5, ["head_conv"], 2) == [Phase("frozen", 2, ("head_conv",)), Phase("all", 3)]
    assert phase_plan(5, [], 2) == [Phase("all", 5)]  # nothing to freeze: one phase
    assert phase_plan(2, ["head_conv"], 5) == [Phase("frozen", 2, ("head_conv",))]  # never past `epochs`
    task = superres.SuperResTask(tiny_config("unused", epochs=3, freeze_transferred_epochs=1))
    assert task.phases(None, ["head_conv"]) == [Phase("frozen", 1, ("head_conv",)), Phase("all", 2)]
    assert task.phases(None, []) == [Phase("all", 3)]


class ThreePhases(superres.SuperResTask):
    """Unfreezes stage by stage: a plan of three phases, as data."""

    def phases(self, model, transferred):
        return [Phase("tail", 1, ("head_conv", "block_0")), Phase("body", 1, ("head_conv",)), Phase("all", 1)]


class Trainable(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append({name: self.model.get_layer(name).trainable for name in ("head_conv", "block_0", "tail_conv")})


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "run_folder"])
def test_the_trainer_runs_the_phases_of_the_plan_in_order(folders, tmp_path, in_memory):
    trainable, epochs = Trainable(), EpochsSeen()
    task = ThreePhases(tiny_config(folders, epochs=3, samples=0, **{"data.pipeline": "numpy"}))
    history = trainer.Trainer(task, None if in_memory else tmp_path / "run", verbose=0,
                              callbacks=[trainable, epochs]).fit()
    assert epochs.seen == [0, 1, 2] and history.epoch == [0, 1, 2]
    assert trainable.seen == [{"head_conv": False, "block_0": False, "tail_conv": True},
                              {"head_conv": False, "block_0": True, "tail_conv": True},
                              {"head_conv": True, "block_0": True, "tail_conv": True}]
    if not in_memory:  # the finished phases left their weights, the last one its backup
        run = RunFolder(tmp_path / "run")
        assert os.path.isfile(run.phase_marker("tail")) and os.path.isfile(run.phase_marker("body"))
        assert sorted(os.listdir(run.backup)) == ["all"]


@pytest.mark.parametrize("failure", ["data", "init_from", "offline_weights", "config"])
def test_a_start_that_fails_leaves_no_run_folder(folders, tmp_path, monkeypatch, failure):
    from keras.src.utils import file_utils

    from kx_vision.errors import ConfigError, DataError, KxVisionError, WeightsUnavailableError

    extra, error = {
        "data": ({"data.train": str(tmp_path / "missing")}, DataError),
        "init_from": ({"init_from": str(tmp_path / "missing.keras")}, KxVisionError),
        "offline_weights": ({"loss.name": "perceptual", "loss.vgg_weights": "imagenet"}, WeightsUnavailableError),
        "config": ({}, ConfigError),
    }[failure]
    config = tiny_config(folders, **{"data.pipeline": "numpy", **extra})
    if failure == "config":
        config.data.patch_size = 15  # not a multiple of the scale: refused by the task's check_config
    if failure == "offline_weights":
        def offline(*args, **kwargs):
            raise Exception("URL fetch failure: no network")

        monkeypatch.setattr(file_utils, "get_file", offline)
    out = tmp_path / "run"
    with pytest.raises(error):
        trainer.fit(superres.SuperResTask, config, out, verbose=0)
    assert not out.exists()
