"""The lesson's training tools on the optimizer side: one-cycle schedules and per-group learning rates.

Keras optimizers have no parameter groups. `Adam`, `AdamW` and `SGD` here are Keras's, extended with
`group_rates`: an ordered list of `(variable-path prefix, multiplier)`; each variable's update uses the
learning rate times the multiplier of the first prefix its path starts with (1 otherwise). The
*learning rate* is scaled, not the gradient: Adam normalises gradients, so scaling them would change
nothing. This runs inside `update_step`, which every backend and `tf.distribute` strategy call per
variable, so it works unchanged under MirroredStrategy and on JAX. Variable paths look like
`backbone/conv1_conv/kernel` (a U-Net's encoder) or `block_3/conv1/kernel` (EDSR).

`Adam` / `AdamW` also take `beta_1` as a schedule, so the one-cycle policy can cycle momentum inversely
to the learning rate (fastai's `fit_one_cycle`, the lesson's `use_clr_beta`).

`build_optimizer(config, total_steps)` turns a task config's `optimizer` section into one of them, with its
learning-rate schedule over the steps of a training phase; `time_schedule(config)` gives the same schedule
as a function of the fraction of a time budget spent (`callbacks.TimeBudget` applies it).
"""

import math
import warnings

import keras
from keras import ops

from kx_vision.errors import ConfigError


@keras.saving.register_keras_serializable(package="kx_vision")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One cycle from `start` to `peak` over the first `pct_start` of `total_steps`, then to `end`,
    with cosine (default) or linear interpolation; constant at `end` afterwards.

    Learning rate (Smith 2018, fastai): `OneCycle(max_lr / 25, max_lr, max_lr / 25e4, steps)`;
    momentum, cycled inversely: `OneCycle(0.95, 0.85, 0.95, steps)` (see `one_cycle`).
    """

    def __init__(self, start, peak, end, total_steps, pct_start=0.25, anneal="cos", name="one_cycle"):
        if anneal not in ("cos", "linear"):
            raise ValueError(f"OneCycle: anneal must be 'cos' or 'linear', got {anneal!r}")
        if not 0.0 <= pct_start <= 1.0 or total_steps < 1:
            raise ValueError(f"OneCycle: need 0 <= pct_start <= 1 and total_steps >= 1, got {pct_start}, {total_steps}")
        self.start, self.peak, self.end = float(start), float(peak), float(end)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.anneal = anneal
        self.name = name

    def _interpolate(self, a, b, t):
        t = ops.clip(t, 0.0, 1.0)
        if self.anneal == "cos":
            return a + (b - a) * (1.0 - ops.cos(math.pi * t)) / 2.0
        return a + (b - a) * t

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = max(self.pct_start * self.total_steps, 1e-8)
        down = max(self.total_steps - up, 1e-8)
        rising = self._interpolate(self.start, self.peak, step / up)
        falling = self._interpolate(self.peak, self.end, (step - up) / down)
        return ops.where(step < up, rising, falling)

    def get_config(self):
        return {"start": self.start, "peak": self.peak, "end": self.end, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal": self.anneal, "name": self.name}


def one_cycle(max_lr, total_steps, pct_start=0.25, div_factor=25.0, final_div_factor=1e4,
              momentum=(0.95, 0.85)):
    """`(learning_rate_schedule, beta_1_schedule)` of the one-cycle policy (fastai's defaults)."""
    lr = OneCycle(max_lr / div_factor, max_lr, max_lr / (div_factor * final_div_factor), total_steps, pct_start)
    high, low = momentum
    return lr, OneCycle(high, low, high, total_steps, pct_start, name="one_cycle_momentum")


def parse_group_rates(group_rates):
    """`[(prefix, multiplier)]` from a dict, a list of pairs, or strings "prefix=multiplier"."""
    if not group_rates:
        return []
    if isinstance(group_rates, dict):
        group_rates = list(group_rates.items())
    parsed = []
    for item in group_rates:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"group rate {item!r} must look like 'prefix=multiplier'")
            prefix, value = item.rsplit("=", 1)
            item = (prefix, float(value))
        prefix, value = item
        if float(value) < 0:
            raise ValueError(f"group rate multiplier for {prefix!r} must be >= 0, got {value}")
        parsed.append((str(prefix), float(value)))
    return parsed


