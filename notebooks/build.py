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
ICNR, train, compare against bicubic interpolation, grow the x2 model into a x4 one, and export it.

Set `KX_VISION_FAST=1` for a quick run (tiny model, a few steps); without it the notebook trains the
defaults of `python -m kx_vision.train superres`."""),
    ("code", SETUP),
    ("md", """## Data: random patches, the same transform on both sides

Training pairs are made on the fly: a random HR patch of a random image, one of the 8 symmetries of the
square (the *dihedral* group: quarter turns and a flip), then the LR input by bicubic downscaling. The
transform is applied to the HR patch before degradation, so input and target always match."""),
    ("code", '''from kx_vision.data import transforms
from kx_vision.data.superres import load_folders
from kx_vision.tasks import superres

images = load_folders([os.path.join(superres.SAMPLE_DIR, "train")], min_size=48)
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

`kx_vision.train.fit` is what `python -m kx_vision.train superres` runs: `model.fit` with a resumable
backup, atomic checkpoints and logs. The config is the same typed object the command line fills."""),
    ("code", '''from kx_vision import config as config_lib
from kx_vision import train

settings = (["model.num_blocks=2", "model.num_filters=16", "epochs=1", "steps_per_epoch=30", "data.batch_size=8"]
            if FAST else [])
config_x2 = config_lib.load(superres.Config, None, settings)
model_x2, summary = train.fit(superres, config_x2, os.path.join(RUNS, "x2"), verbose=0)
print(summary)'''),
    ("md", """## Look at the result

Bicubic interpolation, the model and the ground truth on a validation image, with their Y-PSNR (the
luma PSNR papers report, border of `scale` pixels shaved). In the fast setting the model has trained for a
few seconds and is still below bicubic; the default run (8 epochs) gets above it, and the recipes in
`configs/` are the ones meant to reach published figures."""),
    ("code", '''from kx_vision.metrics import psnr

val_lr, val_hr = superres.build_data(config_x2)["val_pairs"][0]
bicubic = np.asarray(transforms.bicubic_upscale(val_lr, 2))
predicted = model_x2.predict(val_lr, verbose=0)
scores = [float(psnr(val_hr, x, shave=2)[0]) for x in (bicubic, predicted)]
window = (slice(None), slice(60, 160), slice(60, 160))
show([bicubic[window][0], predicted[window][0], val_hr[window][0]],
     [f"bicubic {scores[0]:.2f} dB", f"model {scores[1]:.2f} dB", "ground truth"], size=2.6)'''),
    ("md", """## Grow x2 into x4

The lesson's progressive resizing: a x4 model reuses every layer of the x2 one that it shares by name
(head, residual body, first upsampling stage) and adds a second upsampling stage. `init_from` copies the
weights and prints what moved; `freeze_transferred_epochs` first trains only the new layers."""),
    ("code", '''settings_x4 = settings + ["scale=4", "data.patch_size=96", f"init_from={RUNS}/x2/model.keras",
                          "freeze_transferred_epochs=1"] + (["epochs=2", "steps_per_epoch=10"] if FAST else [])
model_x4, summary_x4 = train.fit(superres, config_lib.load(superres.Config, None, settings_x4),
                                 os.path.join(RUNS, "x4"), verbose=0)
print(summary_x4)'''),
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

Set `KX_VISION_FAST=1` for a quick run. The style loss needs VGG16's ImageNet weights; offline (or in the
fast setting) this notebook uses random VGG16 weights, which runs the same code but does not transfer a
style worth looking at."""),
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

A painting from `../shared/data/style` when it is there, else one shipped in the package's sample."""),
    ("code", '''from pathlib import Path
from kx_vision.data.images import load_image
from kx_vision.tasks import style as style_task

shared = Path("../../shared/data/style")
candidates = sorted(shared.glob("*.jpg")) if shared.is_dir() else []
style_path = str(candidates[0]) if candidates else os.path.join(style_task.SAMPLE_DIR, "train", "starry_night.jpg")
style_image = load_image(style_path)
show([style_image / 255], [Path(style_path).name], size=3)'''),
    ("md", """## The transformer network

Reflection padding, three stride-1/2 convolutions down, residual blocks, upsampling back, and an output in
[0, 1]; instance or batch normalisation."""),
    ("code", '''from kx_vision.models import StyleTransferNet

StyleTransferNet(num_filters=8 if FAST else 32, num_blocks=1 if FAST else 5).summary(line_length=90, expand_nested=False)'''),
    ("md", """## Train

The `style` task of `python -m kx_vision.train`: content crops of the sample photos, the Johnson loss with
its content / style / total-variation parts shown as metrics."""),
    ("code", '''from kx_vision import config as config_lib
from kx_vision import train

settings = [f"style_image={style_path}"] + (
    ["model.num_filters=8", "model.num_blocks=1", "data.crop_size=64", "loss.style_size=64", "epochs=1",
     "steps_per_epoch=4", "loss.vgg_weights=null"] if FAST else [])
model, summary = train.fit(style_task, config_lib.load(style_task.Config, None, settings),
                           os.path.join(RUNS, "style"), verbose=0)
print(summary)'''),
    ("md", """## Stylise photos"""),
    ("code", '''from kx_vision.data.superres import load_folders

photos = load_folders([os.path.join(style_task.SAMPLE_DIR, "val")])[:2]
inputs = [p[:256, :256].astype("float32")[None] / 255 for p in photos]
outputs = [model.predict(x, verbose=0)[0] for x in inputs]
show([x[0] for x in inputs] + outputs, ["photo"] * len(inputs) + ["stylised"] * len(outputs))'''),
]

