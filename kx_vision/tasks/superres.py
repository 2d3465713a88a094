"""Super-resolution (EDSR, the lesson's first model): config, model, losses, metrics, data and report."""

import dataclasses
import os

from kx_vision.config import option
from kx_vision.data import SAMPLE_DIR
from kx_vision.errors import ConfigError
from kx_vision.messages import say
from kx_vision.tasks.base import DataBundle, Task, TrainConfig, pipeline_option
from kx_vision.tasks.data_options import cache_limit_option, cache_option


@dataclasses.dataclass
class ModelConfig:
    num_blocks: int = option(4, "residual blocks (EDSR baseline: 16)", min=1)
    num_filters: int = option(32, "feature channels (EDSR baseline: 64)", min=1)
    residual_scale: float = option(0.1, "multiplier of each residual branch (EDSR: 0.1)", above=0)
    blur: bool = option(False, "blur after each pixel shuffle (fastai's PixelShuffle_ICNR(blur=True); EDSR has none)")


@dataclasses.dataclass
class DataConfig:
    train: list[str] = option([os.path.join(SAMPLE_DIR, "train")], "training image folder(s), or tensorflow-datasets "
                              "sets (tfds:NAME[/CONFIG][:SPLIT], e.g. tfds:div2k/bicubic_x2:train)")
    val: list[str] = option([os.path.join(SAMPLE_DIR, "val")], "validation image folder(s) or tfds sets (split: "
                            "validation unless named)")
    patch_size: int = option(48, "side of the HR training patches, a multiple of the scale", min=1)
    batch_size: int = option(16, "patches per batch", min=1)
    augment: bool = option(True, "random dihedral transform (8 symmetries) of each patch")
    skip_small: bool = option(False, "skip (with a warning) training images smaller than the patch, instead of stopping")
    patches_per_image: int = option(1, "random patches taken from each decoded training image (BasicSR's "
                                    "sub-images: 8 makes large images 8x cheaper to decode per patch)", min=1)
    cache: str = cache_option()
    cache_limit_mib: float = cache_limit_option()
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
class SuperResConfig(TrainConfig):
    epochs: int = option(8, "training epochs", min=1)
    init_from: str | None = option(
        None, "a .keras model, preset directory or preset name whose weights seed this one, by layer name (e.g. x2 "
        "-> x4)"
    )
    scale: int = option(2, "upscaling factor", choices=(2, 3, 4, 8))
    steps_per_epoch: int = option(200, "training steps per epoch", min=1)
    freeze_transferred_epochs: int = option(
        0, "with init_from: epochs training only the layers that were not transferred", min=0
    )
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)


