# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Segmentation with kx_vision: from a naive head to a U-Net
#
# CamVid labels every pixel of street scenes with one of 11 classes (plus "void", ignored). The lesson first
# puts a naive upsampling head on a pretrained encoder, then builds a U-Net whose decoder re-uses the encoder's
# intermediate activations. Here: masks over frames, the naive head, the lesson's U-Net and the library's
# default U-Net trained briefly, dice / IoU per class, progressive resizing, and predictions.
#
# Set `KX_VISION_FAST=1` for a quick run on the 16 sample frames shipped in the package (12 to train, 4 to
# validate) with a small encoder trained from scratch; without it the notebook uses ResNet50 with ImageNet weights (downloaded once) and CamVid from
# `../shared/data/seg/camvid` when present.

# %%
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "tensorflow": the notebook runs unchanged on either
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FAST = os.environ.get("KX_VISION_FAST") == "1"  # quick version (a few minutes on a 2-core CPU)

import keras
import matplotlib.pyplot as plt
import numpy as np

keras.utils.set_random_seed(0)
print(f"Keras {keras.__version__} on {keras.backend.backend()}; fast setting: {FAST}")


def show(images, titles, size=2.2):
    figure, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), dpi=60)
    for axis, image, title in zip(np.atleast_1d(axes), images, titles):
        axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    plt.show()


# %% [markdown]
# ## Frames and masks

# %%
from pathlib import Path

from kx_vision import config as config_lib
from kx_vision.data.masks import find_pairs, load_pairs
from kx_vision.tasks import segmentation as seg_task

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
print("classes:", ", ".join(seg_task.CAMVID_CLASSES))

# %% [markdown]
# ## The naive head, then two U-Nets
#
# All three train with the same loss, data, steps and learning rate; only the decoder changes. The naive head
# upsamples the encoder's last feature map, 32 times smaller than the image, with transposed convolutions: it
# can only paint blocks of 32 x 32 pixels. A U-Net adds skip connections from every encoder stage (found
# automatically from the encoder's layer shapes). Two decoders: the lesson's `UnetBlock`
# (`model.decoder=lesson`: a transposed convolution up, a 1x1 convolution on the skip, the two concatenated,
# ReLU and batch norm), and the library's default, later fastai's `DynamicUnet` (`model.decoder=fastai`:
# pixel shuffle with ICNR, two 3x3 convolutions per stage, and a last cross-connection to the input image).
#
# The loss is the lesson's: cross-entropy, void pixels ignored (`loss.dice_weight=0`; the library's default adds
# a soft dice term, which helps rare classes over long runs but makes a short run from scratch noisy). In the
# fast setting both models start from scratch on the same small plain encoder (`model.backbone=simple`, no
# pretrained weights) and see the 12 training frames 60 times at 32x48, four frames per step (180 steps).
#
# Each model trains in memory with the task's `Trainer` (`Trainer(task).fit()`, or `.fit(model)` to go on training
# a model): what `python -m kx_vision.train segmentation` runs, without the run folder (checkpoints, resumable
# backup, logs) it writes after every epoch.

# %%
import logging

from kx_vision.training.trainer import Trainer

logging.getLogger("kx_vision").setLevel(logging.WARNING)  # the trainer's reports: the tables below sum them up


def train_briefly(settings, model=None):
    """Train a new model (or go on training `model`) with the segmentation task's config `settings`: `(model, scores)`."""
    trainer = Trainer(seg_task.Task(config_lib.load(seg_task.Config, None, settings)), verbose=0)
    trainer.fit(model)
    return trainer.model, trainer.summary


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
    print(f"{name:<15s} {scores['miou']:8.3f}  {scores['pixel_accuracy']:14.3f}  {models[name].count_params():10,d}")

# %% [markdown]
# The first validation frame at the training size (enlarged 4x), its truth, and each model's prediction
# with the share of its labelled pixels it gets right.

# %%
from IPython.display import Image as PNG
from PIL import Image

from kx_vision.inference import pictures

val_pairs = find_pairs([str(camvid / "val")], [str(camvid / "valannot")])
palette8 = np.round(palette * 255).astype(np.uint8)


def val_frames_at(height, width, count):
    """The first `count` validation frames (floats in [0, 1]) and their masks, resized to `height` x `width`."""
    frames, masks = load_pairs(val_pairs[:count], 11, 11)
    return ([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR), "float32") / 255 for f in frames],
            [np.asarray(Image.fromarray(m.reshape(m.shape[:2])).resize((width, height), Image.NEAREST)) for m in masks])


(frame,), (truth,) = val_frames_at(*config_lib.load(seg_task.Config, None, small).data.image_size, 1)
panels, captions = [frame, pictures.overlay(frame, truth, 0.45, 11, palette8)], ["frame", "truth"]
labelled = truth != 11  # void pixels are not scored
for name, model in models.items():
    predicted = pictures.class_ids(model.predict(frame[None], verbose=0)[0])
    panels.append(pictures.overlay(frame, predicted, 0.45, None, palette8))
    captions.append(f"{name}: {100 * np.mean(predicted[labelled] == truth[labelled]):.0f}% right")
PNG(pictures.png_bytes(pictures.grid([[pictures.zoom(pictures.to_uint8(p), 4) for p in panels]], [captions])))

# %% [markdown]
# ## IoU and dice per class
#
# Keras's `MeanIoU` confusion matrix, void pixels skipped; classes absent from both truth and prediction are
# left out of the mean. The fast models have seen 12 thumbnails for a minute: the large classes (sky, road,
# building, trees) come first and the small ones (poles, signs, pedestrians) stay near zero; run without
# `KX_VISION_FAST` (or `configs/camvid_unet_resnet50.yaml`) for real figures.

# %%
names = [n for n in seg_task.CAMVID_CLASSES if results["unet (fastai)"]["per_class_iou"][n] is not None]
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
plt.show()

# %% [markdown]
# ## Progressive resizing
#
# Train small first, then continue at a larger size with the same weights: the U-Net (the default decoder,
# trained above) takes any input size, so
# every layer carries over (from the command line: `--set init_from=runs/small/model.keras`, which copies the
# weights by layer name). What the small run learnt is a head start: trained for the same few epochs at the
# larger size, the U-Net that starts from the small one is far ahead of one that starts from scratch.

# %%
larger = common + ["model.architecture=unet"] + (
    ["data.image_size=64,96", "data.batch_size=2", "epochs=8", "optimizer.learning_rate=1e-3"] if FAST
    else ["data.image_size=360,480", "epochs=4", "optimizer.learning_rate=3e-4"])
config = config_lib.load(seg_task.Config, None, larger)
size, small_size = config.data.image_size, config_lib.load(seg_task.Config, None, small).data.image_size
resized, resized_scores = train_briefly(larger, model=models["unet (fastai)"])
_, scratch_scores = train_briefly(larger)
for start, scores in ((f"from the {small_size[0]}x{small_size[1]} U-Net", resized_scores), ("from scratch", scratch_scores)):
    print(f"U-Net at {size[0]}x{size[1]}, {config.epochs} epochs {start}: mean IoU {scores['miou']:.3f}")

# %% [markdown]
# ## Predictions
#
# Validation frames at the size the model was last trained on, the truth and the U-Net's prediction over them.

# %%
shown, titles = [], []
for frame, mask in zip(*val_frames_at(*size, 2)):
    predicted = resized.predict(frame[None], verbose=0)[0].argmax(-1)
    shown += [0.55 * frame + 0.45 * palette[mask], 0.55 * frame + 0.45 * palette[predicted]]
    titles += ["truth", "prediction"]
show(shown, titles, size=3)
