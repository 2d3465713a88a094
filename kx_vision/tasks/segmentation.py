"""Semantic segmentation task (U-Net over a pretrained backbone): config, model, losses, data."""

import dataclasses
import os

import numpy as np

from kx_vision import config as config_lib
from kx_vision import losses, metrics
from kx_vision.config import option
from kx_vision.errors import ConfigError
from kx_vision.tasks.common import (
    OptimizerConfig,
    distribute_option,
    precision_option,
    seed_option,
    time_budget_option,
)

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "sample", "camvid")
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]


@dataclasses.dataclass
class ModelConfig:
    architecture: str = option("unet", "U-Net, or the lesson's naive upsampling head",
                               choices=("unet", "upsample_head"))
    backbone: str = option("resnet50", "backbone: resnet50 (the lesson), vgg16, mobilenetv2, mobilenetv3small, efficientnetb0, ... (keras.applications) or simple (small CNN, no pretrained weights)")
    backbone_weights: str | None = option(
        None, "backbone weights: imagenet (downloaded once), null (from scratch) or a file path")
    upsampling: str = option("pixel_shuffle", "decoder upsampling", choices=("pixel_shuffle", "transpose"))
    max_filters: int = option(64, "cap on decoder channels", min=1)


@dataclasses.dataclass
class DataConfig:
    train_images: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "training image folder(s)")
    train_masks: list[str] = option([os.path.join(SAMPLE_DIR, "trainannot")], "training mask folder(s), one per image folder")
    val_images: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation image folder(s) (empty: split from training by group)")
    val_masks: list[str] = option([os.path.join(SAMPLE_DIR, "valannot")], "validation mask folder(s)")
    val_split: float = option(0.2, "with no validation folders: fraction of training groups (sequences) held out",
                              above=0, below=1)
    image_size: list[int] = option([96, 128], "height, width the images are resized to (progressive resizing: raise it)",
                                   min=32)
    batch_size: int = option(4, "images per batch", min=1)
    mask_divisor: int = option(1, "mask values are divided by this (255 for 0/255 binary masks)",
                               min=1, max=255)
    augment: bool = option(True, "random crop, flip and photometric jitter")


@dataclasses.dataclass
class LossConfig:
    ce_weight: float = option(1.0, "weight of the cross-entropy (void ignored)", min=0)
    dice_weight: float = option(1.0, "weight of the soft dice loss (void ignored)", min=0)


@dataclasses.dataclass
class SegmentationConfig:
    num_classes: int = option(11, "classes (1: binary, sigmoid output); masks hold 8-bit class ids", min=1, max=256)
    ignore_class: int | None = option(11, "mask value excluded from loss and metrics (CamVid void: 11), or null",
                                      min=0, max=255)
    class_names: list[str] = option(CAMVID_CLASSES, "names of the classes, for reports")
    epochs: int = option(30, "training epochs (one pass over the training images each)", min=1)
    time_budget: float | None = time_budget_option()
    freeze_backbone_epochs: int = option(0, "first epochs train with the layers of freeze_layers frozen (BN statistics too)",
                                         min=0)
    freeze_layers: list[str] = option(["backbone"], "prefixes of the (top-level) layer names frozen in those epochs")
    seed: int = seed_option("seed of initialisation, shuffling and augmentation")
    jit_compile: bool | None = option(None, "XLA-compile the train step (null: Keras's 'auto'; JAX always compiles)")
    distribute: str = distribute_option()
    precision: str = precision_option()
    init_from: str | None = option(None, "a .keras model whose weights seed this one, by layer name (progressive resizing)")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


Config = SegmentationConfig
MONITOR = ("val_miou", "max")


def check_config(config):
    config_lib.validate(config)  # types and ranges (each image_size item >= 32)
    if len(config.data.image_size) != 2:
        raise ConfigError(f"config key 'data.image_size' must be [height, width], each >= 32; got {config.data.image_size}")
    if not config.loss.ce_weight and not config.loss.dice_weight:
        raise ConfigError("config keys 'loss.ce_weight' and 'loss.dice_weight' are both 0: the loss would be 0")
    if config.ignore_class is not None and 0 <= config.ignore_class < max(config.num_classes, 2):
        raise ConfigError(f"config key 'ignore_class' ({config.ignore_class}) must not be one of the classes "
                          f"0..{max(config.num_classes, 2) - 1}")
    if config.num_classes == 1 and config.ignore_class is not None:
        raise ConfigError("binary segmentation (num_classes=1) takes no ignore_class here: set ignore_class=null")


