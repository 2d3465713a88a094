"""`time_budget`: training for a wall-clock budget, the learning rate following the clock."""

import json
import math

import keras
import numpy as np
import pytest

from kx_vision import config as config_lib
from kx_vision.tasks import superres
from kx_vision.training import optimizers, trainer
from kx_vision.training.callbacks import TimeBudget


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(keras.callbacks.Callback):
    """Advances the fake clock: `step` per training batch, `validation` per validation run."""

    def __init__(self, clock, step=0.1, validation=0.0):
        super().__init__()
        self.clock, self.step, self.validation = clock, step, validation

    def on_train_batch_end(self, batch, logs=None):
        self.clock.now += self.step

    def on_test_end(self, logs=None):
        self.clock.now += self.validation

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.validation  # checkpointing: not training time either


class WeightsPerStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # JAX keeps the values outside the variables during an epoch
        self.kernels.append(np.array(self.model.layers[-1].kernel))


def tiny_model(learning_rate=0.1):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")


def test_stops_after_the_budget_of_training_steps_only():
    clock = FakeClock()
    budget = TimeBudget(1.0, clock=clock)
    budget.start_phase("all")
    x, y = data()
    history = tiny_model().fit(x, y, batch_size=16, epochs=100, validation_data=(x, y), verbose=0,
                               callbacks=[Tick(clock, step=0.1, validation=5.0), budget])
    # The first batch (compilation) is reported apart; then 10 steps of 0.1 s spend the 1 s budget.
    # Validation and epoch ends (5 s each on this clock) are not counted.
    assert budget.steps == 11 and budget.timed_steps == 10
    assert budget.spent == pytest.approx(1.0) and budget.startup_seconds == pytest.approx(0.1)
    assert budget.exhausted
    assert len(history.history["loss"]) == 3  # 4 steps per epoch: stopped in the 3rd, which is still validated
    assert "val_loss" in history.history


def test_learning_rate_follows_the_clock_inside_compiled_steps():
    clock = FakeClock()
    seen = []

    def schedule(fraction, step):
        seen.append((fraction, step))
        return 0.05 if fraction < 0.5 else 0.0

    budget = TimeBudget(1.0, clock=clock, update_every=0.0)
    budget.start_phase("all", schedule)
    recorder = WeightsPerStep()
    x, y = data()
    model = tiny_model(learning_rate=123.0)  # overridden by the schedule before the first step
    model.fit(x, y, batch_size=16, epochs=100, verbose=0, callbacks=[Tick(clock), budget, recorder])
    kernels = np.stack(recorder.kernels)
    moved = np.abs(np.diff(kernels, axis=0)).max(axis=(1, 2))
    # Steps 1-6 train at 0.05 (fractions 0 ... 0.4 at their start); once half the budget is spent the rate
    # is 0, and the weights stop moving: the assignment reaches the compiled step on every backend.
    assert np.all(moved[:5] > 1e-4), moved
    assert np.all(moved[6:] == 0.0), moved
    assert np.all(np.isfinite(kernels))
    assert seen[0] == (0.0, 0)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == 0.0


def test_time_spent_survives_a_resume(tmp_path):
    clock = FakeClock()
    state = tmp_path / "time_budget.json"
    first = TimeBudget(10.0, clock=clock, state_path=str(state))
    first.start_phase("all", lambda f, s: 0.01)
    x, y = data()
    tiny_model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[Tick(clock), first])
    saved = json.loads(state.read_text())
    assert saved["spent"] == pytest.approx(0.7) and saved["steps"] == 8 and saved["phase"] == "all"

    resumed = TimeBudget(10.0, clock=clock, state_path=str(state))
    resumed.start_phase("all", lambda f, s: 0.01)
    assert resumed.spent == pytest.approx(0.7) and resumed.steps == 8
    assert resumed.fraction == pytest.approx(0.07)
    other = TimeBudget(10.0, clock=clock, state_path=str(state))
    other.start_phase("frozen")  # another phase starts its schedule where the time is now
    assert other.fraction == 0.0


def test_time_schedules():
    def config(**optimizer):
        return config_lib.load(superres.SuperResConfig, None, [f"optimizer.{k}={v}" for k, v in optimizer.items()])

    cosine = optimizers.time_schedule(config(learning_rate=1e-3, warmup_steps=10))
    assert cosine(0.0, 5) == pytest.approx(5e-4)  # linear warm-up by steps
    assert cosine(0.0, 10) == pytest.approx(1e-3)
    assert cosine(0.5, 100) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert cosine(1.0, 10_000) == pytest.approx(1e-5)  # keras CosineDecay's alpha=0.01
    constant = optimizers.time_schedule(config(schedule="constant", learning_rate=3e-4))
    assert constant(0.7, 3) == 3e-4
    cycle = optimizers.time_schedule(config(schedule="one_cycle", learning_rate=1e-3, pct_start=0.25))
    assert cycle(0.0, 0) == pytest.approx(1e-3 / 25)
    assert cycle(0.25, 0) == pytest.approx(1e-3)
    assert cycle(1.0, 0) == pytest.approx(1e-3 / 25e4, abs=1e-9)  # float32 cosine
    assert cycle(0.625, 0) == pytest.approx(1e-3 / 25e4 + (1e-3 - 1e-3 / 25e4) * 0.5, rel=1e-3)


def test_train_superres_for_a_time_budget(folders, tmp_path):
    config = config_lib.load(superres.SuperResConfig, None, [
        f"data.train={folders / 'train'}", f"data.val={folders / 'val'}", "data.patch_size=16",
        "data.batch_size=4", "model.num_blocks=1", "model.num_filters=8", "epochs=1000", "steps_per_epoch=5",
        "time_budget=1.5", "data.pipeline=numpy",
    ])
    _, summary = trainer.fit(superres.SuperResTask, config, str(tmp_path / "run"), verbose=0)
    assert summary["time_budget_seconds"] == 1.5
    assert 1.5 <= summary["train_seconds"] < 1.5 + 1.0
    assert summary["train_steps"] > 1 and summary["startup_seconds"] > 0
    assert math.isfinite(summary["psnr"])
    assert not (tmp_path / "run" / "backup" / "time_budget.json").exists()  # a finished run keeps no state


def test_time_budget_must_be_positive():
    from kx_vision.errors import ConfigError

    with pytest.raises(ConfigError, match="config key 'time_budget' must be > 0"):
        config_lib.load(superres.SuperResConfig, None, ["time_budget=0"])
