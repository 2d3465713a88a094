"""Writes the three notebooks from the cells below (and, with `--execute`, runs them to store outputs).

    python notebooks/build.py [--execute]      # KX_VISION_FAST=1 for the quick versions committed here

The notebooks are generated so that their code stays reviewable as Python; edit the cells here, rebuild.
"""

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os
os.environ.setdefault("KERAS_BACKEND", "jax")  # or "tensorflow": the notebook runs unchanged on either
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FAST = os.environ.get("KX_VISION_FAST") == "1"  # quick version (a few minutes on a 2-core CPU)

import tempfile
import keras
import matplotlib.pyplot as plt
import numpy as np

keras.utils.set_random_seed(0)
RUNS = tempfile.mkdtemp(prefix="kx_vision_")  # training outputs of this notebook
print(f"Keras {keras.__version__} on {keras.backend.backend()}; fast setting: {FAST}")


def show(images, titles, size=2.2):
    figure, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), dpi=60)
    for axis, image, title in zip(np.atleast_1d(axes), images, titles):
        axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    plt.show()'''

SUPER_RESOLUTION = [
    ("md", """# Super-resolution with kx_vision

Lesson 14 of fast.ai's 2018 course turns a low-resolution photo into a sharper one with a residual network
(EDSR, without batch norm), sub-pixel upsampling and, later, a perceptual loss. Here we do the same with
`kx_vision`: look at the data and its paired augmentation, see why the upsampling layer is initialised with
ICNR, train, compare against bicubic interpolation, compare training losses (MSE, L1 and, where VGG16's
weights are at hand, the feature loss), grow the x2 model into a x4 one, and export it.

Set `KX_VISION_FAST=1` for a quick run (a tiny model trained for about a minute on a CPU, still better
than bicubic); without it the notebook trains the defaults of `python -m kx_vision.train superres`."""),
    ("code", SETUP),
    ("md", """## Data: random patches, the same transform on both sides

Training pairs are made on the fly: a random HR patch of a random image, one of the 8 symmetries of the
square (the *dihedral* group: quarter turns and a flip), then the LR input by bicubic downscaling. The
transform is applied to the HR patch before degradation, so input and target always match."""),
    ("code", '''from kx_vision.data import SAMPLE_DIR, transforms
from kx_vision.data.superres import load_folders, validation_pairs
from kx_vision.tasks import superres

images = load_folders([os.path.join(SAMPLE_DIR, "train")], min_size=48)
crop = images[0][100:164, 150:214].astype("float32")[None] / 255
variants = [np.asarray(transforms.dihedral(crop, k))[0] for k in range(8)]
show(variants, [f"k={k}" for k in range(8)], size=1.4)'''),
    ("code", '''from kx_vision.data.arrays import SuperResPatches

patches = SuperResPatches(images, scale=2, patch_size=48, batch_size=4, steps_per_epoch=1)
lr, hr = patches[0]
show([lr[0], hr[0]], [f"LR input {lr.shape[1:3]}", f"HR target {hr.shape[1:3]}"])'''),
    ("md", """## Why ICNR

A sub-pixel convolution makes `scale**2` channels per output channel and `PixelShuffle` (Keras's
`depth_to_space`) arranges them into `scale x scale` blocks. With an ordinary random initialisation the
channels of a block differ, and the output starts as a checkerboard. ICNR initialises the kernel so that
every block is constant: the layer starts out as nearest-neighbour upsampling. (Keras's pixel order is
depth-column-row, so ICNR *tiles* its base kernel across the groups.)"""),
    ("code", '''from kx_vision.layers import ICNR, PixelShuffle

def upsample_once(initializer, image):
    conv = keras.layers.Conv2D(3 * 4, 3, padding="same", kernel_initializer=initializer, use_bias=False)
    return np.asarray(PixelShuffle(2)(conv(image)))[0]

