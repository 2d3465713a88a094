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
# # Fast neural style transfer with kx_vision
#
# Johnson et al. (2016) train a feed-forward network to paint any photo in one style, with a loss made of
# VGG16 features: *content* (activations of the photo) and *style* (Gram matrices of activations of the
# painting). Here: what a Gram matrix measures, the transformer network, a short training run on a painting,
# and stylised photos.
#
# Set `KX_VISION_FAST=1` for a quick run. The style loss needs VGG16's ImageNet weights (downloaded once
# into `~/.keras/models/`, or copied there by hand offline); random VGG16 features would train on noise, so
# without the weights this notebook says so and skips the training and stylising cells.

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
# ## Gram matrices
#
# The Gram matrix of a feature map `(H, W, C)` is the `C x C` matrix of channel co-activations, averaged
# over positions: it keeps *which features occur together* and forgets *where*. Shuffling an image's pixels
# changes its content completely and its Gram matrix not at all.

# %%
from kx_vision.losses import gram_matrix

rng = np.random.default_rng(0)
features = rng.random((1, 16, 16, 8)).astype("float32")
shuffled = features.reshape(1, 256, 8)[:, rng.permutation(256)].reshape(1, 16, 16, 8)
print("content difference:", float(np.abs(features - shuffled).mean()))
print("Gram difference:   ", float(np.abs(np.asarray(gram_matrix(features)) - np.asarray(gram_matrix(shuffled))).max()))

# %% [markdown]
# ## The style
#
# A painting from `../shared/data/style` (the repository's data folder, or `KX_VISION_SHARED_DATA`) when it is
# there; else a photo shipped in the package's sample, the Hubble deep field, whose colours and speckle make a
# passable texture.

# %%
from pathlib import Path

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
show([style_image / 255], [Path(style_path).name], size=3)

# %% [markdown]
# ## The transformer network
#
# Reflection padding, three stride-1/2 convolutions down, residual blocks, upsampling back, and an output in
# [0, 1]; instance or batch normalisation.

# %%
from kx_vision.models import StyleTransferNet

StyleTransferNet(num_filters=16 if FAST else 32, num_blocks=3 if FAST else 5).summary(line_length=90, expand_nested=False)

# %% [markdown]
# ## Train
#
# The `style` task of `python -m kx_vision.train`, trained in memory by its `Trainer`: content crops of the sample photos, the Johnson loss with
# its content / style / total-variation parts shown as metrics. Its features come from VGG16 with ImageNet
# weights; the library never substitutes random ones, and neither does this notebook. The fast setting trains
# a small network for 60 steps on 64 px crops (about a minute on a CPU): expect the painting's colours and a
# first texture, not a finished style; the default run trains 400 steps of a full-size network.

# %%
import contextlib
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
          "copy vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 into ~/.keras/models/ to run them)")

# %%
from kx_vision import config as config_lib
from kx_vision.training.trainer import Trainer

if HAVE_VGG16:
    settings = [f"style_image={style_path}"] + (
        ["model.num_filters=16", "model.num_blocks=3", "data.crop_size=64", "loss.style_size=128", "epochs=1",
         "steps_per_epoch=60", "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=10"] if FAST else [])
    trainer = Trainer(style_task.Task(config_lib.load(style_task.Config, None, settings)), verbose=0)
    trainer.fit()  # in memory: `python -m kx_vision.train style --set ...` trains the same into a run folder
    model = trainer.model

# %% [markdown]
# ## Stylise photos

# %%
from kx_vision.data.superres import load_folders

if HAVE_VGG16:
    photos = load_folders([os.path.join(SAMPLE_DIR, "val")])[:2]
    inputs = [p[:256, :256].astype("float32")[None] / 255 for p in photos]
    outputs = [model.predict(x, verbose=0)[0] for x in inputs]
    show([x[0] for x in inputs] + outputs, ["photo"] * len(inputs) + ["stylised"] * len(outputs))
