"""The PyTorch peer of a kx_vision EDSR run (issue 31, item 7): the same network, trained with the same recipe
in plain PyTorch on the CPU for a wall-clock budget, saved as a kx_vision `.keras` model so that both
frameworks' results are scored by one command (`kx-vision evaluate superres --model M --data SET5`).

python -m benchmarks.torch_peer --budget-s 900 --out runs/peer/torch.keras [--log runs/peer/peer.jsonl]

Needs PyTorch (`pip install -e '.[bench]'`; a CPU-only wheel is enough), and kx_vision with its Keras backend
(TensorFlow: the degradation is then the same `tf.image.resize` as in kx_vision's training pipeline).

Adapted from `../shared/bench/torch_edsr_train.py` (plain PyTorch, CPU, `torch.set_num_threads`, the learning
rate following the clock), changed to be the recipe of `configs/presets/edsr_8x32_x2.yaml`:

- network: `EDSR` below mirrors `kx_vision.models.EDSR` layer for layer (mean shift by the DIV2K RGB mean, head
  conv, residual blocks `x + 0.1 * conv(relu(conv(x)))`, body conv + long skip, one conv + pixel shuffle per x2
  stage, tail conv, mean added back), so `torch_to_keras` converts it exactly; by default its initial weights
  are those of a freshly built `kx_vision.models.EDSR` (Glorot-uniform kernels, zero biases, ICNR upsampling:
  `--init keras`), `--init torch` keeps PyTorch's own initialisation;
- data: the 291 images (T91 + BSD200) decoded as kx_vision decodes them, images smaller than the HR patch
  skipped (`data.skip_small`); each image's LR made once, by kx_vision's degradation
  (`kx_vision.data.transforms.bicubic_downscale`: antialiased bicubic, rounded to 8 bits; on TensorFlow the
  same `tf.image.resize` that kx_vision's tf.data pipeline calls on its patches); batches of `--batch`
  aligned random crops (HR `--patch`, LR `--patch / --scale`), the images visited uniformly, once per pass in
  a shuffled order (as kx_vision's `PatchStream`), each patch given one of the 8 symmetries of
  `kx_vision.data.definitions.dihedral_numpy`. One difference remains: kx_vision degrades each HR patch, this
  script crops the degraded image (the LR patch's border pixels see their neighbours, as at test time);
- loss and optimizer: L1 (mean absolute error), Adam (betas 0.9 / 0.999, epsilon 1e-7 as Keras), the learning
  rate of kx_vision's `time_schedule`: linear warm-up over `--warmup` steps, then cosine from `--lr` to
  1% of it over the fraction of the budget spent;
- clock: as kx_vision's `TimeBudget`, only training steps count (batch making included), and the first step
  (allocation, start-up) is measured apart as `startup_s`.

At the end the weights are converted (`torch_to_keras`) into a `kx_vision.models.EDSR` and saved with
`--out`; one JSON line (steps, train_s, ms/step, threads, torch version) is printed, and appended to `--log`.
"""

import argparse
import math
import os
import sys
import time
import types

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import cpu_device, emit

DEFAULT_DATA = "../shared/data/sr/T91,../shared/data/sr/BSD200"
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # kx_vision.models.edsr.DIV2K_RGB_MEAN (checked by torch_to_keras)


# --- the network ---

class ResidualBlock(nn.Module):
    """`x + residual_scale * conv2(relu(conv1(x)))`: `kx_vision.layers.ResidualBlock`."""

    def __init__(self, num_filters, residual_scale):
        super().__init__()
        self.conv1 = nn.Conv2d(num_filters, num_filters, 3, padding=1)
        self.conv2 = nn.Conv2d(num_filters, num_filters, 3, padding=1)
        self.residual_scale = residual_scale

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x))) * self.residual_scale