smooth = crop[:, :24, :24]
plain = upsample_once(keras.initializers.HeNormal(seed=1), smooth)
icnr = upsample_once(ICNR(2, initializer=keras.initializers.HeNormal(seed=1)), smooth)
normalise = lambda x: (x - x.min()) / (x.max() - x.min())
show([smooth[0], normalise(plain), normalise(icnr)], ["input", "plain init: checkerboard", "ICNR: smooth blocks"])
blocks = icnr.reshape(24, 2, 24, 2, 3)
print("largest difference inside a 2x2 block with ICNR:", float(np.ptp(blocks, axis=(1, 3)).max()))'''),
    ("md", """## Train

`kx_vision.trainer.fit` is what `python -m kx_vision.train superres` runs: `model.fit` with a resumable
backup, atomic checkpoints and logs. The config is the same typed object the command line fills.

The fast setting is small but not wrong: a tiny EDSR (2 residual blocks of 16 channels) sees many small
patches (1,000 steps of 16 patches of 32 px) at a slightly higher learning rate. The model has no bicubic
path inside: it learns the upsampling itself, which takes a few hundred steps before it passes bicubic."""),
    ("code", '''from kx_vision import config as config_lib
from kx_vision import trainer

settings = (["model.num_blocks=2", "model.num_filters=16", "data.batch_size=16", "optimizer.learning_rate=2e-3",
             "optimizer.warmup_steps=20"] if FAST else [])
settings_x2 = settings + (["data.patch_size=32", "epochs=2", "steps_per_epoch=500"] if FAST else [])
config_x2 = config_lib.load(superres.Config, None, settings_x2)  # loss.name=l1, the task's default
model_x2, summary = trainer.fit(superres, config_x2, os.path.join(RUNS, "x2"), verbose=0)'''),
    ("md", """## Look at the result

Bicubic interpolation, the model and the ground truth on a validation image, with their Y-PSNR (the
luma PSNR papers report, border of `scale` pixels shaved, predictions rounded to 8 bits). Even the fast
model beats bicubic on the validation photos, which it never saw; the default run (8 epochs of a larger
model) gains more, and the recipes in `configs/` are the ones meant to reach published figures."""),
    ("code", '''from kx_vision.metrics import psnr

val_pairs = validation_pairs(load_folders(config_x2.data.val), 2)  # whole images, HR cropped to a multiple of 2
model_psnr, bicubic_psnr = superres.score(model_x2, val_pairs, 2)
print(f"x2 Y-PSNR on {len(val_pairs)} validation images: model {model_psnr:.2f} dB, bicubic {bicubic_psnr:.2f} dB "
      f"({model_psnr - bicubic_psnr:+.2f} dB)")
val_lr, val_hr = val_pairs[0]
bicubic = np.asarray(transforms.bicubic_upscale(val_lr, 2))
predicted = model_x2.predict(val_lr, verbose=0)
scores = [float(psnr(val_hr, x, shave=2, quantize=True)[0]) for x in (bicubic, predicted)]  # this image
window = (slice(None), slice(60, 160), slice(60, 160))
show([bicubic[window][0], predicted[window][0], val_hr[window][0]],
     [f"bicubic {scores[0]:.2f} dB", f"model {scores[1]:.2f} dB", "ground truth"], size=2.6)'''),
    ("md", """## Which loss: MSE, L1 or VGG16 features

The lesson's question: what should the model minimise? MSE is the error PSNR measures; L1, the task's
default (`loss.name=l1`), is EDSR's choice; the lesson's feature (perceptual) loss compares VGG16 activations
of the prediction and the truth instead of their pixels (`loss.name=perceptual`). The x2 model above trained
with L1. Below, the same tiny model trains on the same data for the same steps from the same seed with MSE,
and with the feature loss where VGG16's ImageNet weights are already on this machine (this notebook does not
download them)."""),
    ("code", '''VGG16_FILE = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models",
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")  # where keras.applications keeps it
compared = ["mse", "l1"] + (["perceptual"] if os.path.isfile(VGG16_FILE) else [])
if "perceptual" in compared:
    print(f"VGG16 ImageNet weights: found in {VGG16_FILE}; the feature loss trains too")
else:
    print(f"No feature-loss model: VGG16's ImageNet weights are not in {VGG16_FILE}; comparing MSE and L1")'''),
    ("code", '''loss_models = {"l1": model_x2}  # trained above
