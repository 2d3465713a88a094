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
# # Super-resolution with kx_vision
#
# Lesson 14 of fast.ai's 2018 course turns a low-resolution photo into a sharper one with a residual network
# (EDSR, without batch norm), sub-pixel upsampling and, later, a perceptual loss. Here we do the same with
# `kx_vision`: look at the data and its paired augmentation, see why the upsampling layer is initialised with
# ICNR, train, compare against bicubic interpolation, compare training losses (MSE, L1 and, where VGG16's
# weights are at hand, the feature loss), grow the x2 model into a x4 one, and export it.
#
# Set `KX_VISION_FAST=1` for a quick run (a tiny model trained for about a minute on a CPU, still better
# than bicubic); without it the notebook trains the defaults of `python -m kx_vision.train superres`.

# %%
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "tensorflow": the notebook runs unchanged on either
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FAST = os.environ.get("KX_VISION_FAST") == "1"  # quick version (a few minutes on a 2-core CPU)

import tempfile

import keras
import matplotlib.pyplot as plt
import numpy as np

keras.utils.set_random_seed(0)
RUNS = tempfile.mkdtemp(prefix="kx_vision_")  # the files this notebook writes: a saved model, an export
print(f"Keras {keras.__version__} on {keras.backend.backend()}; fast setting: {FAST}")


def show(images, titles, size=2.2):
    figure, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), dpi=60)
    for axis, image, title in zip(np.atleast_1d(axes), images, titles):
        axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    plt.show()


# %% [markdown]
# ## Data: random patches, the same transform on both sides
#
# Training pairs are made on the fly: a random HR patch of a random image, one of the 8 symmetries of the
# square (the *dihedral* group: quarter turns and a flip), then the LR input by bicubic downscaling. The
# transform is applied to the HR patch before degradation, so input and target always match.

# %%
from kx_vision.data import SAMPLE_DIR, transforms
from kx_vision.data.superres import load_folders, validation_pairs
from kx_vision.tasks import superres

images = load_folders([os.path.join(SAMPLE_DIR, "train")], min_size=48)
crop = images[0][100:164, 150:214].astype("float32")[None] / 255
variants = [np.asarray(transforms.dihedral(crop, k))[0] for k in range(8)]
show(variants, [f"k={k}" for k in range(8)], size=1.4)

# %%
from kx_vision.data.arrays import SuperResPatches

patches = SuperResPatches(images, scale=2, patch_size=48, batch_size=4, steps_per_epoch=1)
lr, hr = patches[0]
show([lr[0], hr[0]], [f"LR input {lr.shape[1:3]}", f"HR target {hr.shape[1:3]}"])

# %% [markdown]
# ## Why ICNR
#
# A sub-pixel convolution makes `scale**2` channels per output channel and `PixelShuffle` (Keras's
# `depth_to_space`) arranges them into `scale x scale` blocks. With an ordinary random initialisation the
# channels of a block differ, and the output starts as a checkerboard. ICNR initialises the kernel so that
# every block is constant: the layer starts out as nearest-neighbour upsampling. (Keras's pixel order is
# depth-column-row, so ICNR *tiles* its base kernel across the groups.)

# %%
from kx_vision.layers import ICNR, PixelShuffle


def upsample_once(initializer, image):
    conv = keras.layers.Conv2D(3 * 4, 3, padding="same", kernel_initializer=initializer, use_bias=False)
    return np.asarray(PixelShuffle(2)(conv(image)))[0]

smooth = crop[:, :24, :24]
plain = upsample_once(keras.initializers.HeNormal(seed=1), smooth)
icnr = upsample_once(ICNR(2, initializer=keras.initializers.HeNormal(seed=1)), smooth)


def normalise(x):
    return (x - x.min()) / (x.max() - x.min())


show([smooth[0], normalise(plain), normalise(icnr)], ["input", "plain init: checkerboard", "ICNR: smooth blocks"])
blocks = icnr.reshape(24, 2, 24, 2, 3)
print("largest difference inside a 2x2 block with ICNR:", float(np.ptp(blocks, axis=(1, 3)).max()))

# %% [markdown]
# ## Train
#
# `Trainer(task)` trains the task's model in memory and keeps it in `.model`; `python -m kx_vision.train superres`
# runs the same Trainer into a run folder, with a resumable backup, atomic checkpoints and logs. The config is
# the same typed object the command line fills, and `settings` are what `--set` takes.
#
# The fast setting is small but not wrong: a tiny EDSR (2 residual blocks of 16 channels) sees many small
# patches (1,000 steps of 16 patches of 32 px) at a slightly higher learning rate. The model has no bicubic
# path inside: it learns the upsampling itself, which takes a few hundred steps before it passes bicubic.

# %%
from kx_vision import config as config_lib
from kx_vision.training.trainer import Trainer


def train(settings, task=superres.Task):
    """A model of `task` trained in memory with the config `settings` (what `--set` takes)."""
    trainer = Trainer(task(config_lib.load(task.Config, None, settings)), verbose=0)
    trainer.fit()
    return trainer.model


settings = (["model.num_blocks=2", "model.num_filters=16", "data.batch_size=16", "optimizer.learning_rate=2e-3",
             "optimizer.warmup_steps=20"] if FAST else [])
settings_x2 = settings + (["data.patch_size=32", "epochs=2", "steps_per_epoch=500"] if FAST else [])
model_x2 = train(settings_x2)  # loss.name=l1, the task's default