class EDSR(nn.Module):
    """`kx_vision.models.EDSR` in PyTorch (NCHW), its layers named as the Keras model's: `head_conv`,
    `blocks[i]` (`block_{i}`), `body_conv`, `upsample[i]` (`upsample_{i}_conv`), `tail_conv`."""

    def __init__(self, scale=2, num_blocks=8, num_filters=32, residual_scale=0.1, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale {scale}: the peer has x2 pixel-shuffle stages only (2, 4 or 8)")
        self.scale, self.num_blocks, self.num_filters = scale, num_blocks, num_filters
        self.residual_scale, self.rgb_mean = residual_scale, tuple(float(m) for m in rgb_mean)
        self.register_buffer("mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        f = num_filters
        self.head_conv = nn.Conv2d(3, f, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(f, residual_scale) for _ in range(num_blocks))
        self.body_conv = nn.Conv2d(f, f, 3, padding=1)
        self.factors = (2,) * int(math.log2(scale))
        self.upsample = nn.ModuleList(nn.Conv2d(f, f * r * r, 3, padding=1) for r in self.factors)
        self.tail_conv = nn.Conv2d(f, 3, 3, padding=1)

    def forward(self, x):
        x = self.head_conv(x - self.mean)
        skip = x
        for block in self.blocks:
            x = block(x)
        x = self.body_conv(x) + skip
        for conv, r in zip(self.upsample, self.factors):
            x = F.pixel_shuffle(conv(x), r)
        return self.tail_conv(x) + self.mean

    def convs(self):
        """`(keras layer path, torch conv, pixel-shuffle factor after it or None)` of every conv, in order."""
        found = [("head_conv", self.head_conv, None)]
        for i, block in enumerate(self.blocks):
            found += [(f"block_{i}/conv1", block.conv1, None), (f"block_{i}/conv2", block.conv2, None)]
        found.append(("body_conv", self.body_conv, None))
        found += [(f"upsample_{i}_conv", conv, r) for i, (conv, r) in enumerate(zip(self.upsample, self.factors))]
        found.append(("tail_conv", self.tail_conv, None))
        return found


# --- conversion ---
# PyTorch's pixel_shuffle takes output channel c at sub-pixel offset (i, j) from input channel c*r*r + i*r + j;
# Keras's depth_to_space (kx_vision.layers.PixelShuffle) from channel (i*r + j)*C + c. The conv before a shuffle
# has its output channels reordered accordingly; every kernel goes OIHW (torch) <-> HWIO (Keras).

def _torch_order_to_keras(array, r):
    """Reorder the leading (output-channel) axis of a torch conv's weight or bias for depth_to_space."""
    sub, rest = r * r, array.shape[1:]
    return array.reshape((array.shape[0] // sub, sub) + rest).swapaxes(0, 1).reshape(array.shape)


def _keras_order_to_torch(array, r):
    sub, rest = r * r, array.shape[1:]
    return array.reshape((sub, array.shape[0] // sub) + rest).swapaxes(0, 1).reshape(array.shape)


def _keras_layer(keras_model, path):
    name, _, sub = path.partition("/")
    layer = keras_model.get_layer(name)
    return getattr(layer, sub) if sub else layer


def _check_same_network(torch_model, keras_model):
    mine = (torch_model.scale, torch_model.num_blocks, torch_model.num_filters, torch_model.residual_scale)
    theirs = (keras_model.scale, keras_model.num_blocks, keras_model.num_filters, keras_model.residual_scale)
    mean = None if keras_model.rgb_mean is None else np.asarray(keras_model.rgb_mean, np.float32)
    if mine != theirs or keras_model.blur or keras_model.num_channels != 3 or mean is None or not np.allclose(
            mean, torch_model.mean.detach().cpu().numpy().ravel()):
        raise ValueError(f"not the same network: torch (scale, blocks, filters, residual_scale) {mine}, mean "
                         f"{torch_model.mean.ravel().tolist()}; keras {theirs}, mean {keras_model.rgb_mean}, "
                         f"blur {keras_model.blur}, channels {keras_model.num_channels}")


def torch_to_keras(torch_model, keras_model):
    """Copy the weights of the torch `EDSR` into the `kx_vision.models.EDSR` `keras_model` (same scale,
    blocks, filters, residual scale and mean, else ValueError); returns `keras_model`."""
    _check_same_network(torch_model, keras_model)
    for path, conv, r in torch_model.convs():
        kernel = conv.weight.detach().cpu().numpy()  # (O, I, kh, kw)
        bias = conv.bias.detach().cpu().numpy()
        if r:
            kernel, bias = _torch_order_to_keras(kernel, r), _torch_order_to_keras(bias, r)
        _keras_layer(keras_model, path).set_weights([kernel.transpose(2, 3, 1, 0), bias])
    return keras_model


def keras_to_torch(keras_model, torch_model):
    """The inverse of `torch_to_keras`: the Keras model's weights into the torch `EDSR`; returns `torch_model`."""
    _check_same_network(torch_model, keras_model)
    with torch.no_grad():
        for path, conv, r in torch_model.convs():
            kernel, bias = (np.asarray(w) for w in _keras_layer(keras_model, path).get_weights())
            kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            if r:
                kernel, bias = _keras_order_to_torch(kernel, r), _keras_order_to_torch(bias, r)
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return torch_model


def keras_edsr(torch_model):
    """A `kx_vision.models.EDSR` with the torch model's architecture and weights."""
    from kx_vision.models import EDSR as KerasEDSR

    keras_model = KerasEDSR(scale=torch_model.scale, num_blocks=torch_model.num_blocks,
                            num_filters=torch_model.num_filters, residual_scale=torch_model.residual_scale,
                            rgb_mean=torch_model.rgb_mean)
    return torch_to_keras(torch_model, keras_model)


# --- data ---

def load_pairs(folders, scale, patch, what="training image"):
    """`[(lr, hr)]` uint8 `(H, W, 3)` arrays: the images of `folders` decoded as kx_vision decodes them (those
    smaller than `patch` skipped), cropped to a multiple of `scale`, their LR made by kx_vision's degradation."""
    from kx_vision.data import transforms
    from kx_vision.data.images import list_images, load_images

    images, _ = load_images(list_images(folders), min_size=patch, what=what, skip_small=True)
    pairs = []
    for image in images:
        hr = transforms.crop_to_multiple(image, scale)
        lr = transforms.bicubic_downscale(hr[None].astype(np.float32) / 255.0, scale)
        lr = np.rint(np.asarray(lr)[0] * 255.0).astype(np.uint8)  # exact: the degradation rounds to 8 bits
        pairs.append((lr, np.ascontiguousarray(hr)))
    return pairs


class PatchSampler:
    """Batches of aligned random crops of `pairs` with a random dihedral symmetry each, as float32 NCHW
    tensors in [0, 1] (channels-last in memory): images visited uniformly, once per pass in a shuffled order."""

    def __init__(self, pairs, scale, patch, batch, seed=0):
        from kx_vision.data.definitions import NUM_DIHEDRAL, dihedral_numpy

        if patch % scale:
            raise ValueError(f"--patch {patch} must be a multiple of --scale {scale}")
        if not pairs:
            raise ValueError("no training image")
        self.pairs, self.scale, self.lr_patch, self.batch = pairs, scale, patch // scale, batch
        self.rng = np.random.default_rng(seed)
        self.order, self.position = self.rng.permutation(len(pairs)), 0
        self._dihedral, self._symmetries = dihedral_numpy, NUM_DIHEDRAL

    def _next_image(self):
        if self.position == len(self.order):
            self.order, self.position = self.rng.permutation(len(self.pairs)), 0
        self.position += 1
        return self.pairs[self.order[self.position - 1]]

    def __call__(self):
        p, s, rng = self.lr_patch, self.scale, self.rng
        xs, ys = [], []
        for _ in range(self.batch):
            lr, hr = self._next_image()
            top, left = rng.integers(lr.shape[0] - p + 1), rng.integers(lr.shape[1] - p + 1)
            k = int(rng.integers(self._symmetries))
            xs.append(self._dihedral(lr[top:top + p, left:left + p], k))
            ys.append(self._dihedral(hr[s * top:s * (top + p), s * left:s * (left + p)], k))
        # NHWC uint8 -> NCHW views whose memory stays channels-last, then float in [0, 1]
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.from_numpy(np.stack(ys)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, y


def cosine_schedule(learning_rate, warmup_steps):
    """kx_vision's `time_schedule` cosine: `rate(fraction of the budget spent, steps taken)`."""
    try:
        from kx_vision.training.optimizers import time_schedule
    except ImportError:  # where it still lives in the trainer
        from kx_vision.training.trainer import time_schedule

    optimizer = types.SimpleNamespace(learning_rate=learning_rate, schedule="cosine", warmup_steps=warmup_steps)
    return time_schedule(types.SimpleNamespace(optimizer=optimizer))


# --- training ---

def train(model, sample, budget_s, schedule, log_every=1000, compile_model=False):
    """Train `model` on `sample()` batches for `budget_s` seconds of training steps; returns the record."""
    opt = torch.optim.Adam(model.parameters(), lr=schedule(0.0, 0), betas=(0.9, 0.999), eps=1e-7)
    step_model = torch.compile(model) if compile_model else model
    model.train()

    def step(rate):
        for group in opt.param_groups:
            group["lr"] = rate
        x, y = sample()
        opt.zero_grad(set_to_none=True)
        loss = F.l1_loss(step_model(x), y)
        loss.backward()
        opt.step()
        return loss

    spent = startup = 0.0
    steps = timed = 0
    loss = None
    while spent < budget_s:
        start = time.perf_counter()
        loss = step(schedule(min(spent / budget_s, 1.0), steps))
        elapsed = time.perf_counter() - start
        if steps == 0:
            startup = elapsed
        else:
            spent += elapsed
            timed += 1
        steps += 1
        if log_every and steps % log_every == 0:
            print(f"step {steps} t={spent:.0f}s loss={loss.item():.4f}", flush=True)
    model.eval()
    return {"steps": steps, "train_s": round(spent, 3), "ms_per_step": round(1000 * spent / max(timed, 1), 3),
            "startup_s": round(startup, 3), "final_loss": None if loss is None else round(float(loss.item()), 5)}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.torch_peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help=f"training image folders, comma-separated ({DEFAULT_DATA})")
    p.add_argument("--budget-s", type=float, default=900, help="seconds of training steps (900)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--scale", type=int, default=2, choices=(2, 4, 8))
    p.add_argument("--res-scale", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="side of the HR patches (48; LR: patch / scale)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--warmup", type=int, default=500, help="linear warm-up steps (500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("keras", "torch"), default="keras",
                   help="initial weights: a fresh kx_vision EDSR's (keras, default) or PyTorch's own")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log-every", type=int, default=1000, help="print the loss every N steps (0: never)")
    p.add_argument("--out", default=None, help="write the trained model here as a kx_vision .keras file")
    p.add_argument("--log", default=None, help="also append the JSON line to this file")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.out and not a.out.endswith(".keras"):
        sys.exit(f"--out {a.out}: the file name must end in .keras")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    import keras

    from kx_vision.fileio import atomic_write

    t0 = time.perf_counter()
    pairs = load_pairs([d for d in a.data.split(",") if d], a.scale, a.patch)
    print(f"loaded and degraded {len(pairs)} training images in {time.perf_counter() - t0:.1f}s", flush=True)
    model = EDSR(a.scale, a.blocks, a.filters, a.res_scale)
    if a.init == "keras":
        keras.utils.set_random_seed(a.seed)
        from kx_vision.models import EDSR as KerasEDSR

        keras_to_torch(KerasEDSR(scale=a.scale, num_blocks=a.blocks, num_filters=a.filters,
                                 residual_scale=a.res_scale), model)
    model = model.to(memory_format=torch.channels_last)
    sample = PatchSampler(pairs, a.scale, a.patch, a.batch, seed=a.seed)
    record = train(model, sample, a.budget_s, cosine_schedule(a.lr, a.warmup), a.log_every, a.compile)
    if a.out:
        atomic_write(a.out, keras_edsr(model).save)
    record = {"impl": "torch-peer", "device": cpu_device(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "budget_s": a.budget_s, **record, "blocks": a.blocks,
              "filters": a.filters, "scale": a.scale, "batch": a.batch, "patch_hr": a.patch, "lr": a.lr,
              "warmup": a.warmup, "init": a.init, "compile": a.compile, "images": len(pairs),
              "out": a.out and os.path.abspath(a.out), "date": time.strftime("%Y-%m-%d")}
    emit(record, a.log)
    return record


if __name__ == "__main__":
    main()