for name in compared:
    if name not in loss_models:
        extra = [f"loss.name={name}"] + ([f"loss.vgg_weights={VGG16_FILE}"] if name == "perceptual" else [])
        loss_models[name], _ = trainer.fit(superres, config_lib.load(superres.Config, None, settings_x2 + extra),
                                           os.path.join(RUNS, f"x2_{name}"), verbose=0)'''),
    ("md", """Mean Y-PSNR and Y-SSIM over the validation images (2-pixel border shaved, outputs rounded to 8 bits,
as above), then the central 80 x 80 pixels of one of them, enlarged 2x, with the scores of that crop. PSNR
and SSIM reward the average pixel; look at the edges and textures as well."""),
    ("code", '''from IPython.display import Image as PNG
from kx_vision import visualize
from kx_vision.metrics import ssim

upscaled = {"bicubic": [np.asarray(transforms.bicubic_upscale(lr, 2)) for lr, _ in val_pairs]}
upscaled.update({name: [loss_models[name].predict(lr, verbose=0) for lr, _ in val_pairs] for name in compared})
truths = [hr for _, hr in val_pairs]


def quality(truth, image):
    """Y-PSNR (dB) and Y-SSIM of one image, scale-wide border shaved, rounded to 8 bits."""
    return (float(psnr(truth, image, shave=2, quantize=True)[0]), float(ssim(truth, image, shave=2, quantize=True)[0]))


print(f"x2 on {len(val_pairs)} validation images (mean Y-PSNR in dB, mean Y-SSIM)")
print(f"{'loss':<11s} {'PSNR':>6s}  {'SSIM':>6s}")
for name, images in upscaled.items():
    scores = np.mean([quality(truth, image) for truth, image in zip(truths, images)], axis=0)
    print(f"{name:<11s} {scores[0]:6.2f}  {scores[1]:6.4f}")

truth_crop = visualize.center_crop(truths[0][0], 80, 80)  # the first validation image
panels, captions = [], []
for name, images in upscaled.items():
    crop = visualize.center_crop(images[0][0], 80, 80)
    crop_psnr, crop_ssim = quality(truth_crop[None], crop[None])
    panels.append(crop)
    captions.append(f"{name} {crop_psnr:.2f} dB {crop_ssim:.3f}")
panels, captions = panels + [truth_crop], captions + ["ground truth"]
PNG(visualize.png_bytes(visualize.grid([[visualize.zoom(visualize.to_uint8(p), 2) for p in panels]], [captions])))'''),
    ("md", """## Grow x2 into x4

The lesson's progressive resizing: a x4 model reuses every layer of the x2 one that it shares by name
(head, residual body, first upsampling stage) and adds a second upsampling stage. `init_from` copies the
weights and prints what moved; `freeze_transferred_epochs` first trains only the new layers."""),
    ("code", '''settings_x4 = settings + ["scale=4", f"init_from={RUNS}/x2/model.keras", "freeze_transferred_epochs=1"] + (
    ["data.patch_size=48", "epochs=2", "steps_per_epoch=300"] if FAST else ["data.patch_size=96"])
config_x4 = config_lib.load(superres.Config, None, settings_x4)
model_x4, summary_x4 = trainer.fit(superres, config_x4, os.path.join(RUNS, "x4"), verbose=0)
val_pairs_x4 = validation_pairs(load_folders(config_x4.data.val), 4)
model_psnr, bicubic_psnr = superres.score(model_x4, val_pairs_x4, 4)
print(f"x4 Y-PSNR on {len(val_pairs_x4)} validation images: model {model_psnr:.2f} dB, bicubic {bicubic_psnr:.2f} dB "
      f"({model_psnr - bicubic_psnr:+.2f} dB)")'''),
    ("md", """## Export for serving

A SavedModel with a float endpoint (`serve`) and a uint8 one (`serve_uint8`), usable from TensorFlow
Serving or `tf.saved_model.load` without Keras (TensorFlow must be installed to export)."""),
    ("code", '''import importlib.util

if importlib.util.find_spec("tensorflow"):
    from kx_vision.export import export_model

    path = export_model(model_x4, os.path.join(RUNS, "exported_x4"))
    print("exported to", path, "-", sorted(os.listdir(path)))
