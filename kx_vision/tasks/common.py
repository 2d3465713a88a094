"""Config sections shared by the tasks."""

import dataclasses

from kx_vision.config import option


@dataclasses.dataclass
class OptimizerConfig:
    learning_rate: float = option(1e-3, "peak learning rate of Adam")
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "constant"))
    warmup_steps: int = option(100, "linear warm-up steps before the cosine decay")
    clipnorm: float | None = option(None, "clip each gradient to this norm (null: no clipping)")
