"""Cases of the cross-backend parity suite, and the worker that runs them.

Every case builds a public kx_vision object (layer, initializer, model, loss, metric, optimizer,
transform) from inputs drawn with NumPy (identical on every backend) and returns its outputs as NumPy
arrays. Weights are random, so the backend that runs first (`mode="save"`) writes them to
`.weights.h5` files (or whole models to `.keras` files) and the other backend (`mode="load"`) reads
them instead of initialising its own. `tests/test_parity.py` runs the cases in-process under one
backend and, through this file's `__main__`, in a subprocess under the other, then compares.

    KERAS_BACKEND=jax python tests/parity_cases.py FOLDER load
"""

import sys
import zlib
from pathlib import Path

import keras
import numpy as np
from keras import ops

CASES = {}


def case(function):
    CASES[function.__name__.removeprefix("case_")] = function
    return function


class Context:
    """What a case needs: seeded NumPy inputs, and weights shared through files in `folder`."""

    def __init__(self, folder, name, mode):
        self.folder, self.name, self.mode = Path(folder), name, mode
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))

    def images(self, *shape):
        return self.rng.random(shape).astype("float32")

    def share(self, obj):
        """Write (save mode) or read (load mode) the weights of a built layer or model."""
        if isinstance(obj, keras.Model):  # models go through Keras's own weights file
            path = self.folder / f"{self.name}.weights.h5"
            obj.save_weights(path) if self.mode == "save" else obj.load_weights(path)
            return obj
        path = self.folder / f"{self.name}.npz"  # a bare layer has no save_weights
        if self.mode == "save":
            np.savez(path, *[ops.convert_to_numpy(v) for v in obj.weights])
        else:
            stored = np.load(path)
            for i, variable in enumerate(obj.weights):
                variable.assign(stored[f"arr_{i}"])
        return obj

    def saved_model(self, build):
        """Save mode: build the model and save it as `.keras`. Load mode: load that file instead
        (with `safe_mode` on, as the CLI does), so the file crosses backends, and save it again from this
        backend. Reload mode (back on the first backend): load that second file."""
        from kx_vision.models.loading import load_model

        path = self.folder / f"{self.name}.keras"
        if self.mode == "save":
            model = build()
            model.save(path)
            return model
        if self.mode == "reload":  # the file the other backend wrote back (see below)
            return load_model(self.folder / f"{self.name}.resaved.keras")
        model = load_model(path)
        model.save(self.folder / f"{self.name}.resaved.keras")  # saved under this backend, for the way back
        return model

    @property
    def vgg16_weights(self):
        """One random VGG16 weights file, written by the first backend, read by both: the
        perceptual and style losses take it as their local `weights` path."""
        path = self.folder / "vgg16_notop.weights.h5"
        if not path.exists():
            keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3)).save_weights(path)
        return str(path)


def numpy(tree):
    if isinstance(tree, dict):
        return {k: numpy(v) for k, v in tree.items()}
    return np.asarray(ops.convert_to_numpy(tree), dtype=np.float64)


def tiny_backbone():
    sys.path.insert(0, str(Path(__file__).parent))
    from seg_helpers import tiny_backbone as build

    return build(stages=5, width=4)


# Layers and the initializer -------------------------------------------------------------------------

@case
def case_pixel_shuffle(ctx):
    from kx_vision.layers import PixelShuffle

    x = ctx.images(2, 5, 6, 12)
    return {"x2": PixelShuffle(2)(x), "x3": PixelShuffle(3)(ctx.images(1, 3, 4, 18))}


@case
def case_icnr(ctx):
    """The shared kernel upsamples identically; each backend's own fresh ICNR kernel has the tiled
    block structure, so its sub-pixel conv starts as nearest-neighbour upsampling (spread 0)."""
    from kx_vision.layers import ICNR, apply_pixel_shuffle_upsample

    def upsampler():
        image = keras.Input((None, None, 4))
        return keras.Model(image, apply_pixel_shuffle_upsample(image, 3, 2, name="up"))

    x = ctx.images(1, 5, 7, 4)
    fresh = upsampler()
    y = ops.convert_to_numpy(fresh(x))
    blocks = y.reshape(1, 5, 2, 7, 2, 3)
    kernel = ops.convert_to_numpy(ICNR(2, initializer=keras.initializers.HeNormal(seed=1))((3, 3, 4, 12)))
    tiles = kernel.reshape(3, 3, 4, 4, 3)  # (..., group, base channel)
    shared = ctx.share(upsampler())
    return {
        "zero_fresh_block_spread": blocks.max(axis=(2, 4)) - blocks.min(axis=(2, 4)),
        "zero_kernel_group_spread": tiles.max(axis=3) - tiles.min(axis=3),
        "shared_upsample": shared(x),
    }


