"""Running a super-resolution model on whole images: self-ensemble and tiled inference.

Both take `predict`, any callable mapping a float32 batch `(N, h, w, 3)` in [0, 1] to
`(N, h * scale, w * scale, 3)` (`as_predict_fn(model)`, or `bicubic`), so they work for every backend.

Images: the functions here take one image `(H, W, 3)`, float RGB in [0, 1] or uint8 (divided by 255); the
shape is checked before any model sees it. Model calls themselves take float batches only (see
`kx_vision.models.base`).
"""

import numpy as np
from keras import ops

from kx_vision.data import definitions, transforms
from kx_vision.errors import ArgumentError, KxVisionError

# What each command takes, in the words of its error messages.
EXPECTED = {
    "superres": "a super-resolution model (EDSR, a preset, or 'bicubic')",
    "segmentation": "a segmentation model (UNet, UpsampleHeadNet, ...)",
    "style": "a style-transfer network (StyleTransferNet)",
}


def model_task(model):
    """'superres', 'segmentation' or 'style' for kx_vision's models; None for any other Keras model."""
    from kx_vision.models import EDSR, StyleTransferNet

    if isinstance(model, EDSR):
        return "superres"
    if isinstance(model, StyleTransferNet):
        return "style"
    if type(model).__module__.startswith("kx_vision.") and hasattr(model, "num_classes"):
        return "segmentation"  # UNet, UpsampleHeadNet, and any later kx_vision segmentation model
    return None


def describe_model(model):
    """What a model is, for messages: "a x2 super-resolution model (EDSR)"."""
    name = type(model).__name__
    task = model_task(model)
    if task == "superres":
        return f"a x{model.scale} super-resolution model ({name})"
    if task == "segmentation":
        classes = "binary" if model.num_classes == 1 else f"{model.num_classes} classes"
        return f"a segmentation model ({name}, {classes})"
    if task == "style":
        return f"a style-transfer network ({name})"
    return f"a Keras model of class {name}"


def check_task(model, path, task, command=None):
    """Refuse, in one message naming the file, a kx_vision model of another task than `task`
    (a U-Net given to `predict superres`); `command` names the command in the message. Other Keras
    models pass: their outputs are checked as they come (`checked_output`)."""
    kind = model_task(model)
    if kind is not None and kind != task:
        wanted = f"`{command}` expects" if command else "expected:"
        raise KxVisionError(f"{path} is {describe_model(model)}; {wanted} {EXPECTED[task]}")
    return model


def checked_output(predict, path, task, scale=1, channels=3):
    """`predict` that checks each output's shape against `task`'s: `(N, h * scale, w * scale, 3)`
    for an image, `(N, h, w, channels)` for class probabilities (`channels=None`: any number); any
    other shape raises one message naming the model file instead of failing later in NumPy."""

    def checked(batch):
        out = np.asarray(predict(batch))
        n, h, w = batch.shape[:3]
        want = (n, h * scale, w * scale, channels or (out.shape[-1] if out.ndim == 4 else "C"))
        if out.shape != want:
            what = {"superres": f"a x{scale} super-resolution model", "style": "a style-transfer network",
                    "segmentation": "a segmentation model" + (f" of {channels} classes" if channels else "")}[task]
            raise KxVisionError(f"{path} returned an output of shape {out.shape} for an input of shape "
                                f"{tuple(batch.shape)}; {what} returns {want}")
        return out

    return checked


def check_image(image, owner="image"):
    """`image` as a float32 array `(H, W, 3)` in [0, 1]: float values as they are, uint8 divided by 255.
    Anything else (a batch, another channel count, other integers) raises `ArgumentError`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (a batch: pass its images one by one)" if image.ndim == 4 else ""
        raise ArgumentError(f"{owner} must be one RGB image (H, W, 3); got shape {image.shape}{hint}", [owner])
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ArgumentError(f"{owner} must be float RGB in [0, 1] or uint8; got {image.dtype}", [owner])
    return image.astype(np.float32)


def as_predict_fn(model):
    """A NumPy-in, NumPy-out callable for a Keras model (eager call: no retracing per image size). The
    batch's shape is checked first: `(N, H, W, C)` float; uint8 is divided by 255."""

    def predict(batch):
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ArgumentError(f"a batch of images (N, H, W, C) is needed; got shape {batch.shape}")
        batch = batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch.astype(np.float32)
        return ops.convert_to_numpy(model(ops.convert_to_tensor(batch, "float32"), training=False))

    return predict


