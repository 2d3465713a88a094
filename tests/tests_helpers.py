"""NumPy references shared by tests."""

import os
import subprocess
import sys

import keras
import numpy as np


def numpy_y(rgb):
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2])


def numpy_y_psnr(a, b, shave):
    """Y-PSNR (BT.601, 0-255 peak) of two (H, W, 3) images in [0, 1], border `shave` removed."""
    a, b = numpy_y(np.asarray(a, np.float64)), numpy_y(np.asarray(b, np.float64))
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))


class CrashAfterFirstEpoch(keras.callbacks.Callback):
    """Simulates a killed run: interrupts training at the end of epoch 0."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


class EpochsSeen(keras.callbacks.Callback):
    """Records the epochs that actually train (a resumed run skips the finished ones)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


class DumpWeights(keras.callbacks.Callback):
    """Saves the weights when training starts and ends, as `initial_NAME.npz` and `final_NAME.npz` in `folder`."""

    def __init__(self, folder, name):
        super().__init__()
        self.folder, self.name = folder, name

    def _dump(self, when):
        np.savez(os.path.join(self.folder, f"{when}_{self.name}.npz"),
                 *[keras.ops.convert_to_numpy(w) for w in self.model.weights])

    def on_train_begin(self, logs=None):
        self._dump("initial")

    def on_train_end(self, logs=None):
        self._dump("final")


def tiny_config(folder, **extra):
    """A super-resolution config small enough to train in seconds on the `folders` fixture's images."""
    from kx_vision import config as config_lib
    from kx_vision.tasks import superres

    assignments = [f"data.train={folder}/train", f"data.val={folder}/val", "data.patch_size=16",
                   "data.batch_size=4", "model.num_blocks=1", "model.num_filters=8", "epochs=2",
                   "steps_per_epoch=3", "optimizer.warmup_steps=0"] + [f"{k}={v}" for k, v in extra.items()]
    return config_lib.load(superres.SuperResConfig, None, assignments)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def dead_pid():
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def export_expectations(model, sizes, rng, image_model):
    """What an exported model's endpoints must return, from the Keras model: inputs at `sizes` (a batch of 2
    each), the float outputs (an image model's clipped to [0, 1]), the inputs as uint8 and the outputs for them
    (an image model's as rounded uint8), and the raw float outputs."""
    from keras import ops

    inputs = [rng.random((2, *size, 3)).astype("float32") for size in sizes]
    raw = [ops.convert_to_numpy(model(x)) for x in inputs]
    uint8 = [(x * 255).round().astype(np.uint8) for x in inputs]
    outputs8 = [ops.convert_to_numpy(model(x.astype("float32") / 255)) for x in uint8]
    outputs = raw
    if image_model:
        outputs = [np.clip(y, 0, 1) for y in raw]
        outputs8 = [np.round(np.clip(y, 0, 1) * 255).astype(np.uint8) for y in outputs8]
    return inputs, outputs, uint8, outputs8, raw