# %% [markdown]
# ## Look at the result
#
# Bicubic interpolation, the model and the ground truth on a validation image, with their Y-PSNR (the
# luma PSNR papers report, border of `scale` pixels shaved, predictions rounded to 8 bits). Even the fast
# model beats bicubic on the validation photos, which it never saw; the default run (8 epochs of a larger
# model) gains more, and the recipes in `configs/` are the ones meant to reach published figures.

# %%
from kx_vision.metrics import psnr

val_pairs = validation_pairs(load_folders(superres.Config().data.val), 2)  # whole images, HR cropped to a multiple of 2
model_psnr, bicubic_psnr = superres.score(model_x2, val_pairs, 2)
print(f"x2 Y-PSNR on {len(val_pairs)} validation images: model {model_psnr:.2f} dB, bicubic {bicubic_psnr:.2f} dB "
      f"({model_psnr - bicubic_psnr:+.2f} dB)")
val_lr, val_hr = val_pairs[0]
bicubic = np.asarray(transforms.bicubic_upscale(val_lr, 2))
predicted = model_x2.predict(val_lr, verbose=0)
scores = [float(psnr(val_hr, x, shave=2, quantize=True)[0]) for x in (bicubic, predicted)]  # this image
window = (slice(None), slice(60, 160), slice(60, 160))
show([bicubic[window][0], predicted[window][0], val_hr[window][0]],
     [f"bicubic {scores[0]:.2f} dB", f"model {scores[1]:.2f} dB", "ground truth"], size=2.6)

# %% [markdown]
# ## Which loss: MSE, L1 or VGG16 features
#
# The lesson's question: what should the model minimise? MSE is the error PSNR measures; L1, the task's
# default (`loss.name=l1`), is EDSR's choice; the lesson's feature (perceptual) loss compares VGG16 activations
# of the prediction and the truth instead of their pixels (`loss.name=perceptual`). The x2 model above trained
# with L1. Below, the same tiny model trains on the same data for the same steps from the same seed with MSE,
# and with the feature loss where VGG16's ImageNet weights are already on this machine (this notebook does not
# download them).

# %%
VGG16_FILE = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models",
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")  # where keras.applications keeps it
compared = ["mse", "l1"] + (["perceptual"] if os.path.isfile(VGG16_FILE) else [])
if "perceptual" in compared:
    print(f"VGG16 ImageNet weights: found in {VGG16_FILE}; the feature loss trains too")
else:
    print(f"No feature-loss model: VGG16's ImageNet weights are not in {VGG16_FILE}; comparing MSE and L1")

# %%
loss_models = {"l1": model_x2}  # trained above
for name in compared:
    if name not in loss_models:
        extra = [f"loss.name={name}"] + ([f"loss.vgg_weights={VGG16_FILE}"] if name == "perceptual" else [])
        loss_models[name] = train(settings_x2 + extra)

# %% [markdown]
# Mean Y-PSNR and Y-SSIM over the validation images (2-pixel border shaved, outputs rounded to 8 bits,
# as above), then the central 80 x 80 pixels of one of them, enlarged 2x, with the scores of that crop. PSNR
# and SSIM reward the average pixel; look at the edges and textures as well.

# %%
from IPython.display import Image as PNG

from kx_vision.inference import pictures
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

truth_crop = pictures.center_crop(truths[0][0], 80, 80)  # the first validation image
panels, captions = [], []
for name, images in upscaled.items():
    crop = pictures.center_crop(images[0][0], 80, 80)
    crop_psnr, crop_ssim = quality(truth_crop[None], crop[None])
    panels.append(crop)
    captions.append(f"{name} {crop_psnr:.2f} dB {crop_ssim:.3f}")
panels, captions = panels + [truth_crop], captions + ["ground truth"]
PNG(pictures.png_bytes(pictures.grid([[pictures.zoom(pictures.to_uint8(p), 2) for p in panels]], [captions])))

# %% [markdown]
# ## Grow x2 into x4
#
# The lesson's progressive resizing: a x4 model reuses every layer of the x2 one that it shares by name
# (head, residual body, first upsampling stage) and adds a second upsampling stage. `init_from` copies the
# weights of a saved model and prints what moved; `freeze_transferred_epochs` first trains only the new layers.

# %%
model_x2.save(os.path.join(RUNS, "x2.keras"))
settings_x4 = settings + ["scale=4", f"init_from={RUNS}/x2.keras", "freeze_transferred_epochs=1"] + (
    ["data.patch_size=48", "epochs=2", "steps_per_epoch=300"] if FAST else ["data.patch_size=96"])
model_x4 = train(settings_x4)
val_pairs_x4 = validation_pairs(load_folders(superres.Config().data.val), 4)
model_psnr, bicubic_psnr = superres.score(model_x4, val_pairs_x4, 4)
print(f"x4 Y-PSNR on {len(val_pairs_x4)} validation images: model {model_psnr:.2f} dB, bicubic {bicubic_psnr:.2f} dB "
      f"({model_psnr - bicubic_psnr:+.2f} dB)")

# %% [markdown]
# ## Export for serving
#
# A SavedModel with a float endpoint (`serve`) and a uint8 one (`serve_uint8`), usable from TensorFlow
# Serving or `tf.saved_model.load` without Keras (TensorFlow must be installed to export).

# %%
import importlib.util

if importlib.util.find_spec("tensorflow"):
    from kx_vision.export import export_model

    path = export_model(model_x4, os.path.join(RUNS, "exported_x4"))
    print("exported to", path, "-", sorted(os.listdir(path)))
else:
    print("TensorFlow is not installed here: skipping the export")