def bicubic(scale):
    """The classic baseline as a predict function: bicubic upscaling by `scale`."""

    def predict(batch):
        return ops.convert_to_numpy(transforms.bicubic_upscale(batch, scale))

    return predict


def inverse_dihedral_index(k):
    """Index of the inverse of `transforms.dihedral(., k)`: rotations invert to the opposite
    rotation; the four reflections (k >= 4) are their own inverses. Read off the one definition of the
    symmetries (`kx_vision.data.definitions.inverse_dihedral`)."""
    return definitions.inverse_dihedral(k)


def self_ensemble(predict):
    """The x8 geometric self-ensemble (EDSR+, Lim et al. 2017): predict each of the 8 dihedral
    transforms of the input, undo the transform on each output, and average."""

    def ensembled(batch):
        batch = np.asarray(batch, np.float32)
        total = None
        for k in range(definitions.NUM_DIHEDRAL):
            out = predict(ops.convert_to_numpy(transforms.dihedral(batch, k)))
            out = ops.convert_to_numpy(transforms.dihedral(out, inverse_dihedral_index(k)))
            total = out.astype(np.float64) if total is None else total + out
        return (total / definitions.NUM_DIHEDRAL).astype(np.float32)

    return ensembled


def _ramp(length, overlap, at_start, at_end):
    """Blending weights along one axis of a tile of `length` LR pixels.

    Next to a seam (not at the image border), the first `overlap // 4` pixels get weight 0: they
    are left to the neighbouring tile, which sees more context there. The weight then rises
    linearly over the middle half of the overlap, so seams blend smoothly. A tiled prediction
    equals the untiled one exactly when `overlap // 4` covers the model's receptive-field radius.
    """
    weights = np.ones(length, np.float64)
    if overlap <= 0:
        return weights
    dead, rise = overlap // 4, max(overlap - 2 * (overlap // 4), 1)
    ramp = np.concatenate([np.zeros(dead), (np.arange(rise) + 0.5) / rise])[:length]
    if not at_start:
        weights[: len(ramp)] = np.minimum(weights[: len(ramp)], ramp)
    if not at_end:
        weights[length - len(ramp) :] = np.minimum(weights[length - len(ramp) :], ramp[::-1])
    return weights


