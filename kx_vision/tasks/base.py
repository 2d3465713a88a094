"""The contract of a task, and the config every task shares.

A task is a `Task` subclass in a module of `kx_vision.tasks`, with a `Config` dataclass that extends
`TrainConfig`. The `Trainer` (`kx_vision.training.trainer`) builds the task from a config and calls, in order:

    task = MyTask(config)
    task.check_config()               # cross-key checks; each key's type and range are checked on load
    data = task.build_data()          # -> DataBundle
    model = task.build_model()
    for phase in task.phases(model, transferred):           # from `freeze_plan`: a first phase with layers frozen
        model.compile(loss=task.loss, metrics=task.build_metrics(), ...)
        model.fit(data.train, validation_data=data.val, ...)  # checkpoints keep the best `task.monitor`
    message, summary = task.report(model, data)             # printed, and written to summary.json

Nothing in a task touches files other than its data, or the command line: a new task (denoising,
colourisation) is one new module registered in `kx_vision.tasks.TASKS`; see ARCHITECTURE.md.

This module imports no framework: `--help` builds every task's config without Keras.
"""

import dataclasses
import functools

from kx_vision import config as config_lib
from kx_vision.config import option
from kx_vision.data import PIPELINES

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTE_MODES = ("auto", "none", "mirrored", "multi_worker")  # what `kx_vision.training.distribute` sets up


@dataclasses.dataclass
class OptimizerConfig:
    learning_rate: float = option(1e-3, "peak learning rate of Adam", above=0)
    schedule: str = option("cosine", "learning-rate schedule (one_cycle: fastai's fit_one_cycle)",
                           choices=("cosine", "constant", "one_cycle"))
    warmup_steps: int = option(100, "cosine: linear warm-up steps before the decay (at most a quarter of the steps)",
                               min=0)
    pct_start: float = option(0.25, "one_cycle: fraction of the steps spent rising to the peak", above=0, below=1)
    cycle_momentum: bool = option(True, "one_cycle: cycle Adam's beta_1 0.95 -> 0.85 -> 0.95, inversely to the rate")
    group_rates: list[str] = option(
        [], "per-group rate multipliers 'prefix=multiplier' on variable paths, first match wins "
        "(e.g. backbone/conv1=0.01,backbone/=0.1: the lesson's lr/100, lr/10, lr)")
    clipnorm: float | None = option(None, "clip each gradient to this norm (null: no clipping)", above=0)


def pipeline_option():
    """`data.pipeline`, for the tasks whose data sections have one."""
    return option("auto", "input pipeline: tf_data, numpy (keras.utils.PyDataset, no TensorFlow needed) "
                  "or auto (tf_data where TensorFlow is installed)", choices=PIPELINES)


