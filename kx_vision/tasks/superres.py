"""Super-resolution task: default config, model, losses, metrics and data, assembled for `train`."""

import dataclasses
import os

import keras
import numpy as np

from kx_vision import losses, metrics
from kx_vision.config import option
from kx_vision.data import transforms
from kx_vision.models import EDSR
from kx_vision.tasks.common import (
    OptimizerConfig,
    distribute_option,
    pipeline_option,
    precision_option,
    seed_option,
    time_budget_option,
)

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "sample")


@dataclasses.dataclass
class ModelConfig:
    num_blocks: int = option(4, "residual blocks (EDSR baseline: 16)", min=1)
    num_filters: int = option(32, "feature channels (EDSR baseline: 64)", min=1)
    residual_scale: float = option(0.1, "multiplier of each residual branch (EDSR: 0.1)", above=0)


@dataclasses.dataclass
class DataConfig:
    train: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "training image folder(s)")
    val: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation image folder(s)")
    patch_size: int = option(48, "side of the HR training patches, a multiple of the scale", min=1)
    batch_size: int = option(16, "patches per batch", min=1)
    augment: bool = option(True, "random dihedral transform (8 symmetries) of each patch")
    skip_small: bool = option(False, "skip (with a warning) training images smaller than the patch, instead of stopping")
    pipeline: str = pipeline_option()


@dataclasses.dataclass
class LossConfig:
    name: str = option("l1", "training loss: l1 (EDSR), mse (the PSNR objective; blurrier), perceptual (the lesson's "
                       "VGG16 feature loss)", choices=("l1", "mse", "perceptual"))
    vgg_weights: str | None = option(
        "imagenet", "VGG16 weights of the perceptual loss: imagenet, null or a file path"
    )
    pixel_weight: float = option(0.01, "weight of the pixel L1 term of the perceptual loss", min=0)


@dataclasses.dataclass
class SuperResConfig:
    scale: int = option(2, "upscaling factor", choices=(2, 3, 4, 8))
    epochs: int = option(8, "training epochs", min=1)
    time_budget: float | None = time_budget_option()
    steps_per_epoch: int = option(200, "training steps per epoch", min=1)
    seed: int = seed_option("seed of weight initialisation and patch sampling")
    jit_compile: bool | None = option(None, "XLA-compile the train step (null: Keras's 'auto'; JAX always compiles)")
    distribute: str = distribute_option()
    precision: str = precision_option()
    init_from: str | None = option(
        None, "a .keras model whose weights seed this one, by layer name (e.g. x2 -> x4)"
    )
    freeze_transferred_epochs: int = option(
        0, "with init_from: epochs training only the layers that were not transferred", min=0
    )
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


Config = SuperResConfig


def build_model(config):
    return EDSR(
        scale=config.scale,
        num_blocks=config.model.num_blocks,
        num_filters=config.model.num_filters,
        residual_scale=config.model.residual_scale,
    )


def build_loss(config):
    if config.loss.name == "perceptual":
        return losses.PerceptualLoss(weights=config.loss.vgg_weights, pixel_weight=config.loss.pixel_weight)
    if config.loss.name == "mse":
        return keras.losses.MeanSquaredError(name="mse")
    return keras.losses.MeanAbsoluteError(name="l1")


def build_metrics(config):
    """Y-PSNR, and Y-SSIM where patches are large enough for its 11x11 window after shaving."""
    found = [metrics.PSNR(shave=config.scale)]
    if config.data.patch_size - 2 * config.scale >= metrics.SSIM_WINDOW:
        found.append(metrics.SSIM(shave=config.scale))
    return found


MONITOR = ("val_psnr", "max")


def freeze_plan(model, config, transferred):
    """Layers frozen in a first phase: those seeded by `init_from`, for `freeze_transferred_epochs`."""
    return (list(transferred), config.freeze_transferred_epochs) if transferred else ([], 0)


def build_data(config):
    """`{"train", "val", "val_pairs", "steps_per_epoch", "endless"}` (see `kx_vision.data.superres`
    and, without TensorFlow, `kx_vision.data.arrays`)."""
    from kx_vision.data import arrays
    from kx_vision.data import superres as sr_data  # imports TensorFlow only where it is installed

    pipeline = arrays.resolve_pipeline(config.data.pipeline)
    train_images = sr_data.load_folders(config.data.train, min_size=config.data.patch_size,
                                        what="training image", skip_small=config.data.skip_small)
    val_images = sr_data.load_folders(config.data.val, what="validation image")
    pairs = sr_data.validation_pairs(val_images, config.scale)
    if pipeline == "numpy":
        train = arrays.SuperResPatches(train_images, config.scale, config.data.patch_size, config.data.batch_size,
                                       config.steps_per_epoch, seed=config.seed, augment=config.data.augment,
                                       workers=arrays.default_workers())
        return {"train": train, "val": arrays.Pairs(pairs), "val_pairs": pairs,
                "steps_per_epoch": config.steps_per_epoch, "endless": False}
    train = sr_data.train_dataset(
        train_images,
        config.scale,
        config.data.patch_size,
        config.data.batch_size,
        seed=config.seed,
        augment=config.data.augment,
    )
    return {
        "train": train,
        "val": sr_data.pairs_dataset(pairs),
        "val_pairs": pairs,
        "steps_per_epoch": config.steps_per_epoch,
        "endless": True,
    }


def check_config(config):
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError

    config_lib.validate(config)
    if config.data.patch_size % config.scale:
        raise ConfigError(
            f"config key 'data.patch_size' ({config.data.patch_size}) must be a multiple of "
            f"'scale' ({config.scale})"
        )


def score(model, pairs, scale):
    """Mean Y-PSNR (dB, shave = scale, predictions rounded to 8 bits) of `model` and of bicubic
    upscaling on the same `(lr, hr)` pairs: `(model_psnr, bicubic_psnr)`."""
    model_scores, bicubic_scores = [], []
    for lr, hr in pairs:
        sr = model.predict_on_batch(lr)
        model_scores.append(float(metrics.psnr(hr, sr, shave=scale, quantize=True)[0]))
        bicubic = transforms.bicubic_upscale(lr, scale)
        bicubic_scores.append(float(metrics.psnr(hr, bicubic, shave=scale, quantize=True)[0]))
    return float(np.mean(model_scores)), float(np.mean(bicubic_scores))


def report(model, data, config):
    pairs = data["val_pairs"]
    model_psnr, bicubic_psnr = score(model, pairs, config.scale)
    return (
        f"validation Y-PSNR (x{config.scale}, {len(pairs)} images): model {model_psnr:.2f} dB, "
        f"bicubic {bicubic_psnr:.2f} dB ({model_psnr - bicubic_psnr:+.2f} dB)"
    ), {"psnr": model_psnr, "bicubic_psnr": bicubic_psnr}
