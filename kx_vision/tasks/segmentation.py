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
    train_images: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "training image folder(s), or "
                                     "tensorflow-datasets sets with masks (tfds:NAME[/CONFIG][:SPLIT], e.g. "
                                     "tfds:oxford_iiit_pet:train; tf.data only)")
    train_masks: list[str] = option([os.path.join(SAMPLE_DIR, "trainannot")],
                                    "training mask folder(s), one per image folder (may be the image folder itself); "
                                    "a mask is named like its image, or with _mask (Carvana) or _L added (not read "
                                    "for tfds sets: their masks come with them)")
    val_images: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation image folder(s) or tfds sets (split: "
                                   "validation unless named; empty: split from training folders by group)")
    val_masks: list[str] = option([os.path.join(SAMPLE_DIR, "valannot")], "validation mask folder(s)")
    label_map: list[str] = option([], "mask values mapped to classes before they are checked, as VALUE:CLASS items "
                                  "(others kept), e.g. Oxford-IIIT Pet's trimaps (1 pet, 2 background, 3 border) with "
                                  "num_classes=3: 1:1,2:0,3:2; in YAML quote each item (\"1:1\")")
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
        self._check_tfds(config.data)

    def _check_tfds(self, data):
        from kx_vision.data.masks import parse_label_map
        from kx_vision.data.tfds_source import any_tfds, is_tfds

        parse_label_map(data.label_map)
        for key in ("train_images", "val_images"):
            entries = getattr(data, key)
            if any_tfds(entries) and not all(is_tfds(entry) for entry in entries):
                raise ConfigError(f"config key 'data.{key}' mixes image folders and tensorflow-datasets sets; "
                                  "name one kind (e.g. save the set's images and masks as files)")
        if any_tfds(data.train_images) and not data.val_images:
            raise ConfigError("config key 'data.val_images' is empty, so validation pairs would be split from the "
                              "training files by group, which a tensorflow-datasets set has not: name a split "
                              "(e.g. data.val_images=tfds:oxford_iiit_pet:test)")

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
        """Pairs listed (`load_split`), their headers checked, or tensorflow-datasets sets with masks; streamed by
        `kx_vision.data.segmentation` (tf.data) or, without TensorFlow, `kx_vision.data.segmentation_arrays`
        (`keras.utils.PyDataset`; folders only); held in memory when `data.cache` says so. `extras`: the two
        readers (the streaming core over the pairs) and whether they cache."""
        from kx_vision.data import default_workers, resolve_pipeline
        from kx_vision.errors import DataError

        config, data = self.config, self.config.data
        pipeline = resolve_pipeline(data.pipeline)
        train_reader, val_reader, cache = self._readers(pipeline)
        train_reader.probe()  # a systematic mistake (every mask out of range) stops here, not mid-epoch
        val_reader.probe()
        size, batch = tuple(data.image_size), data.batch_size
        rotate = data.rotate_degrees if data.augment else 0.0
        extras = {"train_reader": train_reader, "val_reader": val_reader, "cache": cache}
        if pipeline == "numpy":
            from kx_vision.data.segmentation_arrays import SegmentationBatches

            train = SegmentationBatches(train_reader, size, batch, seed=config.seed, augment=data.augment,
                                        rotate_degrees=rotate, workers=default_workers())
            val = SegmentationBatches(val_reader, size, batch, training=False, workers=default_workers())
            return DataBundle(train, val, len(train), endless=False, extras=extras)
        from kx_vision.data import segmentation as seg_data

        train = seg_data.train_dataset(train_reader, size, batch, seed=config.seed, augment=data.augment,
                                       rotate_degrees=rotate)
        count = train_reader.source.count
        if count is None:
            raise DataError(f"{train_reader.source} does not say how many examples it holds, which an epoch needs")
        steps = max(count // batch, 1)
        return DataBundle(train, seg_data.validation_dataset(val_reader, size, batch), steps, endless=False,
                          extras=extras)

    def _readers(self, pipeline):
        """`(train_reader, val_reader, cache)`: the streaming core over each side's pairs. Folders: `PairReader`s,
        keeping what they decode when `data.cache` says so from the headers' sizes (both sides together, as
        before tfds sets); tfds sets: `masks.open_tfds_pairs`, held in memory when `data.cache` says so (`auto`:
        decoded in order, within what the folders left of `data.cache_limit_mib`). `cache`: every side is."""
        from kx_vision.data import masks, sources, tfds_source

        config, data = self.config, self.config.data
        label_map = masks.parse_label_map(data.label_map)
        readers = {side: masks.PairReader(pairs, config.num_classes, config.ignore_class, data.mask_divisor,
                                          what=side, label_map=label_map)
                   for side, pairs in self._folder_pairs().items()}
        sizes = [size for reader in readers.values() for size in reader.source.sizes]
        for reader in readers.values():
            reader.cache = sources.use_cache(data.cache, sizes, data.cache_limit_mib, channels=4)
        limit = data.cache_limit_mib - sources.decoded_mib(sizes, channels=4)
        mask_reader = masks.mask_reader(config.num_classes, config.ignore_class, data.mask_divisor, label_map)
        for side, key, split in (("training", "train_images", "train"), ("validation", "val_images", "validation")):
            images = getattr(data, key)
            if tfds_source.any_tfds(images):
                tfds_source.check_pipeline(images, pipeline, key=f"data.{key}")
                readers[side], mib = masks.open_tfds_pairs(images, mask_reader, data.cache, limit, side, config.seed,
                                                           split)
                limit -= mib
        cache = all(reader.source.in_memory or reader.cache for reader in readers.values())
        return readers["training"], readers["validation"], cache

    def _folder_pairs(self):
        """`{side: [(image_path, mask_path)]}` of the sides ("training", "validation") that name folders:
        `load_split` where neither names a tensorflow-datasets set (`check_config` refuses a mix within one)."""
        from kx_vision.data.masks import find_pairs
        from kx_vision.data.tfds_source import any_tfds

        data = self.config.data
        if not any_tfds(data.train_images + data.val_images):
            return dict(zip(("training", "validation"), self.load_split()))
        sides = (("training", data.train_images, data.train_masks), ("validation", data.val_images, data.val_masks))
        return {side: find_pairs(images, folders) for side, images, folders in sides if not any_tfds(images)}

    def report(self, model, data):
        from kx_vision.inference.tiling import as_predict_fn
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
        from kx_vision.inference import pictures
        from kx_vision.inference.tiling import as_predict_fn

        config = self.config
        predict = as_predict_fn(model)
        rows, captions = [], []
        for image, mask in examples:
            labels = pictures.class_ids(predict(image))[0]
            panels, texts = pictures.segmentation_row(image[0], mask[0], labels, config.ignore_class)
            rows.append(panels)
            captions.append(texts)
        names = config.class_names if config.num_classes > 1 else ["background", "foreground"]
        if rows and len(names) == max(config.num_classes, 2):
            rows[0].append(pictures.legend(names, max_height=rows[0][0].shape[0]))
            captions[0].append(None)
        return pictures.grid(rows, captions)


Config = SegmentationConfig
Task = SegmentationTask
