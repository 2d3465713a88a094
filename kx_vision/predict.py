"""Run a trained model on image files.

`python -m kx_vision.predict superres --model PATH --input FILE_OR_DIR --output DIR [--tile T --overlap O]`
`python -m kx_vision.predict segmentation --model PATH --input FILE_OR_DIR --output DIR`
`python -m kx_vision.predict style --model PATH --input FILE_OR_DIR --output DIR`

Super-resolution:
Large images are processed in overlapping tiles that are blended (`kx_vision.inference.predict_tiled`),
so memory stays bounded. Outputs are lossless PNGs named `<input stem>_x<scale>.png`, written atomically;
an input file is never overwritten. Inputs: as for training, grayscale and palette images become RGB,
16-bit images are scaled to 8 bits, and an alpha channel is dropped (a note is printed). Images beyond
Pillow's decompression-bomb limit (about 179 megapixels) are refused unless `--allow-large-images`.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from PIL import Image

from kx_vision.errors import DataError, KxVisionError


def _inputs(path):
    from kx_vision.data.images import IMAGE_EXTENSIONS, list_images

    if os.path.isdir(path):
        return list_images([path])
    if not os.path.exists(path):
        raise DataError(f"input not found: {path}")
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path} is not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return [path]


def _bomb_message(path, width, height, limit):
    return (
        f"{path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), beyond Pillow's "
        f"decompression-bomb limit of {limit / 1e6:.0f} megapixels; pass --allow-large-images if "
        "you trust this file"
    )


def _read(path, allow_large):
    """`(rgb_uint8, notes)`; images beyond Pillow's pixel limit are refused unless `allow_large`."""
    from kx_vision.data.images import to_rgb_array

    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Pillow warns above the limit and raises above twice it; we decide here instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as image:
                if limit and image.width * image.height > limit and not allow_large:
                    raise DataError(_bomb_message(path, image.width, image.height, limit))
                notes = []
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    notes.append("alpha channel dropped")
                if image.mode.startswith("I;16") or image.mode == "I":
                    notes.append("16-bit image scaled to 8 bits")
                image.load()
                return to_rgb_array(image, path), notes
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - Pillow's many failure types become one message
            raise DataError(f"cannot read image {path}: {error}") from error
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _process(inputs, output, allow_large, suffixes, render):
    """For each input image: check that none of its outputs `<stem>_<suffix>.png` would overwrite an
    input file, decode it, `render(path, rgb_uint8)` -> one PIL image per suffix, and write each
    atomically. Returns the paths written."""
    files = _inputs(inputs)
    os.makedirs(output, exist_ok=True)
    sources = {os.path.realpath(f) for f in files}
    written = []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        targets = [os.path.join(output, f"{stem}_{suffix}.png") for suffix in suffixes]
        clash = next((t for t in targets if os.path.realpath(t) in sources), None)
        if clash:
            raise DataError(f"output {clash} would overwrite an input file; choose another --output")
        image, notes = _read(path, allow_large)
        start = time.perf_counter()
        for rendered, target in zip(render(path, image), targets):
            _save_atomic(rendered, target)
        note = f" ({'; '.join(notes)})" if notes else ""
        print(f"{path} {image.shape[1]}x{image.shape[0]} -> {', '.join(targets)} "
              f"in {time.perf_counter() - start:.1f} s{note}")
        written.extend(targets)
    return written


def run(model_path, inputs, output, tile=256, overlap=64, allow_large=False, self_ensemble=False,
        scale=None):
    """Writes `<stem>_x<scale>.png`, super-resolved tile by tile (`tile=0`: in one piece)."""
    from kx_vision import inference
    from kx_vision.evaluate import resolve_model

    predict, scale = resolve_model(model_path, scale)
    if self_ensemble:
        predict = inference.self_ensemble(predict)

    def render(path, image):
        lr = image.astype(np.float32) / 255.0
        sr = inference.predict_tiled(predict, lr, scale, tile=tile, overlap=overlap) if tile else \
            inference.predict_whole(predict, lr)
        return [Image.fromarray(sr)]

    return _process(inputs, output, allow_large, [f"x{scale}"], render)


