"""Training callbacks that Keras does not provide as such."""

import contextlib
import json
import math
import os
import warnings

import keras

from kx_vision.fileio import atomic_write, atomic_write_text


def save_model_atomic(model, path):
    """`model.save(path)` through a temporary file and `os.replace`, so an interrupted save never
    leaves a truncated file where a good one was."""
    atomic_write(path, model.save)


def save_weights_atomic(model, path):
    """`model.save_weights(path)` (a `.weights.h5` path), atomically."""
    atomic_write(path, model.save_weights)


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` after every epoch and `best.keras` when `monitor` improves.

    Keras's `ModelCheckpoint` writes straight to the final file name: a run killed while saving
    would destroy the previous checkpoint. This callback writes atomically (`save_model_atomic`).
    An epoch whose training loss is not finite (a diverged run) is never saved. `best` (and
    `best_epoch`) carry the best value over a resumed run, so `best.keras` is only ever replaced
    by a better model.
    """

    def __init__(self, directory, monitor="val_loss", mode="min", best=None, best_epoch=None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self.best = (math.inf if mode == "min" else -math.inf) if best is None else float(best)
        self.best_epoch = best_epoch
        self.last_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "loss" in logs and not _finite(logs["loss"]):
            return
        save_model_atomic(self.model, os.path.join(self.directory, "last.keras"))
        self.last_epoch = epoch + 1
        value = logs.get(self.monitor)
        if value is None or not _finite(value):
            return
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            save_model_atomic(self.model, os.path.join(self.directory, "best.keras"))
            self.best, self.best_epoch = float(value), epoch + 1


class TrainingBackup(keras.callbacks.Callback):
    """The training state (weights, optimizer state, epoch, the checkpoint's best value) saved at
    every epoch end, so that a killed run continues from its last finished epoch.

    Keras's `BackupAndRestore` writes `latest.weights.h5` in place: a run killed while writing it
    leaves a truncated file that every rerun then fails to read. Here each epoch's weights go to a
    new file, written atomically, and `state.json` (also atomic) points at it only once it is
    complete; the previous epoch's file is kept as a fallback until the next one is written. An
    epoch whose loss is not finite is never backed up. `restore(model)` (before `fit`, on a compiled
    model) loads the newest readable state and returns it, or None; an unreadable backup is a warning.
    """

    def __init__(self, directory, checkpoint=None):
        super().__init__()
        self.directory = directory
        self.checkpoint = checkpoint  # an AtomicModelCheckpoint whose best value is backed up too
        self.state_path = os.path.join(directory, "state.json")

    def read_state(self):
        if not os.path.isfile(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def restore(self, model):
        """Load the newest readable backup into `model` (compiled); the state dict, or None."""
        state = self.read_state()
        if state is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so its variables can be loaded
        for candidate in (state, state.get("previous")):
            if not candidate:
                continue
            path = os.path.join(self.directory, candidate["weights"])
            try:
                model.load_weights(path)
            except Exception as error:  # noqa: BLE001 - an unreadable backup falls back, with one warning
                warnings.warn(f"backup {path} is unreadable ({type(error).__name__}); falling back to the one "
                              "before it", stacklevel=2)
                continue
            return candidate
        warnings.warn(f"no readable backup in {self.directory}: training this phase from its start", stacklevel=2)
        return None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "loss" in logs and not _finite(logs["loss"]):
            return
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        save_weights_atomic(self.model, os.path.join(self.directory, name))
        previous = self.read_state()
        state = {"epoch": epoch + 1, "weights": name}
        if self.checkpoint is not None:
            state.update(monitor=self.checkpoint.monitor, best=self.checkpoint.best,
                         best_epoch=self.checkpoint.best_epoch)
            if not _finite(state["best"]):
                state["best"] = None
        if previous:
            state["previous"] = {k: v for k, v in previous.items() if k != "previous"}
        atomic_write_text(self.state_path, json.dumps(state, indent=1))
        keep = {name, state.get("previous", {}).get("weights")}
        for old in os.listdir(self.directory):
            if old.endswith(".weights.h5") and old.startswith("epoch-") and old not in keep:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, old))


    def prune(self):
        """Keep only the newest backup (once a run is finished, for continuing it with more epochs)."""
        state = self.read_state()
        if not state or "previous" not in state:
            return
        previous = state.pop("previous")
        atomic_write_text(self.state_path, json.dumps(state, indent=1))
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.directory, previous["weights"]))


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training when the loss stops being finite, remembering where (`diverged`).

    Keras's `TerminateOnNaN` reads the loss after every step, which makes JAX and TensorFlow wait
    for each step before queueing the next. The loss Keras reports is the running mean of the
    epoch, so once a step's loss is NaN or infinite it stays so: checking every `check_every`
    steps and at the epoch's end catches every divergence, a few steps late at most.
    """

    def __init__(self, check_every=10):
        super().__init__()
        self.check_every = check_every
        self.diverged = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, step):
        value = (logs or {}).get("loss")
        if value is not None and not _finite(keras.ops.convert_to_numpy(value)):
            self.diverged = {"epoch": self._epoch + 1, "step": step, "loss": float(keras.ops.convert_to_numpy(value))}
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.diverged is None and (batch + 1) % self.check_every == 0:
            self._check(logs, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged is None:
            self._check(logs, "end")


class TimeBudget(keras.callbacks.Callback):
    """Train for a wall-clock budget instead of a step count (the `time_budget` config key).

    Counts the time spent in training steps only: the first batch of every `fit` (compilation and
    the pipeline's start) is measured separately as `startup_seconds`, and validation and
    checkpointing at epoch ends are not counted either. Once `budget` seconds are spent, training
    stops at the end of that step (the epoch is then validated and checkpointed as usual).

    `schedule(fraction, step)`, if given, returns the learning rate for the fraction of the budget
    spent in this phase (0 -> 1) and the number of steps taken in it (for a warm-up); it is applied
    every `update_every` of the budget, so the rate follows the clock as the PyTorch peer's does
    (`benchmarks/torch_peer.py`), whatever the step time. Keras schedules are functions of the step
    alone and cannot do this.
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
            state = {"phase": self.phase, "spent": self.spent, "steps": self.steps, "timed_steps": self.timed_steps, "startup_seconds": self.startup_seconds,
                     "phase_start": self.phase_start, "phase_start_step": self.phase_start_step,
                     "budget": self.budget}

            atomic_write_text(self.state_path, json.dumps(state))

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


def take_examples(data, count):
    """Up to `count` single samples `(inputs, targets)` (NumPy arrays with a batch axis of 1) from the
    first batches of `data`: a `tf.data.Dataset`, a `keras.utils.PyDataset` or any iterable of
    `(inputs, targets[, weights])` batches. Batches whose inputs or targets are not arrays (several
    inputs in a dict) give none. Indexing a kx_vision `PyDataset` draws nothing from a random stream,
    so taking examples does not change the batches training sees."""
    import itertools

    import numpy as np

    examples = []
    if data is None or count <= 0:
        return examples
    if isinstance(data, keras.utils.PyDataset):
        try:
            indices = range(len(data))
        except (TypeError, NotImplementedError):  # an endless PyDataset
            indices = itertools.count()
        batches = (data[i] for i in indices)
    else:
        batches = iter(data)
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            break
        inputs, targets = (None if isinstance(t, (dict, list, tuple)) else np.asarray(t) for t in batch[:2])
        if inputs is None or targets is None or inputs.dtype == object or not inputs.ndim:
            break
        for k in range(min(len(inputs), len(targets))):
            examples.append((inputs[k : k + 1], targets[k : k + 1]))
            if len(examples) == count:
                return examples
    return examples


class ExampleImages(keras.callbacks.Callback):
    """After every epoch, a picture of the model's outputs on a few validation samples (fastai's
    `show_results`, once per epoch): `directory/epoch_NNN.png` (epochs counted from 1), and the same
    picture as an image in TensorBoard (tag `samples`, step = epoch) in `log_dir`, where given.

    `render(model, examples)` draws it (`Task.render_examples`: a `pictures.Grid`, an image array, or
    None for nothing). The examples are `take_examples(data, count)`, taken once, at the first `fit`
    (one callback serves every phase of a run), so every epoch shows the same samples. A picture that
    cannot be drawn stops the pictures with one warning, never the training; one that cannot be written
    (a full disk) stops the run, as a checkpoint would.
    """

    def __init__(self, render, data, count, directory, log_dir=None):
        super().__init__()
        self.render, self.data, self.count = render, data, int(count)
        self.directory, self.log_dir = directory, log_dir
        self.examples = None
        self.stopped = False
        self.written = []  # the PNG files written, in order
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.examples is None:
            self.examples = take_examples(self.data, self.count)
            self.data = None  # the samples are all it needs

    def on_epoch_end(self, epoch, logs=None):
        from kx_vision.inference import pictures

        logs = logs or {}
        if self.stopped or not self.examples or ("loss" in logs and not _finite(logs["loss"])):
            return  # nothing of a diverged epoch is kept
        try:
            picture = self.render(self.model, self.examples)
        except Exception as error:  # noqa: BLE001 - a picture never stops a training run
            self.stopped = True
            warnings.warn(f"cannot draw the validation samples ({type(error).__name__}: {error}); "
                          "training goes on without them", stacklevel=2)
            return
        if picture is None:  # the task draws nothing
            self.stopped = True
            return
        image = pictures.to_uint8(picture.image if isinstance(picture, pictures.Grid) else picture)
        path = os.path.join(self.directory, f"epoch_{epoch + 1:03d}.png")
        pictures.save_png(image, path)
        self.written.append(path)
        if self.log_dir:
            self._write_tensorboard(image, epoch + 1)

    def _write_tensorboard(self, image, step):
        """The PNG as a TensorBoard image summary, through TensorBoard's own event writer (no TensorFlow
        summary ops: it works the same under every backend)."""
        import time

        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        from kx_vision.inference import pictures

        if self._writer is None:
            self._writer = EventFileWriter(self.log_dir)
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="samples", image=summary_pb2.Summary.Image(
            height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=pictures.png_bytes(image)))])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