def build_model(config):
    from kx_vision.models import UNet, UpsampleHeadNet

    common = dict(num_classes=config.num_classes, backbone=config.model.backbone,
                  backbone_weights=config.model.backbone_weights)
    if config.model.architecture == "upsample_head":
        return UpsampleHeadNet(**common)
    return UNet(upsampling=config.model.upsampling, max_filters=config.model.max_filters, **common)


def build_loss(config):
    return losses.SegmentationLoss(config.num_classes, config.ignore_class,
                                   ce_weight=config.loss.ce_weight, dice_weight=config.loss.dice_weight)


def build_metrics(config):
    return metrics.segmentation_metrics(config.num_classes, config.ignore_class)


def freeze_plan(model, config, transferred):
    """Layers whose names start with a prefix of `freeze_layers` (default: the backbone) are frozen
    for the first `freeze_backbone_epochs` (the lesson: train the head, then unfreeze)."""
    if not config.freeze_backbone_epochs:
        return [], 0
    names = [layer.name for layer in model.layers if layer.weights and layer.name.startswith(tuple(config.freeze_layers))]
    if not names:
        raise ConfigError(f"config key 'freeze_layers': no layer of the model starts with {config.freeze_layers}")
    return names, config.freeze_backbone_epochs


def load_split(config):
    """`(train_pairs, val_pairs)` of `(image_path, mask_path)`."""
    from kx_vision.data.masks import find_pairs, group_split

    train = find_pairs(config.data.train_images, config.data.train_masks)
    if config.data.val_images:
        return train, find_pairs(config.data.val_images, config.data.val_masks)
    return group_split(train, config.data.val_split, seed=config.seed)


def build_data(config):
    from kx_vision.data import segmentation as seg_data
    from kx_vision.data.masks import load_pairs

    train_pairs, val_pairs = load_split(config)
    args = (config.num_classes, config.ignore_class, config.data.mask_divisor)
    train_images, train_masks = load_pairs(train_pairs, *args)
    val_images, val_masks = load_pairs(val_pairs, *args)
    size = tuple(config.data.image_size)
    batch = config.data.batch_size
    train = seg_data.train_dataset(train_images, train_masks, size, batch, seed=config.seed,
                                   augment=config.data.augment)
    val = seg_data.validation_dataset(val_images, val_masks, size, batch)
    steps = max(len(train_images) // batch, 1)
    return {"train": train, "val": val, "steps_per_epoch": steps, "endless": False}


def confusion_matrix(predict, batches, num_classes, ignore_class=None):
    """Confusion matrix (rows: truth, columns: prediction) over `(images, masks)` batches, with
    Keras's `MeanIoU`, which skips `ignore_class` pixels."""
    import keras

    classes = max(num_classes, 2)
    metric = keras.metrics.MeanIoU(classes, ignore_class=ignore_class, sparse_y_pred=True)
    for images, masks in batches:
        probs = np.asarray(predict(images))
        labels = (probs[..., 0] >= 0.5).astype(np.int32) if num_classes == 1 else probs.argmax(-1)
        metric.update_state(np.asarray(masks).reshape(labels.shape), labels)
    return np.asarray(keras.ops.convert_to_numpy(metric.total_cm), dtype=np.int64)


def scores_from_confusion(cm, class_names=None):
    """`{"miou", "pixel_accuracy", "per_class_iou"}` from a confusion matrix. Classes absent from
    both truth and prediction get IoU NaN and are left out of the mean (as `MeanIoU` does)."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    names = class_names if class_names and len(class_names) == len(iou) else [str(i) for i in range(len(iou))]
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
    }


def report(model, data, config):
    from kx_vision.inference import as_predict_fn

    cm = confusion_matrix(as_predict_fn(model), data["val"], config.num_classes, config.ignore_class)
    names = config.class_names if config.num_classes > 1 else ["background", "foreground"]
    summary = scores_from_confusion(cm, names)
    per_class = ", ".join(f"{k} {v:.2f}" for k, v in summary["per_class_iou"].items() if v is not None)
    message = (f"validation at {config.data.image_size[0]}x{config.data.image_size[1]}: "
               f"mIoU {summary['miou']:.3f}, pixel accuracy {summary['pixel_accuracy']:.3f}\n"
               f"per-class IoU: {per_class}")
    return message, summary
