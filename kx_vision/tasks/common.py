"""Config sections shared by the tasks."""

import dataclasses

from kx_vision import distribute
from kx_vision.config import option
from kx_vision.data import arrays


@dataclasses.dataclass
class OptimizerConfig:
    learning_rate: float = option(1e-3, "peak learning rate of Adam", above=0)
    schedule: str = option("cosine", "learning-rate schedule (one_cycle: fastai's fit_one_cycle)",
                           choices=("cosine", "constant", "one_cycle"))
    warmup_steps: int = option(100, "cosine: linear warm-up steps before the decay", min=0)
    pct_start: float = option(0.25, "one_cycle: fraction of the steps spent rising to the peak", above=0, below=1)
    cycle_momentum: bool = option(True, "one_cycle: cycle Adam's beta_1 0.95 -> 0.85 -> 0.95, inversely to the rate")
    group_rates: list[str] = option(
        [], "per-group rate multipliers 'prefix=multiplier' on variable paths, first match wins "
        "(e.g. backbone/conv1=0.01,backbone/=0.1: the lesson's lr/100, lr/10, lr)")
    clipnorm: float | None = option(None, "clip each gradient to this norm (null: no clipping)", above=0)


# Options every task has; called once per config class (a dataclass field object cannot be shared).
def distribute_option():
    return option("auto", "data-parallel training: none, mirrored (this host's devices), multi_worker "
                  "(TF_CONFIG / KERAS_DISTRIBUTION_*), auto", choices=distribute.MODES)


def precision_option():
    return option("float32", "compute dtype policy: float32, mixed_bfloat16 (GPU/TPU) or mixed_float16 "
                  "(with dynamic loss scaling); weights, losses and metrics stay float32",
                  choices=("float32", "mixed_bfloat16", "mixed_float16"))


def pipeline_option():
    return option("auto", "input pipeline: tf_data, numpy (keras.utils.PyDataset, no TensorFlow needed) "
                  "or auto (tf_data where TensorFlow is installed)", choices=arrays.PIPELINES)


def time_budget_option():
    return option(None, "train for this many seconds of training steps (compilation, validation and "
                  "checkpoints not counted), the learning-rate schedule stretched over the time; epochs "
                  "is then an upper bound (null: train for epochs x steps_per_epoch)", above=0)


def seed_option(help="seed of weight initialisation, sampling and augmentation"):
    # NumPy's seed (keras.utils.set_random_seed) must fit in 32 bits, unsigned.
    return option(0, help, min=0, max=2**32 - 1)
