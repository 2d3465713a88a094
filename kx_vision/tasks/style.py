"""Fast neural style transfer (Johnson et al. 2016; the lesson's style-transfer-net): config, network,
perceptual style loss, data and report."""

import dataclasses
import os

from kx_vision.config import LESSON_CONTENT_LAYERS, LESSON_STYLE_LAYER_WEIGHTS, LESSON_STYLE_LAYERS, option
from kx_vision.data import SAMPLE_DIR
from kx_vision.errors import ConfigError
from kx_vision.messages import say
from kx_vision.tasks.base import DataBundle, Task, TrainConfig, pipeline_option
from kx_vision.tasks.data_options import cache_limit_option, cache_option


@dataclasses.dataclass
class ModelConfig:
    num_filters: int = option(32, "channels of the first conv (Johnson: 32)", min=1)
    num_blocks: int = option(5, "residual blocks (Johnson: 5)", min=1)
    norm: str = option("batch", "normalisation", choices=("batch", "instance"))
    upsampling: str = option("nearest", "upsampling", choices=("nearest", "pixel_shuffle"))


@dataclasses.dataclass
class DataConfig:
    content: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "content image folder(s), or tensorflow-datasets "
                                "sets (tfds:NAME[/CONFIG][:SPLIT], e.g. tfds:coco/2017:train)")
    val: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation content image folder(s) or tfds sets")
    crop_size: int = option(128, "side of the random content crops (Johnson: 256; at least 8 x num_blocks + 1)", min=1)
    batch_size: int = option(4, "crops per batch", min=1)
    patches_per_image: int = option(1, "random crops taken from each decoded content image", min=1)
    cache: str = cache_option()
    cache_limit_mib: float = cache_limit_option()
    pipeline: str = pipeline_option()


@dataclasses.dataclass
class LossConfig:
    vgg_weights: str | None = option("imagenet", "VGG16 weights: imagenet, null (random: tests only) or a file path")
    content_layers: list[str] = option(list(LESSON_CONTENT_LAYERS), "VGG16 layer(s) of the content term (the lesson: "
                                       "the third of the style layers; Johnson et al.: block2_conv2)")
    style_layers: list[str] = option(list(LESSON_STYLE_LAYERS), "VGG16 layers of the Gram style terms (the lesson: "
                                     "the last conv of blocks 2-5; Johnson et al.: block1_conv2,block2_conv2,"
                                     "block3_conv3,block4_conv3)")
    style_layer_weights: list[float] = option(list(LESSON_STYLE_LAYER_WEIGHTS), "one weight per style layer "
                                              "(the lesson's 0.025,0.275,5,0.2; empty: 1 each)", min=0)
    content_weight: float = option(1.0, "weight of the content term", min=0)
    style_weight: float = option(1.5, "weight of the Gram style terms (times each layer's weight)", min=0)
    tv_weight: float = option(0.0, "weight of the total-variation term", min=0)
    style_size: int = option(256, "the style image is resized so its short side is this", min=16)



@dataclasses.dataclass
class StyleConfig(TrainConfig):
    epochs: int = option(4, "training epochs", min=1)
    style_image: str | None = option(None, "the style image (required), e.g. ../shared/data/style/starry_night.jpg")
    steps_per_epoch: int = option(100, "steps per epoch", min=1)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)


