"""Semantic segmentation (the lesson's U-Net over a pretrained backbone, and its naive upsampling head):
config, model, losses, metrics, data and report."""

import dataclasses
import os

from kx_vision.config import option
from kx_vision.data import SAMPLE_DIR as _SAMPLES
from kx_vision.errors import ConfigError
from kx_vision.tasks.base import DataBundle, Task, TrainConfig, pipeline_option

SAMPLE_DIR = os.path.join(_SAMPLES, "camvid")
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]


@dataclasses.dataclass
class ModelConfig:
    architecture: str = option("unet", "unet, fpn (feature pyramid: the lesson's 'future work'), or the lesson's "
                               "naive upsample_head", choices=("unet", "fpn", "upsample_head"))
    decoder: str = option("fastai", "U-Net decoder: fastai (later fastai's DynamicUnet) or lesson (the lesson's "
                          "UnetBlock: transposed conv up, 1x1 conv on the skip; max_filters even)",
                          choices=("fastai", "lesson"))
    backbone: str = option("resnet50", "backbone: resnet50 (the lesson), vgg16, mobilenetv2, mobilenetv3small, efficientnetb0, ... (keras.applications) or simple (small CNN, no pretrained weights)")
    backbone_weights: str | None = option(
        None, "backbone weights: imagenet (downloaded once), null (from scratch) or a file path")
    upsampling: str | None = option(None, "U-Net decoder upsampling (null: the decoder's own: pixel_shuffle for "
                                    "fastai, transpose for lesson)", choices=("pixel_shuffle", "transpose"))
    blur: bool = option(False, "U-Net: blur after each pixel-shuffle upsampling (fastai's PixelShuffle_ICNR(blur=True))")
    max_filters: int = option(64, "cap on decoder channels", min=1)


@dataclasses.dataclass
class DataConfig:
    train_images: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "training image folder(s)")
    train_masks: list[str] = option([os.path.join(SAMPLE_DIR, "trainannot")],
                                    "training mask folder(s), one per image folder (may be the image folder itself); "
                                    "a mask is named like its image, or with _mask (Carvana) or _L added")
    val_images: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation image folder(s) (empty: split from training by group)")
    val_masks: list[str] = option([os.path.join(SAMPLE_DIR, "valannot")], "validation mask folder(s)")
    val_split: float = option(0.2, "with no validation folders: fraction of the training pairs held out, whole groups "
                              "(the file-name prefix before the first '_': a CamVid sequence, a Carvana car)",
                              above=0, below=1)
    image_size: list[int] = option([96, 128], "height, width the images are resized to (progressive resizing: raise it)",
                                   min=32)
    batch_size: int = option(4, "images per batch", min=1)
    mask_divisor: int = option(1, "mask values are divided by this (255 for 0/255 masks; binary tasks, num_classes=1, "
                               "read 0/255 masks by themselves)", min=1, max=255)
    augment: bool = option(True, "random crop, flip, rotation and photometric jitter")
    rotate_degrees: float = option(10.0, "augmentation: random rotation within +-this many degrees, the same angle for "
                                   "the image (bilinear) and the mask (nearest); 0: none (fastai's default 10, the "
                                   "lesson's Carvana 4)", min=0, max=180)
    pipeline: str = pipeline_option()
    cache: str = option("auto", "keep the decoded images and masks in memory after their first epoch (always: fastest "
                        "for small sets), decode them from the files every epoch in worker threads (never: memory "
                        "does not grow with the number of images), or auto: in memory when the training and "
                        "validation pairs take at most data.cache_limit_mib decoded (read from the file headers)",
                        choices=("auto", "always", "never"))
    cache_limit_mib: float = option(512.0, "data.cache=auto caches the pairs when their decoded size (width x height x "
                                    "4 bytes a pair: RGB and mask) is at most this many MiB (CamVid's 468 pairs: "
                                    "309)", min=0)


@dataclasses.dataclass
class LossConfig:
    ce_weight: float = option(1.0, "weight of the cross-entropy (void ignored)", min=0)
    dice_weight: float = option(1.0, "weight of the soft dice loss (void ignored)", min=0)



