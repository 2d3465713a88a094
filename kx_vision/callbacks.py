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