class _GroupRates:
    """Mixin of `Adam`, `AdamW` and `SGD`: `group_rates` (the learning rate scaled per variable by the first
    matching path prefix) and, for an optimizer with a `beta_1`, `beta_1_schedule`."""

    def __init__(self, learning_rate=None, group_rates=None, beta_1_schedule=None, **kwargs):
        if learning_rate is not None:  # else the Keras optimizer's default: 0.001 for Adam, 0.01 for SGD
            kwargs["learning_rate"] = learning_rate
        super().__init__(**kwargs)
        if beta_1_schedule is not None and not hasattr(self, "beta_1"):
            raise ValueError(f"{type(self).__name__} has no beta_1 to schedule: beta_1_schedule is for Adam and AdamW")
        self.group_rates = parse_group_rates(group_rates)
        self.beta_1_schedule = beta_1_schedule

    def rate_multiplier(self, variable):
        # Keras variables have a `path`; the TensorFlow optimizer passes the underlying tf.Variable,
        # whose name is that path plus ":0".
        path = getattr(variable, "path", None) or variable.name.split(":")[0]
        for prefix, value in self.group_rates:
            if path.startswith(prefix):
                return value
        return 1.0

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self.rate_multiplier(variable)
        if multiplier == 0.0:
            return None  # this group is not trained (its variables keep their values)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        if self.beta_1_schedule is None:
            return super().update_step(gradient, variable, learning_rate)
        # Momentum cycling: the parent's update reads self.beta_1; give it this step's value.
        constant = self.beta_1
        self.beta_1 = ops.cast(self.beta_1_schedule(self.iterations), variable.dtype)
        try:
            return super().update_step(gradient, variable, learning_rate)
        finally:
            self.beta_1 = constant

    def get_config(self):
        config = super().get_config()
        config["group_rates"] = [[p, v] for p, v in self.group_rates]
        if self.beta_1_schedule is not None:
            config["beta_1_schedule"] = keras.saving.serialize_keras_object(self.beta_1_schedule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("beta_1_schedule"), dict):
            config["beta_1_schedule"] = keras.saving.deserialize_keras_object(config["beta_1_schedule"])
        return super().from_config(config, custom_objects=custom_objects)


@keras.saving.register_keras_serializable(package="kx_vision")
class Adam(_GroupRates, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with `group_rates` and an optional `beta_1_schedule`."""


@keras.saving.register_keras_serializable(package="kx_vision")
class AdamW(_GroupRates, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with `group_rates` and an optional `beta_1_schedule`."""


@keras.saving.register_keras_serializable(package="kx_vision")
class SGD(_GroupRates, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with `group_rates`."""


# --- from a config: the optimizer of a training phase and its schedule ---

# The warm-up never takes more than this fraction of a phase's steps: a warm-up as long as the
# training would leave the rate climbing until the end (the segmentation demo's 100 of 90 steps).
MAX_WARMUP_FRACTION = 0.25


def warmup_steps(requested, total_steps):
    """`requested` warm-up steps, clamped to `MAX_WARMUP_FRACTION` of `total_steps` (with a warning)."""
    limit = int(MAX_WARMUP_FRACTION * total_steps)
    if requested > limit:
        warnings.warn(f"optimizer.warmup_steps={requested} is more than a quarter of the {total_steps} planned "
                      f"steps; warming up over {limit} steps instead", stacklevel=3)
        return limit
    return requested


def time_schedule(config):
    """The configured learning-rate schedule as a function of the fraction of a time budget spent
    (and of the step, for the warm-up): what `callbacks.TimeBudget` applies with `time_budget`."""
    opt = config.optimizer
    if opt.schedule == "constant":
        return lambda fraction, step: opt.learning_rate
    if opt.schedule == "one_cycle":
        resolution = 10_000  # the schedule evaluated on a grid of fractions of the budget
        schedule, _ = one_cycle(opt.learning_rate, resolution, pct_start=opt.pct_start)
        return lambda fraction, step: float(schedule(fraction * resolution))

    def cosine(fraction, step):  # as keras's CosineDecay(alpha=0.01) with a linear warm-up, over time
        if step < opt.warmup_steps:
            return opt.learning_rate * step / opt.warmup_steps
        return opt.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * fraction)))

    return cosine


def build_optimizer(config, total_steps, timed=False):
    """Adam (with per-group rates) and the configured learning-rate schedule over `total_steps`, from a
    task config (`config.optimizer`, `config.precision`); with `timed`, a plain rate that
    `callbacks.TimeBudget` moves along `time_schedule(config)` as time passes."""
    opt = config.optimizer
    learning_rate, beta_1_schedule = opt.learning_rate, None
    if timed:
        learning_rate = time_schedule(config)(0.0, 0)
    elif opt.schedule == "cosine":
        warmup = warmup_steps(opt.warmup_steps, total_steps)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=opt.learning_rate if warmup else None,
            warmup_steps=warmup,
            alpha=0.01,
        )
    elif opt.schedule == "one_cycle":
        learning_rate, momentum = one_cycle(opt.learning_rate, max(total_steps, 1), pct_start=opt.pct_start)
        beta_1_schedule = momentum if opt.cycle_momentum else None
    try:
        optimizer = Adam(learning_rate=learning_rate, group_rates=opt.group_rates, beta_1_schedule=beta_1_schedule,
                         clipnorm=opt.clipnorm)
    except ValueError as error:
        raise ConfigError(f"config key 'optimizer.group_rates': {error}") from None
    if getattr(config, "precision", "float32") == "mixed_float16":
        # float16 gradients underflow without it (bfloat16 has float32's exponent range and needs none).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
