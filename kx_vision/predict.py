"""Run a trained model on image files.

`python -m kx_vision.predict superres --model PATH --input FILE_OR_DIR --output DIR [--tile T --overlap O]`
`python -m kx_vision.predict segmentation --model PATH --input FILE_OR_DIR --output DIR`
`python -m kx_vision.predict style --model PATH --input FILE_OR_DIR --output DIR`

Super-resolution:
Large images are processed in overlapping tiles that are blended (`kx_vision.inference.predict_tiled`),
so memory stays bounded. Inputs: as for training, grayscale and palette images become RGB, 16-bit images
are scaled to 8 bits, and an alpha channel is dropped (a note is printed). Images beyond Pillow's
decompression-bomb limit (about 179 megapixels: twice `PIL.Image.MAX_IMAGE_PIXELS`) are refused unless
`--allow-large-images`.

Exported models: `--model FOLDER` of `kx-vision export --format onnx|litert|openvino` runs in ONNX Runtime, LiteRT
or OpenVINO, with the same tiling, image I/O and outputs as the Keras path (`kx_vision.inference.runtimes`). By
default an export folder runs in its own runtime and anything else in Keras; `--runtime auto` runs a .keras file or
a preset in kx_vision's fastest installed runtime (`runtimes.FASTEST_FIRST`), on an export made once into the
cache (`~/.cache/kx_vision/exports`) and reused, or in Keras when no runtime can (one line says which).

Outputs are lossless PNGs named `<input stem>_<suffix>.png` (`photo_x2.png`; `_mask` and `_overlay` for
segmentation, `_styled` for style), each written atomically (a hidden `.tmp-<pid>-<name>` renamed into
place; temporaries left by a killed run are removed by the next one). Inputs that share a stem
(`photo.jpg` and `photo.png`) keep their whole name instead, `photo.jpg_x2.png` and `photo.png_x2.png`,
so no output replaces another; names compare case-insensitively, so the rule is the same on every file
system. An output that would replace an input file stops the command before anything is written.

An input that cannot be used (unreadable, truncated, too large, too small for the style network) is
skipped with a warning naming it, and the others are processed. Exit status: 0 every input written;
1 some inputs skipped (counted at the end), the others written; 2 nothing done: a bad argument, model,
input or output folder, or no input could be used (one line naming it); 130 interrupted.
"""

import argparse
import dataclasses
import errno
import os
import sys
import time

import numpy as np

from kx_vision import cli
from kx_vision.errors import DataError, KxVisionError

# Nothing above imports Keras, TensorFlow or JAX (nor Pillow): `--help` prints at once.

SKIPPED = 1  # exit status when some inputs were skipped and the others written


@dataclasses.dataclass
class Result:
    written: list  # output files
    skipped: list  # input files that could not be used


def _inputs(path):
    from kx_vision.data.images import IMAGE_EXTENSIONS, list_images

    if os.path.isdir(path):
        return list_images([path])
    if not os.path.exists(path):
        raise DataError(f"input not found: {path}")
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path} is not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return [path]


def output_names(paths, suffixes):
    """`{path: [file name per suffix]}`: `<stem>_<suffix>.png`, or `<name>_<suffix>.png` (the extension
    kept) for inputs whose stems are equal, ignoring case (`photo.jpg`, `photo.png`). Deterministic,
    and distinct for distinct input names."""
    whole = set()
    while True:
        bases = {p: os.path.basename(p) if p in whole else os.path.splitext(os.path.basename(p))[0] for p in paths}
        groups = {}
        for path, base in bases.items():
            groups.setdefault(base.lower(), []).append(path)
        clashing = {p for group in groups.values() if len(group) > 1 for p in group} - whole
        if not clashing:
            return {p: [f"{bases[p]}_{suffix}.png" for suffix in suffixes] for p in paths}
        whole |= clashing  # a whole name can only clash with a stem: this ends


def _targets(files, output, suffixes):
    """`{input: [output paths]}`; refuses outputs that would replace an input file."""
    names = output_names(files, suffixes)
    sources = {os.path.realpath(f) for f in files}
    targets = {path: [os.path.join(output, name) for name in names[path]] for path in files}
    for path in files:
        clash = next((t for t in targets[path] if os.path.realpath(t) in sources), None)
        if clash:
            raise DataError(f"output {clash} would overwrite an input file; choose another --output")
    return targets


def _write_error(error, path, written):
    done = f"the {written} output file(s) written before it are complete" if written else "nothing was written"
    if error.errno == errno.ENOSPC:
        return KxVisionError(f"no space left on the device while writing {path}; {done} and no half-written "
                             "file is left: free some space and run the same command again")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return KxVisionError(f"cannot write {path}: {error.strerror} ({done}; choose another --output folder, "
                             "or fix its permissions)")
    return KxVisionError(f"cannot write {path}: {error.strerror or error} ({done})")