# Colours of the class ids in masks and overlays (CamVid's first, then a spread of hues).
PALETTE = np.array([
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0],
] + [[(37 * i) % 256, (97 * i) % 256, (173 * i) % 256] for i in range(12, 256)], dtype=np.uint8)


def run_segmentation(model_path, inputs, output, allow_large=False, alpha=0.5):
    """Writes `<stem>_mask.png` (class ids as a palette PNG: the pixel values are the ids) and
    `<stem>_overlay.png` (class colours blended over the image) for each input image."""
    from kx_vision.inference import as_predict_fn
    from kx_vision.models.loading import load_model

    predict = as_predict_fn(load_model(model_path))

    def render(path, image):
        probs = np.asarray(predict(image[None].astype(np.float32) / 255.0))[0]
        labels = (probs[..., 0] >= 0.5) if probs.shape[-1] == 1 else probs.argmax(-1)
        labels = labels.astype(np.uint8)
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette(PALETTE.reshape(-1).tolist())
        overlay = (image * (1 - alpha) + PALETTE[labels] * alpha).round().astype(np.uint8)
        return [mask, Image.fromarray(overlay)]

    return _process(inputs, output, allow_large, ["mask", "overlay"], render)


def run_style(model_path, inputs, output, allow_large=False):
    """Writes `<stem>_styled.png` for each input image, at the input's size."""
    from kx_vision.inference import as_predict_fn
    from kx_vision.models import StyleTransferNet
    from kx_vision.models.loading import load_model

    model = load_model(model_path)
    minimum = StyleTransferNet.min_size(getattr(model, "num_blocks", 5))
    predict = as_predict_fn(model)

    def render(path, image):
        if min(image.shape[:2]) < minimum:
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}; the style network needs at least "
                            f"{minimum} pixels a side")
        styled = np.asarray(predict(image[None].astype(np.float32) / 255.0))[0]
        return [Image.fromarray(np.round(np.clip(styled, 0, 1) * 255).astype(np.uint8))]

    return _process(inputs, output, allow_large, ["styled"], render)


def _save_atomic(image, path):
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _add_io_arguments(parser, model_help):
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--allow-large-images", action="store_true",
                        help="accept images beyond Pillow's decompression-bomb limit")


def _parser():
    parser = argparse.ArgumentParser(prog="python -m kx_vision.predict", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = sub.add_parser("superres", help="super-resolve image files")
    _add_io_arguments(p, "a .keras super-resolution model, a preset directory or name (edsr_baseline_x2), "
                         "or 'bicubic'")
    p.add_argument("--scale", type=int, default=None, help="scale factor (default: the model's)")
    p.add_argument("--tile", type=int, default=256, help="tile side in input pixels (0: no tiling)")
    p.add_argument("--overlap", type=int, default=64, help="overlap between tiles in input pixels")
    p.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble (8x slower)")
    _add_io_arguments(sub.add_parser("segmentation", help="class-id masks and colour overlays"),
                      "a .keras segmentation model")
    _add_io_arguments(sub.add_parser("style", help="stylise images with a trained style network"),
                      "a .keras style network")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.task == "segmentation":
            run_segmentation(args.model, args.input, args.output, args.allow_large_images)
            return 0
        if args.task == "style":
            run_style(args.model, args.input, args.output, args.allow_large_images)
            return 0
        if args.tile and not 0 <= args.overlap < args.tile:
            raise KxVisionError(f"--overlap must be in [0, --tile), got {args.overlap} with --tile {args.tile}")
        run(args.model, args.input, args.output, args.tile, args.overlap, args.allow_large_images,
            args.self_ensemble, args.scale)
    except KxVisionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