def _starts(size, tile, overlap):
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def to_uint8(values):
    """8-bit pixels from float values in [0, 1] (clipped), rounded in float64 as every writer here does."""
    return np.round(np.clip(np.asarray(values, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def predict_tiled(predict, image, scale, tile=256, overlap=32, dtype="uint8"):
    """Super-resolve one `(H, W, 3)` image (float in [0, 1], or uint8) tile by tile; returns `(H*s, W*s, 3)`
    uint8 (rounded, as saved) or, with `dtype="float32"`, the blended values clipped to [0, 1]. A `predict`
    whose outputs are not `scale` times its inputs raises `ArgumentError` naming `scale`.

    Tiles of `tile` x `tile` LR pixels overlap by `overlap` pixels and are blended (see `_ramp`).
    Tiles are processed one row of tiles at a time and each finished band of output rows is
    rounded into the uint8 result, so memory beyond the output image is bounded by one band of
    `tile * scale` rows, whatever the image size.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ArgumentError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}", ["tile", "overlap"])
    if dtype not in ("uint8", "float32"):
        raise ArgumentError(f"dtype must be 'uint8' or 'float32', got dtype={dtype!r}", ["dtype"])
    image = check_image(image)
    height, width = image.shape[:2]
    out = np.zeros((height * scale, width * scale, 3), dtype)
    rows, cols = _starts(height, tile, overlap), _starts(width, tile, overlap)
    # Float accumulators for the band of output rows not yet finished.
    band_top = 0
    acc = np.zeros((0, width * scale, 3), np.float64)
    weight = np.zeros((0, width * scale, 1), np.float64)
    for r, top in enumerate(rows):
        th = min(tile, height - top)
        wy = np.repeat(_ramp(th, overlap, top == 0, top + th >= height), scale)
        need = (top + th) * scale - band_top
        if need > acc.shape[0]:
            grow = need - acc.shape[0]
            acc = np.concatenate([acc, np.zeros((grow, width * scale, 3))])
            weight = np.concatenate([weight, np.zeros((grow, width * scale, 1))])
        for left in cols:
            tw = min(tile, width - left)
            wx = np.repeat(_ramp(tw, overlap, left == 0, left + tw >= width), scale)
            patch = image[None, top : top + th, left : left + tw].astype(np.float32)
            sr = _checked(predict(patch), patch, scale)
            w = (wy[:, None] * wx[None, :])[..., None]
            y0 = top * scale - band_top
            x0 = left * scale
            acc[y0 : y0 + th * scale, x0 : x0 + tw * scale] += sr * w
            weight[y0 : y0 + th * scale, x0 : x0 + tw * scale] += w
        # Rows above the next tile row's start receive no more contributions: finish them.
        done = (rows[r + 1] * scale if r + 1 < len(rows) else height * scale) - band_top
        values = acc[:done] / np.maximum(weight[:done], 1e-12)
        out[band_top : band_top + done] = to_uint8(values) if dtype == "uint8" else np.clip(values, 0.0, 1.0)
        acc, weight = acc[done:], weight[done:]
        band_top += done
    return out


def _checked(output, batch, scale):
    """The first image of `output`, as float64, after checking it is `batch` upscaled by `scale`."""
    output = np.asarray(output)
    want = (batch.shape[0], batch.shape[1] * scale, batch.shape[2] * scale, 3)
    if output.shape != want:
        raise ArgumentError(f"predict returned shape {output.shape} for an input of shape {batch.shape}, but with "
                            f"scale={scale} it should return {want}: is the scale that of the model?", ["scale"])
    return output[0].astype(np.float64)


def predict_whole(predict, image, scale=None):
    """Super-resolve one `(H, W, 3)` image (float in [0, 1], or uint8) in one call; returns uint8, the same
    values as a one-tile `predict_tiled`. With `scale`, the output's size is checked as there."""
    batch = check_image(image)[None]
    output = np.asarray(predict(batch))
    if output.ndim != 4:
        raise ArgumentError(f"predict returned shape {output.shape} for an input of shape {batch.shape}; a batch "
                            "of images (N, H, W, 3) is needed")
    return to_uint8(_checked(output, batch, scale)) if scale else to_uint8(output[0])


def resolve_superres_model(name_or_path, scale, command=None):
    """`(predict_fn, scale)` for `bicubic`, a `.keras` file, a preset directory or a preset name (its scale
    must agree with `scale`; `scale=None` takes the model's). A model of another task (a U-Net, a style
    network) is refused naming the file (and `command`, if given); the outputs of any other Keras model are
    checked to be `scale` times the input."""
    if name_or_path == "bicubic":
        if scale is None:
            raise ArgumentError("the bicubic baseline needs a scale: pass scale=N (2, 3, 4, ...)", ["scale"])
        return bicubic(scale), scale
    from kx_vision.models.loading import load_model_or_preset

    model = check_task(load_model_or_preset(name_or_path), name_or_path, "superres", command)
    model_scale = getattr(model, "scale", None)
    if scale is not None and model_scale is not None and scale != model_scale:
        raise ArgumentError(f"{name_or_path} is a x{model_scale} model but scale={scale}", ["scale"])
    scale = scale or model_scale
    if scale is None:
        raise ArgumentError(f"{name_or_path} does not record its scale; pass scale=N", ["scale"])
    return checked_output(as_predict_fn(model), name_or_path, "superres", scale), scale
