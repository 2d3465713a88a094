"""Training: what runs a task's model through `fit`, the floor above the tasks (ARCHITECTURE.md).

- `trainer`: `Trainer(task, run=None)` runs any task in its phases, in memory or into a run folder;
  `fit` and `find_learning_rate`, what `python -m kx_vision.train` calls.
- `run_folder`: the files of a training run (config, checkpoints, history, samples, what resuming needs).
- `callbacks`: atomic checkpoints, backups to resume from, the time budget, divergence, pictures of samples.
- `optimizers`: `Adam`, `AdamW`, `SGD` with per-group learning rates; the one-cycle and time schedules.
- `lr_finder`: the learning-rate range test.
- `distribute`: data-parallel training with one setting, on TensorFlow or JAX.
- `keras_fixes`: the version-guarded workarounds of Keras.

Importing this package imports none of them (nor Keras): each submodule loads on first use
(`kx_vision.training.trainer`).
"""

import importlib

SUBMODULES = ("callbacks", "distribute", "keras_fixes", "lr_finder", "optimizers", "run_folder", "trainer")


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