@case
def case_reflection_padding(ctx):
    from kx_vision.layers import ReflectionPadding2D

    x = ctx.images(2, 6, 7, 2)
    return {"asymmetric": ReflectionPadding2D(((2, 1), (3, 0)))(x), "uniform": ReflectionPadding2D(4)(x)}


@case
def case_pad_and_crop(ctx):
    from kx_vision.layers import CropLike, PadToMultiple

    x = ctx.images(1, 13, 10, 3)
    reflect = PadToMultiple(8)(x)
    return {"reflect": reflect, "constant": PadToMultiple(8, mode="constant")(x),
            "crop": CropLike()([reflect * 2.0, x])}


@case
def case_image_preprocessing(ctx):
    from kx_vision.layers import ImagePreprocessing

    x = ctx.images(1, 4, 5, 3)
    return {mode: ImagePreprocessing(mode)(x) for mode in ("caffe", "tf", "torch", "raw255", "none")}


@case
def case_blur(ctx):
    """The blur alone, and after a pixel shuffle with shared (random, not ICNR) weights."""
    from kx_vision.layers import Blur2D, apply_pixel_shuffle_upsample

    image = keras.Input((None, None, 4))
    upsampler = ctx.share(keras.Model(image, apply_pixel_shuffle_upsample(image, 3, 2, name="up", blur=True)))
    return {"layer": Blur2D()(ctx.images(2, 5, 7, 3)), "upsample": upsampler(ctx.images(1, 6, 5, 4))}


@case
def case_bilinear_upsampling(ctx):
    from kx_vision.layers import BilinearUpSampling2D

    x = ctx.images(2, 5, 7, 3)
    return {f"x{r}": BilinearUpSampling2D(r)(x) for r in (2, 3, 4)}


@case
def case_residual_block(ctx):
    from kx_vision.layers import ResidualBlock

    x = ctx.images(2, 6, 5, 8)
    block = ResidualBlock(8, residual_scale=0.1)
    block.build(x.shape)
    return {"y": ctx.share(block)(x)}


# Models (weights shared through .weights.h5, and whole models through .keras) --------------------------

@case
def case_edsr_x2(ctx):
    from kx_vision.models import EDSR

    model = ctx.share(EDSR(scale=2, num_blocks=2, num_filters=8))
    return {"y": model(ctx.images(2, 12, 10, 3)), "odd_size": model(ctx.images(1, 7, 9, 3))}


@case
def case_edsr_blur_keras_file(ctx):
    from kx_vision.models import EDSR

    model = ctx.saved_model(lambda: EDSR(scale=2, num_blocks=1, num_filters=8, blur=True))
    return {"y": model.predict(ctx.images(1, 7, 9, 3), verbose=0)}


@case
def case_edsr_x4_keras_file(ctx):
    from kx_vision.models import EDSR

    model = ctx.saved_model(lambda: EDSR(scale=4, num_blocks=1, num_filters=8))
    return {"y": model.predict(ctx.images(2, 8, 6, 3), verbose=0)}


@case
def case_unet(ctx):
    from kx_vision.models import UNet

    model = ctx.share(UNet(num_classes=3, backbone=tiny_backbone(), max_filters=8))
    x = ctx.images(2, 45, 61, 3)  # not a multiple of 32: reflect-padded, then cropped
    # training=True: BatchNorm normalises with the batch's own statistics.
    return {"inference": model(x, training=False), "training_mode": model(x, training=True)}


@case
def case_unet_lesson(ctx):
    from kx_vision.models import UNet

    model = ctx.share(UNet(num_classes=3, backbone=tiny_backbone(), decoder="lesson", max_filters=8))
    return {"y": model(ctx.images(2, 45, 61, 3), training=False)}