def _save(image, path, written):
    from kx_vision.fileio import atomic_write

    try:
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    except OSError as error:
        raise _write_error(error, path, written) from error


def _process(inputs, output, allow_large, load):
    """For each input image: decode it, `render(path, rgb_uint8)` -> one PIL image per suffix, and write
    each atomically. `load()` returns `(suffixes, render)`; it is called (the model loaded) once the inputs
    and the output folder are known to be usable, and nothing is written before every output name is
    known to be safe. An input that cannot be used is skipped with a warning."""
    from kx_vision.data.images import TooLargeImageError, read_image
    from kx_vision.fileio import remove_stale_temporaries

    if os.path.exists(output) and not os.path.isdir(output):
        raise DataError(f"--output {output} is a file; give a folder (it is created if missing)")
    files = _inputs(inputs)
    suffixes, render = load()
    targets = _targets(files, output, suffixes)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise _write_error(error, output, 0) from error
    if remove_stale_temporaries(output):
        print(f"removed temporary files that an interrupted run left in {output}")
    written, skipped = [], []
    for path, outputs in targets.items():
        try:
            image, notes = read_image(path, allow_large)
            start = time.perf_counter()
            rendered = render(path, image)
        except DataError as error:  # this input cannot be used; a wrong model is a KxVisionError and stops
            if isinstance(error, TooLargeImageError):
                error = DataError(f"{error}; pass --allow-large-images if you trust this file")
            if len(targets) == 1:
                raise error from None
            print(f"warning: skipping {path}: {error}", file=sys.stderr)
            skipped.append(path)
            continue
        for image_out, target in zip(rendered, outputs):
            _save(image_out, target, len(written))
            written.append(target)
        note = f" ({'; '.join(notes)})" if notes else ""
        print(f"{path} {image.shape[1]}x{image.shape[0]} -> {', '.join(outputs)} "
              f"in {time.perf_counter() - start:.1f} s{note}")
    if skipped and not written:
        raise DataError(f"none of the {len(targets)} input images could be used (each is named above)")
    if skipped:
        print(f"skipped {len(skipped)} of {len(targets)} input images (each is named above); "
              f"the outputs of the other {len(targets) - len(skipped)} were written", file=sys.stderr)
    return Result(written, skipped)


def run(model_path, inputs, output, tile=256, overlap=64, allow_large=False, self_ensemble=False,
        scale=None, runtime=None):
    """Writes `<stem>_x<scale>.png`, super-resolved tile by tile (`tile=0`: in one piece). `runtime`: see
    `kx_vision.inference.runtimes.select` (None: an export folder in its runtime, anything else in Keras; "auto": the
    fastest installed runtime)."""

    def load():
        from PIL import Image

        from kx_vision.inference import runtimes, tiling

        export = runtimes.select(model_path, runtime)
        if export:
            predict, model_scale = runtimes.resolve_superres(export, scale, runtime, "predict superres",
                                                             name=model_path)
        else:
            predict, model_scale = tiling.resolve_superres_model(model_path, scale, command="predict superres")
        if self_ensemble:
            predict = tiling.self_ensemble(predict)

        def render(path, image):
            lr = image.astype(np.float32) / 255.0
            sr = tiling.predict_tiled(predict, lr, model_scale, tile=tile, overlap=overlap) if tile else \
                tiling.predict_whole(predict, lr)
            return [Image.fromarray(sr)]

        return [f"x{model_scale}"], render

    return _process(inputs, output, allow_large, load)


def run_segmentation(model_path, inputs, output, allow_large=False, alpha=0.5, runtime=None):
    """Writes `<stem>_mask.png` (class ids as a palette PNG: the pixel values are the ids) and
    `<stem>_overlay.png` (class colours blended over the image) for each input image."""

    def load():
        from PIL import Image

        from kx_vision.inference import runtimes, tiling
        from kx_vision.inference.pictures import PALETTE  # the colours of every picture of classes
        from kx_vision.models.loading import load_model

        export = runtimes.select(model_path, runtime)
        if export:
            predict, _ = runtimes.resolve(export, "segmentation", runtime, "predict segmentation", name=model_path)
        else:
            model = tiling.check_task(load_model(model_path), model_path, "segmentation", "predict segmentation")
            predict = tiling.checked_output(tiling.as_predict_fn(model), model_path, "segmentation",
                                               channels=getattr(model, "num_classes", None))

        def render(path, image):
            probs = predict(image[None].astype(np.float32) / 255.0)[0]
            labels = (probs[..., 0] >= 0.5) if probs.shape[-1] == 1 else probs.argmax(-1)
            labels = labels.astype(np.uint8)
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette(PALETTE.reshape(-1).tolist())
            overlay = (image * (1 - alpha) + PALETTE[labels] * alpha).round().astype(np.uint8)
            return [mask, Image.fromarray(overlay)]

        return ["mask", "overlay"], render

    return _process(inputs, output, allow_large, load)