@dataclasses.dataclass
class TrainConfig:
    """What every task's config has: how long and how to train. A task's `Config` extends it and may
    redeclare a field to change its default or help."""

    epochs: int = option(8, "training epochs", min=1)
    time_budget: float | None = option(
        None, "train for this many seconds of training steps (compilation, validation and checkpoints not "
        "counted), the learning-rate schedule stretched over the time; epochs is then an upper bound (null: "
        "train for epochs x steps_per_epoch)", above=0)
    # NumPy's seed (keras.utils.set_random_seed) must fit in 32 bits, unsigned.
    seed: int = option(0, "seed of weight initialisation, sampling and augmentation", min=0, max=2**32 - 1)
    jit_compile: bool | None = option(None, "XLA-compile the train step (null: Keras's 'auto'; JAX always compiles)")
    distribute: str = option("auto", "data-parallel training: none, mirrored (this host's devices), multi_worker "
                             "(TF_CONFIG / KERAS_DISTRIBUTION_*), auto", choices=DISTRIBUTE_MODES)
    precision: str = option("float32", "compute dtype policy: float32, mixed_bfloat16 (GPU/TPU) or mixed_float16 "
                            "(with dynamic loss scaling); weights, losses and metrics stay float32",
                            choices=PRECISIONS)
    init_from: str | None = option(None, "a .keras model whose weights seed this one, by layer name")
    samples: int = option(4, "validation samples drawn after every epoch, into samples/epoch_NNN.png of the run "
                          "folder and TensorBoard's images (0: none)", min=0, max=64)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of training compiled afresh: `epochs` epochs with the layers named in `frozen` not trained.
    `name` names what the phase leaves in a run folder (`backup/NAME`): "frozen" and "all" in the default plan."""

    name: str
    epochs: int
    frozen: tuple = ()


def phase_plan(epochs, frozen=(), frozen_epochs=0):
    """The phases of a run of `epochs` epochs whose first `frozen_epochs` (at most all) train with the layers
    `frozen` frozen: `[Phase("frozen", k, frozen), Phase("all", epochs - k)]`, the empty one left out."""
    frozen_epochs = min(frozen_epochs, epochs) if frozen else 0
    phases = [Phase("frozen", frozen_epochs, tuple(frozen)), Phase("all", epochs - frozen_epochs)]
    return [phase for phase in phases if phase.epochs > 0]


@dataclasses.dataclass
class DataBundle:
    """What `Task.build_data` gives the trainer.

    `train` yields `(inputs, targets)` batches: an endless `tf.data.Dataset` (`endless=True`: an epoch is
    `steps_per_epoch` batches of it) or a finite one / a `keras.utils.PyDataset` of `steps_per_epoch`
    batches. `val` is the validation data in the same form (finite). `extras` holds what the task's
    `report` needs beyond them (e.g. super-resolution's whole validation image pairs)."""

    train: object
    val: object
    steps_per_epoch: int
    endless: bool
    extras: dict = dataclasses.field(default_factory=dict)


class Task:
    """One kind of training job: its config, model, loss, metrics, data and report."""

    name = None  # the command-line name (`python -m kx_vision.train NAME`)
    Config = TrainConfig
    monitor = ("val_loss", "min")  # what `checkpoints/best.keras` is chosen by

    def __init__(self, config=None):
        self.config = self.Config() if config is None else config

    @classmethod
    def describe(cls):
        """First line of the task's docstring (for `--help`)."""
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    def check_config(self):
        """Raise `ConfigError` for a combination of values that cannot work (types and ranges of single
        keys are checked when the config is read; this checks them again for configs built in Python)."""
        config_lib.validate(self.config)

    def build_model(self):
        raise NotImplementedError

    @functools.cached_property
    def loss(self):
        """The training loss, built once per task (a loss holding a network is shared with the metrics)."""
        return self.build_loss()

    def build_loss(self):
        raise NotImplementedError

    def build_metrics(self):
        return []

    def build_data(self):
        """-> `DataBundle`."""
        raise NotImplementedError

    def freeze_plan(self, model, transferred):
        """`(layer_names, epochs)`: layers trained frozen for a first phase of `epochs` (none by default).
        `transferred` names the layers `init_from` filled."""
        return [], 0

    def phases(self, model, transferred):
        """The phases the trainer runs in order (`Phase`s, epochs adding up to `config.epochs`): by default
        `freeze_plan`'s frozen phase, then one that trains every layer. A task with another plan (unfreezing
        stage by stage) overrides this."""
        frozen, epochs = self.freeze_plan(model, transferred)
        return phase_plan(self.config.epochs, frozen, epochs)

    def report(self, model, data):
        """`(message, summary)`: a few lines for the terminal and a dict of final scores."""
        return "", {}

    def render_examples(self, model, examples):
        """A picture of `model`'s outputs on a few validation samples: a `kx_vision.inference.pictures.Grid` with one
        row per sample, or None to draw nothing. The trainer draws one after every epoch
        (`samples/epoch_NNN.png`, `config.samples` samples; `callbacks.ExampleImages`). `examples` is a
        list of `(inputs, targets)` NumPy arrays of one sample each (a batch axis of 1), cut from the
        validation data by `callbacks.take_examples`.

        By default (image-to-image tasks, such as denoising): input | prediction | target, each where it
        is an image (`(1, H, W, 1 or 3)`, values in [0, 1]); None when the model's output is not one."""
        import numpy as np

        from kx_vision.inference import pictures
        from kx_vision.inference.tiling import as_predict_fn

        predict = as_predict_fn(model)
        rows = []
        for inputs, targets in examples:
            if not isinstance(inputs, np.ndarray):
                return None
            outputs = predict(inputs)
            if not pictures.is_image(outputs):
                return None
            rows.append([a if pictures.is_image(a) else None for a in (inputs, outputs, targets)])
        captions = [["input", "prediction", "target"]] * len(rows)
        return pictures.grid(rows, captions) if rows else None
