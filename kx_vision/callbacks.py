"""Training callbacks that Keras does not provide as such."""

import math
import os

import keras


def _atomic(save, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model_atomic(model, path):
    """`model.save(path)` through a temporary file and `os.replace`, so an interrupted save never
    leaves a truncated file where a good one was."""
    _atomic(model.save, path)


def save_weights_atomic(model, path):
    """`model.save_weights(path)` (a `.weights.h5` path), atomically."""
    _atomic(model.save_weights, path)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` after every epoch and `best.keras` when `monitor` improves.

    Keras's `ModelCheckpoint` writes straight to the final file name: a run killed while saving
    would destroy the previous checkpoint. This callback writes atomically (`save_model_atomic`).
    """

    def __init__(self, directory, monitor="val_loss", mode="min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        save_model_atomic(self.model, os.path.join(self.directory, "last.keras"))
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value):
            return
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            self.best = float(value)
            save_model_atomic(self.model, os.path.join(self.directory, "best.keras"))


class TimeBudget(keras.callbacks.Callback):
    """Train for a wall-clock budget instead of a step count (`train.time_budget`).

    Counts the time spent in training steps only: the first batch of every `fit` (compilation and
    the pipeline's start) is measured separately as `startup_seconds`, and validation and
    checkpointing at epoch ends are not counted either. Once `budget` seconds are spent, training
    stops at the end of that step (the epoch is then validated and checkpointed as usual).

    `schedule(fraction, step)`, if given, returns the learning rate for the fraction of the budget
    spent in this phase (0 -> 1) and the number of steps taken in it (for a warm-up); it is applied
    every `update_every` of the budget, so the rate follows the clock as `torch_edsr_train.py`'s
    does, whatever the step time. Keras schedules are functions of the step alone and cannot do this.
    Call `start_phase(name, schedule)` before each `fit` of a run.

    The time spent survives a resumed run through `state_path` (a small JSON file written at each
    epoch end). `clock` is for tests.
    """

    def __init__(self, budget, schedule=None, state_path=None, update_every=0.002, sync_every=10,
                 clock=None):
        super().__init__()
        if not budget or budget <= 0:
            raise ValueError(f"TimeBudget: budget must be > 0 seconds, got {budget!r}")
        import time

        self.budget = float(budget)
        self.schedule = schedule
        self.state_path = state_path
        self.update_every = float(update_every)
        self.sync_every = int(sync_every)
        self.clock = clock or time.perf_counter
        self.spent = 0.0  # training seconds, over every phase of the run
        self.startup_seconds = 0.0
        self.steps = 0  # every step, the first of each fit included
        self.timed_steps = 0  # the steps whose time was counted
        self.phase_start = 0.0  # `spent` when the current schedule's fit started
        self.phase_start_step = 0
        self._last = None
        self._first_batch = True
        self._applied = None
        if state_path and os.path.isfile(state_path):
            import json

            with open(state_path) as f:
                state = json.load(f)
            self.spent, self.steps, self.timed_steps = float(state["spent"]), int(state["steps"]), int(state["timed_steps"])
            self.startup_seconds = float(state.get("startup_seconds", 0.0))
            self._resumed_phase = (state.get("phase"), state.get("phase_start", 0.0), state.get("phase_start_step", 0))
        else:
            self._resumed_phase = None
        self.phase = None

    @property
    def exhausted(self):
        return self.spent >= self.budget

    @property
    def fraction(self):
        """Fraction of this phase's share of the budget spent."""
        share = self.budget - self.phase_start
        return min(max((self.spent - self.phase_start) / share, 0.0), 1.0) if share > 0 else 1.0

    def start_phase(self, name, schedule=None):
        """Call before each `fit` (a training phase): `schedule` spans what is left of the budget from
        here, or, in a resumed run, from where the interrupted phase of that name started."""
        self.phase, self.schedule = name, schedule
        if self._resumed_phase is not None and self._resumed_phase[0] == name:
            _, self.phase_start, self.phase_start_step = self._resumed_phase
        else:
            self.phase_start, self.phase_start_step = self.spent, self.steps
        self._first_batch = True
        self._applied = None

    def on_train_begin(self, logs=None):
        if self.exhausted:
            self.model.stop_training = True
        self._apply_schedule(force=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._last is None:
            self._last = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.sync_every and (self._first_batch or self.steps % self.sync_every == 0):
            # JAX and TensorFlow dispatch steps asynchronously: wait for this one now and then, so
            # the clock measures computation, not how fast Python can queue work.
            _wait_for(logs)
        now = self.clock()
        if self._first_batch:
            self.startup_seconds += now - self._last
            self._first_batch = False
        else:
            self.spent += now - self._last
            self.timed_steps += 1
        self._last = now
        self.steps += 1
        if self.exhausted:
            self.model.stop_training = True
        else:
            self._apply_schedule()

    def on_epoch_end(self, epoch, logs=None):
        self._last = None  # validation and checkpoint saving are not training time
        if self.state_path:
            import json

            state = {"phase": self.phase, "spent": self.spent, "steps": self.steps, "timed_steps": self.timed_steps, "startup_seconds": self.startup_seconds,
                     "phase_start": self.phase_start, "phase_start_step": self.phase_start_step,
                     "budget": self.budget}

            def write(tmp):
                with open(tmp, "w") as f:
                    json.dump(state, f)

            _atomic(write, self.state_path)

    def _apply_schedule(self, force=False):
        if self.schedule is None:
            return
        fraction = self.fraction
        if not force and self._applied is not None and fraction - self._applied < self.update_every:
            return
        optimizer = self.model.optimizer
        value = float(self.schedule(fraction, self.steps - self.phase_start_step))
        # On JAX, `fit` holds the variables' values outside the variables between epochs; bring
        # them back first, so the assignment is seen by the next step (Keras's public hook).
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        optimizer.learning_rate = value
        self._applied = fraction

    def summary(self):
        return {"time_budget_seconds": self.budget, "train_seconds": round(self.spent, 3), "train_steps": self.steps,
                "step_ms": round(1000 * self.spent / max(self.timed_steps, 1), 3),
                "startup_seconds": round(self.startup_seconds, 3)}


def _wait_for(logs):
    for value in (logs or {}).values():
        keras.ops.convert_to_numpy(value)
        return