else:
    print("TensorFlow is not installed here: skipping the export")'''),
]

STYLE_TRANSFER = [
    ("md", """# Fast neural style transfer with kx_vision

Johnson et al. (2016) train a feed-forward network to paint any photo in one style, with a loss made of
VGG16 features: *content* (activations of the photo) and *style* (Gram matrices of activations of the
painting). Here: what a Gram matrix measures, the transformer network, a short training run on a painting,
and stylised photos.

Set `KX_VISION_FAST=1` for a quick run. The style loss needs VGG16's ImageNet weights (downloaded once
into `~/.keras/models/`, or copied there by hand offline); random VGG16 features would train on noise, so
without the weights this notebook says so and skips the training and stylising cells."""),
    ("code", SETUP),
    ("md", """## Gram matrices

The Gram matrix of a feature map `(H, W, C)` is the `C x C` matrix of channel co-activations, averaged
over positions: it keeps *which features occur together* and forgets *where*. Shuffling an image's pixels
changes its content completely and its Gram matrix not at all."""),
    ("code", '''from kx_vision.losses import gram_matrix

rng = np.random.default_rng(0)
features = rng.random((1, 16, 16, 8)).astype("float32")
shuffled = features.reshape(1, 256, 8)[:, rng.permutation(256)].reshape(1, 16, 16, 8)
print("content difference:", float(np.abs(features - shuffled).mean()))
print("Gram difference:   ", float(np.abs(np.asarray(gram_matrix(features)) - np.asarray(gram_matrix(shuffled))).max()))'''),
    ("md", """## The style

A painting from `../shared/data/style` (the repository's data folder, or `KX_VISION_SHARED_DATA`) when it is
there; else a photo shipped in the package's sample, the Hubble deep field, whose colours and speckle make a
passable texture."""),
    ("code", '''from pathlib import Path
from kx_vision.data import SAMPLE_DIR
from kx_vision.data.images import load_image
from kx_vision.tasks import style as style_task