SEGMENTATION = [
    ("md", """# Segmentation with kx_vision: from a naive head to a U-Net

CamVid labels every pixel of street scenes with one of 11 classes (plus "void", ignored). The lesson first
puts a naive upsampling head on a pretrained encoder, then builds a U-Net whose decoder re-uses the encoder's
intermediate activations. Here: masks over frames, both models trained briefly, dice / IoU per class,
progressive resizing, and predictions.

Set `KX_VISION_FAST=1` for a quick run on the 16 sample frames shipped in the package with a small encoder;
without it the notebook uses ResNet50 with ImageNet weights (downloaded once) and CamVid from
`../shared/data/seg/camvid` when present."""),
    ("code", SETUP),
    ("md", """## Frames and masks"""),
    ("code", '''from pathlib import Path
from kx_vision import config as config_lib
from kx_vision.tasks import segmentation as seg_task
from kx_vision.data.masks import find_pairs, load_pairs

camvid = Path("../../shared/data/seg/camvid")
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
    ("md", """## The naive head, then the U-Net

Both train with the same loss (cross-entropy + soft dice, void ignored) and data; only the architecture
changes. The U-Net adds skip connections from every encoder stage (found automatically from the encoder's
layer shapes) and a last cross-connection to the input image."""),
    ("code", '''encoder = (["model.backbone=simple", "model.backbone_weights=null", "model.max_filters=16"] if FAST
           else ["model.backbone=resnet50"])
common = folders + encoder + (["data.image_size=32,48", "data.batch_size=4", "epochs=1", "freeze_backbone_epochs=0"]
                              if FAST else ["data.image_size=180,240", "epochs=12"])
from kx_vision import train

results = {}
for architecture in ("upsample_head", "unet"):
    config = config_lib.load(seg_task.Config, None, common + [f"model.architecture={architecture}"])
    model, results[architecture] = train.fit(seg_task, config, os.path.join(RUNS, architecture), verbose=0)
    print(f"{architecture:14s} mean IoU {results[architecture]['miou']:.3f}  "
          f"pixel accuracy {results[architecture]['pixel_accuracy']:.3f}")'''),
    ("md", """## IoU and dice per class

Keras's `MeanIoU` confusion matrix, void pixels skipped; classes absent from both truth and prediction are
left out of the mean. In the fast setting the models have seen a few batches of tiny images, so these bars
are near zero; run without `KX_VISION_FAST` (or `configs/camvid_unet_resnet50.yaml`) for real figures."""),
    ("code", '''per_class = results["unet"]["per_class_iou"]
names = [n for n, v in per_class.items() if v is not None]
iou = np.array([per_class[n] for n in names])
dice = 2 * iou / (1 + iou)  # per class, dice = 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU)
figure, axis = plt.subplots(figsize=(6, 2.5), dpi=60)
positions = np.arange(len(names))
axis.bar(positions - 0.2, iou, width=0.4, label="IoU")
axis.bar(positions + 0.2, dice, width=0.4, label="dice")
axis.set_xticks(positions, names, rotation=60, fontsize=8)
axis.legend(fontsize=8)
plt.show()'''),
    ("md", """## Progressive resizing

Train small first, then continue at a larger size from the same weights (`init_from`): the U-Net takes any
input size, so every layer transfers."""),
    ("code", '''larger = "data.image_size=64,96" if FAST else "data.image_size=360,480"
config = config_lib.load(seg_task.Config, None, common + ["model.architecture=unet", larger,
                                                          f"init_from={RUNS}/unet/model.keras", "epochs=1"])
model, summary = train.fit(seg_task, config, os.path.join(RUNS, "unet_large"), verbose=0)
print(f"after resizing: mean IoU {summary['miou']:.3f}")'''),
    ("md", """## Predictions"""),
    ("code", '''from kx_vision.models.loading import load_model

model = load_model(os.path.join(RUNS, "unet_large", "model.keras"))
val_pairs = find_pairs([str(camvid / "val")], [str(camvid / "valannot")])[:2]
val_frames, val_masks = load_pairs(val_pairs, 11, 11)
shown, titles = [], []
for frame, mask in zip(val_frames, val_masks):
    predicted = model.predict(frame[None].astype("float32") / 255, verbose=0)[0].argmax(-1)
    shown += [0.55 * frame / 255 + 0.45 * palette[mask.reshape(frame.shape[:2])],
              0.55 * frame / 255 + 0.45 * palette[predicted]]
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