@dataclasses.dataclass
class SegmentationConfig(TrainConfig):
    epochs: int = option(30, "training epochs (one pass over the training images each)", min=1)
    seed: int = option(0, "seed of initialisation, shuffling and augmentation", min=0, max=2**32 - 1)
    init_from: str | None = option(None, "a .keras model whose weights seed this one, by layer name (progressive resizing)")
    num_classes: int = option(11, "classes (1: binary, sigmoid output); masks hold 8-bit class ids", min=1, max=256)
    ignore_class: int | None = option(11, "mask value excluded from loss and metrics (CamVid void: 11), or null",
                                      min=0, max=255)
    class_names: list[str] = option(CAMVID_CLASSES, "names of the classes, for reports")
    freeze_backbone_epochs: int = option(0, "first epochs train with the layers of freeze_layers frozen (BN statistics too)",
                                         min=0)
    freeze_layers: list[str] = option(["backbone"], "prefixes of the (top-level) layer names frozen in those epochs")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)


class SegmentationTask(Task):
    """Segmentation: a U-Net (or the naive upsampling head) over a backbone, scored by mean IoU."""

    name = "segmentation"
    Config = SegmentationConfig
    monitor = ("val_loss", "min")

    def check_config(self):
        super().check_config()  # types and ranges (each image_size item >= 32)
        config = self.config
        if len(config.data.image_size) != 2:
            raise ConfigError(f"config key 'data.image_size' must be [height, width], each >= 32; got "
                              f"{config.data.image_size}")
        if not config.loss.ce_weight and not config.loss.dice_weight:
            raise ConfigError("config keys 'loss.ce_weight' and 'loss.dice_weight' are both 0: the loss would be 0")
        if config.ignore_class is not None and 0 <= config.ignore_class < max(config.num_classes, 2):
            raise ConfigError(f"config key 'ignore_class' ({config.ignore_class}) must not be one of the classes "
                              f"0..{max(config.num_classes, 2) - 1}")
        if config.model.architecture == "unet" and config.model.decoder == "lesson" and config.model.max_filters % 2:
            raise ConfigError(f"config key 'model.max_filters' ({config.model.max_filters}) must be even with "
                              "model.decoder=lesson (each block halves it between the two paths)")
        if config.num_classes == 1 and config.ignore_class is not None:
            raise ConfigError("binary segmentation (num_classes=1) takes no ignore_class here: set ignore_class=null")

    def build_model(self):
        from kx_vision.models import FPN, UNet, UpsampleHeadNet

        config = self.config
        common = dict(num_classes=config.num_classes, backbone=config.model.backbone,
                      backbone_weights=config.model.backbone_weights)
        if config.model.architecture == "upsample_head":
            return UpsampleHeadNet(**common)
        if config.model.architecture == "fpn":
            return FPN(**common)
        return UNet(decoder=config.model.decoder, upsampling=config.model.upsampling, blur=config.model.blur,
                    max_filters=config.model.max_filters, **common)

    def build_loss(self):
        from kx_vision import losses

        config = self.config
        return losses.SegmentationLoss(config.num_classes, config.ignore_class,
                                       ce_weight=config.loss.ce_weight, dice_weight=config.loss.dice_weight)

    def build_metrics(self):
        from kx_vision import metrics

        return metrics.segmentation_metrics(self.config.num_classes, self.config.ignore_class)

    def freeze_plan(self, model, transferred):
        """Layers whose names start with a prefix of `freeze_layers` (default: the backbone) are frozen
        for the first `freeze_backbone_epochs` (the lesson: train the head, then unfreeze)."""
        config = self.config
        if not config.freeze_backbone_epochs:
            return [], 0
        names = [layer.name for layer in model.layers
                 if layer.weights and layer.name.startswith(tuple(config.freeze_layers))]
        if not names:
            raise ConfigError(f"config key 'freeze_layers': no layer of the model starts with {config.freeze_layers}")
        return names, config.freeze_backbone_epochs

    def load_split(self):
        """`(train_pairs, val_pairs)` of `(image_path, mask_path)`."""
        from kx_vision.data.masks import find_pairs, group_split

        config = self.config
        train = find_pairs(config.data.train_images, config.data.train_masks)
        if config.data.val_images:
            return train, find_pairs(config.data.val_images, config.data.val_masks)
        return group_split(train, config.data.val_split, seed=config.seed)

    def build_data(self):
        """Pairs listed (`load_split`), their headers checked, then streamed by `kx_vision.data.segmentation`
        (tf.data) or, without TensorFlow, `kx_vision.data.segmentation_arrays` (`keras.utils.PyDataset`); cached
        in memory when `data.cache` says so. `extras`: the two `PairReader`s and whether they cache."""
        from kx_vision.data import default_workers, resolve_pipeline
        from kx_vision.data.masks import PairReader

        config, data = self.config, self.config.data
        pipeline = resolve_pipeline(data.pipeline)
        train_pairs, val_pairs = self.load_split()
        args = (config.num_classes, config.ignore_class, data.mask_divisor)
        train_reader = PairReader(train_pairs, *args, what="training")
        val_reader = PairReader(val_pairs, *args, what="validation")
        cache = data.cache == "always" or (data.cache == "auto" and train_reader.decoded_bytes
                                            + val_reader.decoded_bytes <= data.cache_limit_mib * 2**20)
        train_reader.cache = val_reader.cache = bool(cache)
        train_reader.probe()  # a systematic mistake (every mask out of range) stops here, not mid-epoch
        val_reader.probe()
        size, batch = tuple(data.image_size), data.batch_size
        rotate = data.rotate_degrees if data.augment else 0.0
        extras = {"train_reader": train_reader, "val_reader": val_reader, "cache": bool(cache)}
        if pipeline == "numpy":
            from kx_vision.data.segmentation_arrays import SegmentationBatches

            workers = max(2, default_workers())  # one worker would decode in the training thread
            train = SegmentationBatches(train_reader, size, batch, seed=config.seed, augment=data.augment,
                                        rotate_degrees=rotate, workers=workers)
            val = SegmentationBatches(val_reader, size, batch, training=False, workers=workers)
            return DataBundle(train, val, len(train), endless=False, extras=extras)
        from kx_vision.data import segmentation as seg_data

        train = seg_data.train_dataset(train_reader, size, batch, seed=config.seed, augment=data.augment,
                                       rotate_degrees=rotate)
        val = seg_data.validation_dataset(val_reader, size, batch)
        return DataBundle(train, val, max(len(train_pairs) // batch, 1), endless=False, extras=extras)

    def report(self, model, data):
        from kx_vision.inference import as_predict_fn
        from kx_vision.metrics import confusion_matrix, scores_from_confusion

        config = self.config
        cm = confusion_matrix(as_predict_fn(model), data.val, config.num_classes, config.ignore_class)
        names = config.class_names if config.num_classes > 1 else ["background", "foreground"]
        summary = scores_from_confusion(cm, names)
        per_class = ", ".join(f"{k} {v:.2f}" for k, v in summary["per_class_iou"].items() if v is not None)
        message = (f"validation at {config.data.image_size[0]}x{config.data.image_size[1]}: "
                   f"mIoU {summary['miou']:.3f}, pixel accuracy {summary['pixel_accuracy']:.3f}\n"
                   f"per-class IoU: {per_class}")
        return message, summary

    def render_examples(self, model, examples):
        """For each validation `(image, mask)`: the image, its truth and the prediction in class colours
        over it (CamVid's palette; void shows the image), the prediction's pixel accuracy in its caption;
        a legend of the class colours beside the first row."""
        from kx_vision import visualize
        from kx_vision.inference import as_predict_fn

        config = self.config
        predict = as_predict_fn(model)
        rows, captions = [], []
        for image, mask in examples:
            labels = visualize.class_ids(predict(image))[0]
            panels, texts = visualize.segmentation_row(image[0], mask[0], labels, config.ignore_class)
            rows.append(panels)
            captions.append(texts)
        names = config.class_names if config.num_classes > 1 else ["background", "foreground"]
        if rows and len(names) == max(config.num_classes, 2):
            rows[0].append(visualize.legend(names, max_height=rows[0][0].shape[0]))
            captions[0].append(None)
        return visualize.grid(rows, captions)


Config = SegmentationConfig
Task = SegmentationTask