shared = Path(os.environ.get("KX_VISION_SHARED_DATA", "../../shared/data")) / "style"
paintings = sorted(p for p in shared.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if shared.is_dir() else []
paintings.sort(key=lambda p: p.stem != "starry_night")  # the lesson's painting first, when it is there
if paintings:
    style_path = str(paintings[0])
    print(f"style: {paintings[0].name}, a painting from {shared}")
else:
    style_path = os.path.join(SAMPLE_DIR, "train", "hubble_deep_field.jpg")
    print(f"no painting in {shared}: the style is the package's sample photo {style_path}")
style_image = load_image(style_path)
show([style_image / 255], [Path(style_path).name], size=3)'''),
    ("md", """## The transformer network

Reflection padding, three stride-1/2 convolutions down, residual blocks, upsampling back, and an output in
[0, 1]; instance or batch normalisation."""),
    ("code", '''from kx_vision.models import StyleTransferNet

StyleTransferNet(num_filters=16 if FAST else 32, num_blocks=3 if FAST else 5).summary(line_length=90, expand_nested=False)'''),
    ("md", """## Train

The `style` task of `python -m kx_vision.train`: content crops of the sample photos, the Johnson loss with
its content / style / total-variation parts shown as metrics. Its features come from VGG16 with ImageNet
weights; the library never substitutes random ones, and neither does this notebook. The fast setting trains
a small network for 60 steps on 64 px crops (about a minute on a CPU): expect the painting's colours and a
first texture, not a finished style; the default run trains 400 steps of a full-size network."""),
    ("code", '''import contextlib
import io

from kx_vision.backbones import vgg16_feature_extractor
from kx_vision.errors import WeightsUnavailableError

try:
    with contextlib.redirect_stdout(io.StringIO()):  # Keras's "Downloading data from ..." line
        vgg16_feature_extractor(["block1_conv2"])  # ~/.keras/models/ first, else downloaded once
    HAVE_VGG16 = True
    print("VGG16 ImageNet weights: found")
except WeightsUnavailableError:
    HAVE_VGG16 = False
    print("Skipping the training and stylising cells: VGG16's ImageNet weights could not be loaded (offline? "
          "copy vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 into ~/.keras/models/ to run them)")'''),
    ("code", '''from kx_vision import config as config_lib
from kx_vision import trainer

if HAVE_VGG16:
    settings = [f"style_image={style_path}"] + (
        ["model.num_filters=16", "model.num_blocks=3", "data.crop_size=64", "loss.style_size=128", "epochs=1",
         "steps_per_epoch=60", "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=10"] if FAST else [])
    model, summary = trainer.fit(style_task, config_lib.load(style_task.Config, None, settings),
                               os.path.join(RUNS, "style"), verbose=0)'''),
    ("md", """## Stylise photos"""),
    ("code", '''from kx_vision.data.superres import load_folders

if HAVE_VGG16:
    photos = load_folders([os.path.join(SAMPLE_DIR, "val")])[:2]
    inputs = [p[:256, :256].astype("float32")[None] / 255 for p in photos]
    outputs = [model.predict(x, verbose=0)[0] for x in inputs]
    show([x[0] for x in inputs] + outputs, ["photo"] * len(inputs) + ["stylised"] * len(outputs))'''),
]

SEGMENTATION = [
    ("md", """# Segmentation with kx_vision: from a naive head to a U-Net

CamVid labels every pixel of street scenes with one of 11 classes (plus "void", ignored). The lesson first
puts a naive upsampling head on a pretrained encoder, then builds a U-Net whose decoder re-uses the encoder's
intermediate activations. Here: masks over frames, the naive head, the lesson's U-Net and the library's
default U-Net trained briefly, dice / IoU per class, progressive resizing, and predictions.

Set `KX_VISION_FAST=1` for a quick run on the 16 sample frames shipped in the package (12 to train, 4 to
validate) with a small encoder trained from scratch; without it the notebook uses ResNet50 with ImageNet weights (downloaded once) and CamVid from
`../shared/data/seg/camvid` when present."""),
    ("code", SETUP),
    ("md", """## Frames and masks"""),
    ("code", '''from pathlib import Path
from kx_vision import config as config_lib
from kx_vision.tasks import segmentation as seg_task
from kx_vision.data.masks import find_pairs, load_pairs

camvid = Path(os.environ.get("KX_VISION_SHARED_DATA", "../../shared/data")) / "seg" / "camvid"
if FAST or not camvid.is_dir():
    camvid = Path(seg_task.SAMPLE_DIR)
folders = [f"data.train_images={camvid / 'train'}", f"data.train_masks={camvid / 'trainannot'}",
           f"data.val_images={camvid / 'val'}", f"data.val_masks={camvid / 'valannot'}"]
pairs = find_pairs([str(camvid / "train")], [str(camvid / "trainannot")])[:3]
frames, masks = load_pairs(pairs, 11, 11)
palette = plt.get_cmap("tab20")(np.arange(12))[:, :3]
overlays = [0.55 * f / 255 + 0.45 * palette[m.reshape(f.shape[:2])] for f, m in zip(frames, masks)]
show(overlays, [Path(p[0]).name for p in pairs], size=3)
print("classes:", ", ".join(seg_task.CAMVID_CLASSES))'''),
    ("md", """## The naive head, then two U-Nets

All three train with the same loss, data, steps and learning rate; only the decoder changes. The naive head
upsamples the encoder's last feature map, 32 times smaller than the image, with transposed convolutions: it
can only paint blocks of 32 x 32 pixels. A U-Net adds skip connections from every encoder stage (found
automatically from the encoder's layer shapes). Two decoders: the lesson's `UnetBlock`
(`model.decoder=lesson`: a transposed convolution up, a 1x1 convolution on the skip, the two concatenated,
ReLU and batch norm), and the library's default, later fastai's `DynamicUnet` (`model.decoder=fastai`:
pixel shuffle with ICNR, two 3x3 convolutions per stage, and a last cross-connection to the input image).

The loss is the lesson's: cross-entropy, void pixels ignored (`loss.dice_weight=0`; the library's default adds
a soft dice term, which helps rare classes over long runs but makes a short run from scratch noisy). In the
fast setting both models start from scratch on the same small plain encoder (`model.backbone=simple`, no
pretrained weights) and see the 12 training frames 60 times at 32x48, four frames per step (180 steps).

For runs of many one-second epochs we call `model.fit` on the task's own pieces (its model, loss, metrics,
data, and the trainer's optimizer): that is what `trainer.fit` (and `python -m kx_vision.train segmentation`)
runs, without the checkpoints and resumable backup it writes after every epoch."""),
    ("code", '''from kx_vision.trainer import build_optimizer


def train_briefly(settings, model=None):
    """Train a new model (or continue `model`) with the segmentation task's config `settings`: `(model, scores)`."""
    config = config_lib.load(seg_task.Config, None, settings)
    task = seg_task.Task(config)
    data = task.build_data()
    if model is None:
        keras.utils.set_random_seed(config.seed)
        model = task.build_model()
    model.compile(optimizer=build_optimizer(config, config.epochs * data.steps_per_epoch), loss=task.loss,
                  metrics=task.build_metrics())
    model.fit(data.train, epochs=config.epochs, shuffle=False, verbose=0)  # the pipeline shuffles itself
    return model, task.report(model, data)[1]


encoder = (["model.backbone=simple", "model.backbone_weights=null", "model.max_filters=32"] if FAST
           else ["model.backbone=resnet50", "model.backbone_weights=imagenet"])
common = folders + encoder + ["loss.dice_weight=0", "optimizer.warmup_steps=10"]
small = common + (["data.image_size=32,48", "data.batch_size=4", "epochs=60", "optimizer.learning_rate=3e-3"] if FAST
                  else ["data.image_size=180,240", "epochs=12"])
decoders = {"upsample_head": ["model.architecture=upsample_head"],
            "unet (lesson)": ["model.architecture=unet", "model.decoder=lesson"],
            "unet (fastai)": ["model.architecture=unet", "model.decoder=fastai"]}
models, results = {}, {}
for name, choice in decoders.items():
    models[name], results[name] = train_briefly(small + choice)
print(f"{'model':<15s} {'mean IoU':>8s}  {'pixel accuracy':>14s}  {'parameters':>10s}")
for name, scores in results.items():
    print(f"{name:<15s} {scores['miou']:8.3f}  {scores['pixel_accuracy']:14.3f}  {models[name].count_params():10,d}")'''),
    ("md", """The first validation frame at the training size (enlarged 4x), its truth, and each model's prediction
with the share of its labelled pixels it gets right."""),
    ("code", '''from IPython.display import Image as PNG
from PIL import Image
from kx_vision import visualize

val_pairs = find_pairs([str(camvid / "val")], [str(camvid / "valannot")])
palette8 = np.round(palette * 255).astype(np.uint8)


def val_frames_at(height, width, count):
    """The first `count` validation frames (floats in [0, 1]) and their masks, resized to `height` x `width`."""
    frames, masks = load_pairs(val_pairs[:count], 11, 11)
    return ([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR), "float32") / 255 for f in frames],
            [np.asarray(Image.fromarray(m.reshape(m.shape[:2])).resize((width, height), Image.NEAREST)) for m in masks])


