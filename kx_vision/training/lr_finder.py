"""Learning-rate range test (Smith 2015; fastai's `lr_find`), as a Keras callback and a function."""

import json
import math

import keras
import numpy as np

from kx_vision.fileio import atomic_write, atomic_write_text


class LRFinder(keras.callbacks.Callback):
    """Raises the learning rate exponentially from `min_lr` to `max_lr` over `num_steps` batches,
    recording the (exponentially smoothed, bias-corrected) loss; stops once it exceeds
    `stop_factor` times its minimum (divergence) or turns NaN.

    The optimizer's `learning_rate` must be a plain value (a variable), not a schedule.
    """

    def __init__(self, min_lr=1e-7, max_lr=10.0, num_steps=200, smoothing=0.98, stop_factor=4.0):
        super().__init__()
        if not 0 < min_lr < max_lr or num_steps < 2:
            raise ValueError(f"need 0 < min_lr < max_lr and num_steps >= 2, got {min_lr}, {max_lr}, {num_steps}")
        self.min_lr, self.max_lr, self.num_steps = float(min_lr), float(max_lr), int(num_steps)
        self.smoothing, self.stop_factor = float(smoothing), float(stop_factor)
        self.lrs, self.losses, self.raw_losses = [], [], []
        self._step, self._average, self._best, self._previous_mean = 0, 0.0, math.inf, 0.0

    def lr_at(self, step):
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / (self.num_steps - 1))

    def on_train_begin(self, logs=None):
        self._step, self._average, self._best, self._previous_mean = 0, 0.0, math.inf, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0  # Keras's running mean restarts with each epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.lr_at(self._step))

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports the running mean of the epoch's losses; recover this batch's own loss.
        mean = float(logs["loss"])
        loss = (batch + 1) * mean - batch * self._previous_mean
        self._previous_mean = mean
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** (self._step + 1))
        self.lrs.append(self.lr_at(self._step))
        self.raw_losses.append(loss)
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        self._step += 1
        if not math.isfinite(smoothed) or smoothed > self.stop_factor * self._best or self._step >= self.num_steps:
            self.model.stop_training = True


def suggest_lr(lrs, losses, skip_start=5, skip_end=1):
    """The learning rate where the smoothed loss falls fastest against log(lr) (fastai's "steep"),
    searched before the loss minimum; `None` if there are too few points."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    end = int(np.nanargmin(losses)) + 1 if np.isfinite(losses).any() else 0
    end = min(end, len(losses) - skip_end)
    if end - skip_start < 3:
        return None
    window_lrs, window = lrs[skip_start:end], losses[skip_start:end]
    slopes = np.gradient(window, np.log10(window_lrs))
    return float(window_lrs[int(np.argmin(slopes))])


def find_lr(model, dataset, loss, optimizer=None, min_lr=1e-7, max_lr=10.0, num_steps=200, **kwargs):
    """Run the range test on `model` with `dataset`, then restore the model's weights exactly.
    Returns `{"lrs", "losses", "suggestion"}`.

    `dataset` is endless (a repeated `tf.data.Dataset`) or has a length (a `keras.utils.PyDataset`,
    as the TensorFlow-free pipelines give): then as many epochs of it run as `num_steps` needs.

    The model is compiled with `optimizer` (default Adam) and `loss`; compile it again for training.
    """
    saved = [np.array(w) for w in model.get_weights()]
    optimizer = optimizer or keras.optimizers.Adam(min_lr)
    model.compile(optimizer=optimizer, loss=loss)
    finder = LRFinder(min_lr, max_lr, num_steps, **kwargs)
    try:
        if isinstance(dataset, keras.utils.PyDataset):
            epochs = math.ceil(num_steps / max(len(dataset), 1))
            model.fit(dataset, epochs=epochs, callbacks=[finder], verbose=0, shuffle=False)
        else:
            model.fit(dataset, epochs=1, steps_per_epoch=num_steps, callbacks=[finder], verbose=0, shuffle=False)
    finally:
        model.set_weights(saved)
    return {"lrs": finder.lrs, "losses": finder.losses, "suggestion": suggest_lr(finder.lrs, finder.losses)}


def save_plot(result, path):
    """Loss against learning rate (log scale), the suggestion marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    if result["suggestion"] is not None:
        ax.axvline(result["suggestion"], color="tab:red", linestyle="--",
                   label=f"suggested {result['suggestion']:.2e}")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (exponentially smoothed, the task's loss units)")
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def save_json(result, path):
    atomic_write_text(path, json.dumps(result))