def run_style(model_path, inputs, output, allow_large=False, runtime=None):
    """Writes `<stem>_styled.png` for each input image, at the input's size."""

    def load():
        from PIL import Image

        from kx_vision.inference import runtimes, tiling
        from kx_vision.models import StyleTransferNet
        from kx_vision.models.loading import load_model

        export = runtimes.select(model_path, runtime)
        if export:
            predict, card = runtimes.resolve(export, "style", runtime, "predict style", name=model_path)
            minimum = card.get("min_size", 1)
        else:
            model = tiling.check_task(load_model(model_path), model_path, "style", "predict style")
            minimum = StyleTransferNet.min_size(getattr(model, "num_blocks", 5))
            predict = tiling.checked_output(tiling.as_predict_fn(model), model_path, "style")

        def render(path, image):
            if min(image.shape[:2]) < minimum:
                raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}; the style network needs at least "
                                f"{minimum} pixels a side")
            styled = predict(image[None].astype(np.float32) / 255.0)[0]
            return [Image.fromarray(np.round(np.clip(styled, 0, 1) * 255).astype(np.uint8))]

        return ["styled"], render

    return _process(inputs, output, allow_large, load)


def _add_io_arguments(parser, model_help):
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--allow-large-images", action="store_true",
                        help="accept images beyond Pillow's decompression-bomb limit (about 179 megapixels)")
    parser.add_argument("--runtime", choices=("keras", "auto", "onnx", "litert", "openvino"),
                        help="what runs the model: keras (a .keras file or a preset); onnx, litert, openvino (an "
                             "export folder of kx-vision export --format ...; pip install -e '.[export]'); auto: a "
                             ".keras file or a preset in kx_vision's fastest installed runtime, exported once into "
                             "~/.cache/kx_vision (KX_VISION_CACHE) and reused, else in Keras. Default: an export "
                             "folder in its own runtime, anything else in Keras")
    cli.add_verbose_argument(parser)


EPILOG = ("Outputs: <stem>_<suffix>.png, or <name>_<suffix>.png (photo.jpg_x2.png) for inputs sharing a stem. "
          "Exit status: 0 all written; 1 some inputs skipped (named in warnings), the others written; "
          "2 nothing done (bad argument, model, input or output folder).")


def _parser():
    parser = argparse.ArgumentParser(prog="python -m kx_vision.predict", description=__doc__.split("\n")[0],
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = sub.add_parser("superres", help="super-resolve image files", epilog=EPILOG,
                       description="Super-resolve image files, tile by tile; writes <stem>_x<scale>.png.")
    _add_io_arguments(p, "a .keras super-resolution model, a preset directory or name (edsr_baseline_x2), "
                         "or 'bicubic'")
    p.add_argument("--scale", type=int, default=None, help="scale factor (default: the model's; required for bicubic)")
    p.add_argument("--tile", type=int, default=256,
                   help="tile side in input pixels, 0 for no tiling (default: %(default)s)")
    p.add_argument("--overlap", type=int, default=64,
                   help="overlap between tiles in input pixels, less than --tile (default: %(default)s)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble (8x slower)")
    _add_io_arguments(sub.add_parser("segmentation", help="class-id masks and colour overlays", epilog=EPILOG,
                                     description="Writes <stem>_mask.png (class ids) and <stem>_overlay.png."),
                      "a .keras segmentation model")
    _add_io_arguments(sub.add_parser("style", help="stylise images with a trained style network", epilog=EPILOG,
                                     description="Writes <stem>_styled.png, at the input's size."),
                      "a .keras style network")
    return parser


def _command(args):
    if args.task == "segmentation":
        result = run_segmentation(args.model, args.input, args.output, args.allow_large_images,
                                  runtime=args.runtime)
    elif args.task == "style":
        result = run_style(args.model, args.input, args.output, args.allow_large_images, runtime=args.runtime)
    else:
        if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
            raise KxVisionError(f"--tile must be 0 (no tiling) or positive and --overlap in [0, --tile); got "
                                f"--tile {args.tile} --overlap {args.overlap}")
        result = run(args.model, args.input, args.output, args.tile, args.overlap, args.allow_large_images,
                     args.self_ensemble, args.scale, runtime=args.runtime)
    return SKIPPED if result.skipped else 0


def main(argv=None):
    """Exit status: 0 every input written, 1 some skipped, 2 nothing done (one line on stderr), 130 interrupted."""
    args = _parser().parse_args(argv)
    cli.quiet_start(args.verbose, tensorflow=os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")
    return cli.run(lambda: _command(args))


if __name__ == "__main__":
    sys.exit(main())