(frame,), (truth,) = val_frames_at(*config_lib.load(seg_task.Config, None, small).data.image_size, 1)
panels, captions = [frame, visualize.overlay(frame, truth, 0.45, 11, palette8)], ["frame", "truth"]
labelled = truth != 11  # void pixels are not scored
for name, model in models.items():
    predicted = visualize.class_ids(model.predict(frame[None], verbose=0)[0])
    panels.append(visualize.overlay(frame, predicted, 0.45, None, palette8))
    captions.append(f"{name}: {100 * np.mean(predicted[labelled] == truth[labelled]):.0f}% right")
PNG(visualize.png_bytes(visualize.grid([[visualize.zoom(visualize.to_uint8(p), 4) for p in panels]], [captions])))'''),
    ("md", """## IoU and dice per class

Keras's `MeanIoU` confusion matrix, void pixels skipped; classes absent from both truth and prediction are
left out of the mean. The fast models have seen 12 thumbnails for a minute: the large classes (sky, road,
building, trees) come first and the small ones (poles, signs, pedestrians) stay near zero; run without
`KX_VISION_FAST` (or `configs/camvid_unet_resnet50.yaml`) for real figures."""),
    ("code", '''names = [n for n in seg_task.CAMVID_CLASSES if results["unet (fastai)"]["per_class_iou"][n] is not None]