@case
def case_unet_lesson_blur_keras_file(ctx):
    from kx_vision.models import UNet

    model = ctx.saved_model(lambda: UNet(num_classes=2, backbone=tiny_backbone(), decoder="lesson", blur=True,
                                         max_filters=8))
    return {"y": model.predict(ctx.images(1, 37, 53, 3), verbose=0)}


@case
def case_fpn(ctx):
    from kx_vision.models import FPN

    model = ctx.share(FPN(num_classes=3, backbone=tiny_backbone(), pyramid_filters=8, segmentation_filters=8))
    x = ctx.images(2, 37, 53, 3)
    return {"inference": model(x, training=False), "training_mode": model(x, training=True)}


@case
def case_fpn_concat_keras_file(ctx):
    from kx_vision.models import FPN

    model = ctx.saved_model(lambda: FPN(num_classes=1, backbone=tiny_backbone(), pyramid_filters=8,
                                        segmentation_filters=4, merge="concat"))
    return {"y": model.predict(ctx.images(1, 40, 36, 3), verbose=0)}


@case
def case_unet_transposed_binary_keras_file(ctx):
    from kx_vision.models import UNet

    model = ctx.saved_model(lambda: UNet(num_classes=1, backbone=tiny_backbone(), upsampling="transpose",
                                         max_filters=8))
    return {"y": model.predict(ctx.images(1, 32, 64, 3), verbose=0)}


@case
def case_upsample_head_keras_file(ctx):
    from kx_vision.models import UpsampleHeadNet

    model = ctx.saved_model(lambda: UpsampleHeadNet(num_classes=4, backbone=tiny_backbone(), filters=8))
    return {"y": model.predict(ctx.images(1, 40, 36, 3), verbose=0)}


@case
def case_style_net(ctx):
    from kx_vision.models import StyleTransferNet

    model = ctx.share(StyleTransferNet(num_filters=8, num_blocks=1))
    return {"y": model(ctx.images(1, 27, 31, 3), training=False)}


@case
def case_style_net_instance_norm_keras_file(ctx):
    from kx_vision.models import StyleTransferNet

    model = ctx.saved_model(lambda: StyleTransferNet(num_filters=8, num_blocks=1, norm="instance",
                                                     upsampling="pixel_shuffle"))
    return {"y": model.predict(ctx.images(2, 24, 20, 3), verbose=0)}


# Losses ----------------------------------------------------------------------------------------------

@case
def case_perceptual_loss(ctx):
    from kx_vision.losses import PerceptualLoss

    loss = PerceptualLoss(weights=ctx.vgg16_weights)
    target, prediction = ctx.images(2, 24, 24, 3), ctx.images(2, 24, 24, 3)
    return {"per_image": loss.call(target, prediction), "reduced": loss(target, prediction)}


@case
def case_style_loss(ctx):
    from kx_vision.losses import StyleTransferLoss, gram_matrix
    from kx_vision.metrics import StyleLossPart

    loss = StyleTransferLoss(ctx.images(20, 18, 3), weights=ctx.vgg16_weights, tv_weight=1.0)
    content, stylised = ctx.images(2, 24, 24, 3), ctx.images(2, 24, 24, 3)
    metric = StyleLossPart(loss, "style")
    metric.update_state(content, stylised)
    return {**loss.parts(content, stylised), "total": loss(content, stylised), "metric_style": metric.result(),
            "gram": gram_matrix(ctx.images(2, 5, 6, 4))}


