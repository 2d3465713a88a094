"""NumPy references shared by tests."""

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