iou = {model: np.array([results[model]["per_class_iou"][n] or 0.0 for n in names]) for model in results}
figure, axis = plt.subplots(figsize=(6, 2.5), dpi=60)
positions = np.arange(len(names))
for offset, model in zip((-0.3, -0.1, 0.1), iou):
    axis.bar(positions + offset, iou[model], width=0.2, label=f"{model} IoU")
dice = 2 * iou["unet (fastai)"] / (1 + iou["unet (fastai)"])  # dice = 2 IoU / (1 + IoU)
axis.bar(positions + 0.3, dice, width=0.2, label="unet (fastai) dice")
axis.set_xticks(positions, names, rotation=60, fontsize=8)
axis.set_ylabel("score (0-1)", fontsize=8)
axis.legend(fontsize=8)
plt.show()'''),
    ("md", """## Progressive resizing

Train small first, then continue at a larger size with the same weights: the U-Net (the default decoder,
trained above) takes any input size, so
every layer carries over (from the command line: `--set init_from=runs/small/model.keras`, which copies the
weights by layer name). What the small run learnt is a head start: trained for the same few epochs at the
larger size, the U-Net that starts from the small one is far ahead of one that starts from scratch."""),
    ("code", '''larger = common + ["model.architecture=unet"] + (
    ["data.image_size=64,96", "data.batch_size=2", "epochs=8", "optimizer.learning_rate=1e-3"] if FAST
    else ["data.image_size=360,480", "epochs=4", "optimizer.learning_rate=3e-4"])
config = config_lib.load(seg_task.Config, None, larger)
size, small_size = config.data.image_size, config_lib.load(seg_task.Config, None, small).data.image_size
resized, resized_scores = train_briefly(larger, model=models["unet (fastai)"])
_, scratch_scores = train_briefly(larger)
for start, scores in ((f"from the {small_size[0]}x{small_size[1]} U-Net", resized_scores), ("from scratch", scratch_scores)):
    print(f"U-Net at {size[0]}x{size[1]}, {config.epochs} epochs {start}: mean IoU {scores['miou']:.3f}")'''),
    ("md", """## Predictions

Validation frames at the size the model was last trained on, the truth and the U-Net's prediction over them."""),
    ("code", '''shown, titles = [], []
for frame, mask in zip(*val_frames_at(*size, 2)):
    predicted = resized.predict(frame[None], verbose=0)[0].argmax(-1)
    shown += [0.55 * frame + 0.45 * palette[mask], 0.55 * frame + 0.45 * palette[predicted]]
    titles += ["truth", "prediction"]
show(shown, titles, size=3)'''),
]

NOTEBOOKS = {"01_super_resolution": SUPER_RESOLUTION, "02_style_transfer": STYLE_TRANSFER,
             "03_segmentation": SEGMENTATION}


def build(name, cells):
    notebook = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                                   for kind, src in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


NOISE = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ", "WARNING:tensorflow:",
         "INFO:tensorflow:", "WARNING:absl:")


def execute(notebook, timeout=1800):
    """Run the notebook, then drop backend start-up logs from its stored outputs (they differ per machine)."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream":
                lines = [line for line in output.text.splitlines(keepends=True) if not line.startswith(NOISE)]
                if not "".join(lines).strip():
                    continue
                output.text = "".join(lines)
            kept.append(output)
        cell.outputs = kept
    return notebook


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--execute", action="store_true", help="run each notebook and store its outputs")
    parser.add_argument("--only", nargs="*", default=list(NOTEBOOKS))
    args = parser.parse_args()
    for name in args.only:
        notebook = build(name, NOTEBOOKS[name])
        if args.execute:
            execute(notebook)
        path = HERE / f"{name}.ipynb"
        nbformat.write(notebook, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