def _segmentation_batch(ctx, num_classes):
    labels = ctx.rng.integers(0, num_classes + 1, (2, 6, 7, 1))  # the last value is the void class
    logits = ctx.rng.normal(size=(2, 6, 7, num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probabilities.astype("float32")


@case
def case_segmentation_losses(ctx):
    from kx_vision.losses import SegmentationLoss, segmentation_cross_entropy, soft_dice_loss

    labels, probabilities = _segmentation_batch(ctx, 4)
    binary_labels = ctx.rng.integers(0, 2, (2, 6, 7, 1))
    binary = ctx.images(2, 6, 7, 1)
    return {
        "cross_entropy": segmentation_cross_entropy(labels, probabilities, 4, ignore_class=4),
        "dice": soft_dice_loss(labels, probabilities, 4, ignore_class=4),
        "combined": SegmentationLoss(num_classes=4, ignore_class=4)(labels, probabilities),
        "binary": SegmentationLoss(num_classes=1)(binary_labels, binary),
    }


# Metrics ---------------------------------------------------------------------------------------------

@case
def case_image_quality(ctx):
    from kx_vision.metrics import PSNR, SSIM, psnr, rgb_to_y, ssim

    target = ctx.images(3, 24, 26, 3)
    prediction = np.clip(target + 0.05 * ctx.rng.normal(size=target.shape), 0, 1).astype("float32")
    out = {"y": rgb_to_y(target),
           "psnr_y_shave": psnr(target, prediction, shave=2),
           "psnr_rgb_quantized": psnr(target, prediction, channel="rgb", quantize=True),
           "ssim_y_shave": ssim(target, prediction, shave=2),
           "ssim_rgb": ssim(target, prediction, channel="rgb")}
    for metric in (PSNR(shave=2), SSIM(shave=2)):
        metric.update_state(target[:2], prediction[:2])
        metric.update_state(target[2:], prediction[2:])
        out[metric.name] = metric.result()
    return out


@case
def case_segmentation_metrics(ctx):
    from kx_vision.metrics import Dice, PixelAccuracy, segmentation_metrics

    labels, probabilities = _segmentation_batch(ctx, 4)
    out = {}
    for metric in [*segmentation_metrics(4, ignore_class=4), PixelAccuracy(4, ignore_class=4)]:
        metric.update_state(labels, probabilities)
        metric.update_state(labels[::-1], probabilities)
        out[f"multiclass_{metric.name}"] = metric.result()
    binary_labels, binary = ctx.rng.integers(0, 2, (2, 6, 7, 1)), ctx.images(2, 6, 7, 1)
    for metric in [*segmentation_metrics(1), Dice()]:
        metric.update_state(binary_labels, binary)
        out[f"binary_{metric.name}"] = metric.result()
    return out


# Optimizers and transforms ---------------------------------------------------------------------------

@case
def case_optimizers(ctx):
    """Three updates of fixed gradients: per-group rates, one-cycle rate and momentum schedules."""
    from kx_vision.training.optimizers import SGD, Adam, one_cycle

    out = {}
    gradients = [ctx.rng.normal(size=(3, 4)).astype("float32") for _ in range(3)]
    rate, momentum = one_cycle(1e-2, total_steps=10)
    for name, optimizer in {
        "adam_one_cycle": Adam(rate, group_rates=[("head", 0.1)], beta_1_schedule=momentum),
        "sgd_groups": SGD(0.1, momentum=0.9, group_rates=[("head", 0.5), ("frozen", 0.0)]),
    }.items():
        variables = [keras.Variable(ctx.rng.normal(size=(3, 4)).astype("float32"), name=n)
                     for n in ("body", "head", "frozen")]
        optimizer.build(variables)
        for gradient in gradients:
            optimizer.apply_gradients([(ops.convert_to_tensor(gradient), v) for v in variables])
        out.update({f"{name}_{v.name}": v for v in variables})
    rate, momentum = one_cycle(1e-2, total_steps=20)
    out["one_cycle_rates"] = [rate(step) for step in range(20)]
    out["one_cycle_momentum"] = [momentum(step) for step in range(20)]
    return out


@case
def case_transforms(ctx):
    from kx_vision.data.transforms import bicubic_downscale, bicubic_upscale, dihedral

    x = ctx.images(2, 12, 12, 3)
    out = {f"dihedral_{k}": dihedral(x, k) for k in range(8)}
    # Unquantized: rounding to 8 bits could flip a value lying within float error of a .5 boundary.
    out["bicubic_down"] = bicubic_downscale(x, 3, quantize=False)
    out["bicubic_up"] = bicubic_upscale(ctx.images(1, 5, 4, 3), 2)
    return out


def run_cases(folder, mode, names=None):
    """Run the cases, returning `{"case/output": float64 array}`."""
    results = {}
    for name in names or sorted(CASES):
        keras.utils.set_random_seed(0)
        outputs = CASES[name](Context(folder, name, mode))
        for key, value in numpy({k: (ops.stack(v) if isinstance(v, list) else v)
                                 for k, v in outputs.items()}).items():
            results[f"{name}/{key}"] = value
    return results


if __name__ == "__main__":
    folder, mode = sys.argv[1], sys.argv[2]
    results = run_cases(folder, mode)
    np.savez(Path(folder) / f"{keras.backend.backend()}.npz", **results)