class SuperResTask(Task):
    """Super-resolution: EDSR trained on random patches, validated by Y-PSNR against bicubic."""

    name = "superres"
    Config = SuperResConfig
    monitor = ("val_psnr", "max")

    def check_config(self):
        super().check_config()
        config = self.config
        if config.data.patch_size % config.scale:
            raise ConfigError(
                f"config key 'data.patch_size' ({config.data.patch_size}) must be a multiple of "
                f"'scale' ({config.scale})"
            )

    def build_model(self):
        from kx_vision.models import EDSR

        config = self.config
        return EDSR(scale=config.scale, num_blocks=config.model.num_blocks, num_filters=config.model.num_filters,
                    residual_scale=config.model.residual_scale, blur=config.model.blur)

    def build_loss(self):
        import keras

        from kx_vision import losses

        loss = self.config.loss
        if loss.name == "perceptual":
            perceptual = losses.PerceptualLoss(weights=loss.vgg_weights, pixel_weight=loss.pixel_weight)
            perceptual.build_extractor()  # now: missing VGG16 weights stop a run before it starts
            return perceptual
        if loss.name == "mse":
            return keras.losses.MeanSquaredError(name="mse")
        return keras.losses.MeanAbsoluteError(name="l1")

    def build_metrics(self):
        """Y-PSNR, and Y-SSIM where patches are large enough for its 11x11 window after shaving."""
        from kx_vision import metrics

        scale = self.config.scale
        found = [metrics.PSNR(shave=scale)]
        if self.config.data.patch_size - 2 * scale >= metrics.SSIM_WINDOW:
            found.append(metrics.SSIM(shave=scale))
        return found

    def freeze_plan(self, model, transferred):
        """Layers seeded by `init_from`, for `freeze_transferred_epochs`."""
        return (list(transferred), self.config.freeze_transferred_epochs) if transferred else ([], 0)

    def build_data(self):
        """Random HR patches and their LR inputs, streamed from the files or cropped from memory
        (`data.cache`; `kx_vision.data.streaming`), through tf.data (`kx_vision.data.superres`) or, without
        TensorFlow, `kx_vision.data.arrays`; validation on whole images, held in memory
        (`extras["val_pairs"]` for the report; `extras["train_stream"]` counts unreadable files)."""
        from kx_vision.data import arrays, resolve_pipeline, streaming, tfds_source
        from kx_vision.data import superres as sr_data  # imports TensorFlow only where it is installed

        config, data = self.config, self.config.data
        pipeline = resolve_pipeline(data.pipeline)
        # Folders, or `tfds:` sets (kx_vision.data.tfds_source: tf.data only).
        stream, note = streaming.open_stream(data.train, data.patch_size, data.batch_size, data.patches_per_image,
                                             config.seed, data.cache, data.cache_limit_mib,
                                             skip_small=data.skip_small, what="training image", pipeline=pipeline)
        say(f"training data: {note}")
        val_images = tfds_source.load_images(data.val, what="validation image")  # folders and `tfds:` sets
        pairs = sr_data.validation_pairs(val_images, config.scale)
        extras = {"val_pairs": pairs, "train_stream": stream}
        if pipeline == "numpy":
            train = arrays.SuperResPatches(stream, config.scale, steps_per_epoch=config.steps_per_epoch,
                                           augment=data.augment, workers=arrays.default_workers())
            return DataBundle(train, arrays.Pairs(pairs), config.steps_per_epoch, endless=False, extras=extras)
        train = sr_data.stream_dataset(stream, config.scale, augment=data.augment,
                                       steps_per_epoch=config.steps_per_epoch)
        return DataBundle(train, sr_data.pairs_dataset(pairs), config.steps_per_epoch, endless=True, extras=extras)

    def report(self, model, data):
        pairs = data.extras["val_pairs"]
        model_psnr, bicubic_psnr = score(model, pairs, self.config.scale)
        return (
            f"validation Y-PSNR (x{self.config.scale}, {len(pairs)} images): model {model_psnr:.2f} dB, "
            f"bicubic {bicubic_psnr:.2f} dB ({model_psnr - bicubic_psnr:+.2f} dB)"
        ), {"psnr": model_psnr, "bicubic_psnr": bicubic_psnr}

    # Side (HR pixels) of the central crop of each validation image that the samples show, and the LR
    # pixels around it that the model and bicubic see, so that the crop's edges are those of the whole image.
    example_side = 128
    example_margin = 8

    def render_examples(self, model, examples):
        """bicubic | model | ground truth for each `(lr, hr)` validation pair: the central crop of at most
        `example_side` HR pixels a side, with each crop's Y-PSNR (shave = scale, 8-bit) in the captions."""
        import numpy as np

        from kx_vision import metrics
        from kx_vision.data import transforms
        from kx_vision.inference import pictures
        from kx_vision.inference.tiling import as_predict_fn

        scale, margin = self.config.scale, self.example_margin
        predict = as_predict_fn(model)
        rows, captions = [], []
        for lr, hr in examples:
            height, width = lr.shape[1:3]
            crop_h, crop_w = min(height, self.example_side // scale), min(width, self.example_side // scale)
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            top0, left0 = max(top - margin, 0), max(left - margin, 0)
            part = lr[:, top0 : min(top + crop_h + margin, height), left0 : min(left + crop_w + margin, width)]
            inner = (slice(None), slice((top - top0) * scale, (top - top0 + crop_h) * scale),
                     slice((left - left0) * scale, (left - left0 + crop_w) * scale))
            truth = hr[:, top * scale : (top + crop_h) * scale, left * scale : (left + crop_w) * scale]
            sr = predict(part)[inner]
            bicubic = np.asarray(transforms.bicubic_upscale(part, scale))[inner]
            scores = [float(np.asarray(metrics.psnr(truth, out, shave=scale, quantize=True))[0])
                      if min(truth.shape[1:3]) > 2 * scale else None for out in (bicubic, sr)]
            rows.append([bicubic, sr, truth])
            captions.append([f"bicubic{_db(scores[0])}", f"model{_db(scores[1])}", "ground truth"])
        return pictures.grid(rows, captions)


Config = SuperResConfig
Task = SuperResTask


def _db(value):
    return "" if value is None else f" {value:.2f} dB"


def score(model, pairs, scale):
    """Mean Y-PSNR (dB, shave = scale, predictions rounded to 8 bits) of `model` and of bicubic
    upscaling on the same `(lr, hr)` pairs: `(model_psnr, bicubic_psnr)`."""
    import numpy as np

    from kx_vision import metrics
    from kx_vision.data import transforms

    model_scores, bicubic_scores = [], []
    for lr, hr in pairs:
        sr = model.predict_on_batch(lr)
        model_scores.append(float(metrics.psnr(hr, sr, shave=scale, quantize=True)[0]))
        bicubic = transforms.bicubic_upscale(lr, scale)
        bicubic_scores.append(float(metrics.psnr(hr, bicubic, shave=scale, quantize=True)[0]))
    return float(np.mean(model_scores)), float(np.mean(bicubic_scores))