class StyleTask(Task):
    """Fast style transfer: a feed-forward network trained to paint content images in one style."""

    name = "style"
    Config = StyleConfig
    monitor = ("val_loss", "min")

    def check_config(self):
        from kx_vision.losses import VGG16_LAYERS
        from kx_vision.models import StyleTransferNet

        super().check_config()
        config = self.config
        if not config.loss.content_weight and not config.loss.style_weight and not config.loss.tv_weight:
            raise ConfigError("config keys 'loss.content_weight', 'loss.style_weight' and 'loss.tv_weight' are all "
                              "0: the loss would be 0")
        if not config.style_image:
            raise ConfigError("config key 'style_image' is required: the path of the style image (paintings to "
                              "try: ../shared/data/style)")
        if not os.path.isfile(config.style_image):
            raise ConfigError(f"style image not found: {config.style_image}")
        for key in ("content_layers", "style_layers"):
            unknown = [name for name in getattr(config.loss, key) if name not in VGG16_LAYERS]
            if unknown or not getattr(config.loss, key):
                raise ConfigError(f"config key 'loss.{key}' must list VGG16 layers ({', '.join(VGG16_LAYERS)}), "
                                  f"got {getattr(config.loss, key)}")
        weights = config.loss.style_layer_weights
        if weights and len(weights) != len(config.loss.style_layers):
            raise ConfigError(f"config key 'loss.style_layer_weights' needs one weight per style layer "
                              f"({len(config.loss.style_layers)}), got {len(weights)}")
        minimum = StyleTransferNet.min_size(config.model.num_blocks)
        if config.data.crop_size < minimum:
            raise ConfigError(f"config key 'data.crop_size' must be at least {minimum}")

    def build_model(self):
        from kx_vision.models import StyleTransferNet

        model = self.config.model
        return StyleTransferNet(model.num_filters, model.num_blocks, model.norm, model.upsampling)

    def build_loss(self):
        """The style loss (its VGG16 and the style image's Gram matrices, built once per task: see `Task.loss`)."""
        from kx_vision.losses import StyleTransferLoss

        config, loss = self.config, self.config.loss
        return StyleTransferLoss(config.style_image, style_size=loss.style_size, weights=loss.vgg_weights,
                                 content_layers=loss.content_layers, style_layers=loss.style_layers,
                                 style_layer_weights=loss.style_layer_weights or None,
                                 content_weight=loss.content_weight, style_weight=loss.style_weight,
                                 tv_weight=loss.tv_weight)

    def build_metrics(self):
        """Each part of the loss, shown during training (the lesson's `sum_layers=False`)."""
        from kx_vision.metrics import StyleLossPart

        parts = ["content", "style"] + (["tv"] if self.config.loss.tv_weight else [])
        return [StyleLossPart(self.loss, part) for part in parts]

    def build_data(self):
        """Random content crops (dihedral transforms), streamed from the files or cropped from memory
        (`data.cache`; `kx_vision.data.streaming`); images smaller than `crop_size` are upscaled first.
        Validation: two fixed batches of crops of the validation images, held in memory."""
        from kx_vision.data import arrays, resolve_pipeline, streaming
        from kx_vision.data import superres as sr_data

        config, data = self.config, self.config.data
        size, pipeline = data.crop_size, resolve_pipeline(data.pipeline)
        # Folders, or `tfds:` sets (kx_vision.data.tfds_source); images smaller than the crop raised to it.
        options = dict(min_side=size, pipeline=pipeline)
        stream, note = streaming.open_stream(data.content, size, data.batch_size, data.patches_per_image, config.seed,
                                             data.cache, data.cache_limit_mib, what="content image",
                                             key="data.content", **options)
        say(f"training data: {note}")
        val_stream, _ = streaming.open_stream(data.val, size, data.batch_size, seed=config.seed + 1, cache="always",
                                              what="validation content image", key="data.val",
                                              default_split="validation", **options)
        extras = {"train_stream": stream}
        if pipeline == "numpy":
            train = arrays.ContentCrops(stream, steps_per_epoch=config.steps_per_epoch,
                                        workers=arrays.default_workers())
            val = arrays.ContentCrops(val_stream, steps_per_epoch=2, fixed=True)
            return DataBundle(train, val, config.steps_per_epoch, endless=False, extras=extras)
        train = sr_data.content_stream_dataset(stream, steps_per_epoch=config.steps_per_epoch)
        val = sr_data.content_stream_dataset(val_stream).take(2)
        return DataBundle(train, val, config.steps_per_epoch, endless=True, extras=extras)

    def report(self, model, data):
        import numpy as np

        totals = {"content": [], "style": [], "tv": []}
        for x, _ in data.val:
            parts = self.loss.parts(x, model.predict_on_batch(np.asarray(x)))
            for key, value in parts.items():
                totals[key].append(float(np.mean(np.asarray(value))))
        summary = {k: float(np.mean(v)) for k, v in totals.items()}
        return (f"validation loss parts: content {summary['content']:.4g}, style {summary['style']:.4g}, "
                f"tv {summary['tv']:.4g}"), summary

    def render_examples(self, model, examples):
        """content | stylised, for each validation content crop."""
        from kx_vision.inference import pictures
        from kx_vision.inference.tiling import as_predict_fn

        predict = as_predict_fn(model)
        rows = [[content, predict(content)] for content, _ in examples]
        return pictures.grid(rows, [["content", "stylised"]] * len(rows))


Config = StyleConfig
Task = StyleTask
