"""Evaluate a model on a labelled set.

`python -m kx_vision.evaluate superres --model PATH_OR_bicubic --data DIR --scale N [--self-ensemble] [--json]
[--save-examples DIR]`
`python -m kx_vision.evaluate segmentation --model PATH --images DIR --masks DIR --num-classes N [--ignore-class K]
[--json] [--save-examples DIR]`

Protocol of the super-resolution papers (EDSR, VDSR): HR images cropped to a multiple of the scale, LR made
by the same bicubic degradation as training (antialiased, MATLAB `imresize` semantics, 8-bit), predictions
rounded to 8 bits, Y-PSNR / Y-SSIM (BT.601) with a border of `scale` pixels shaved, and RGB PSNR.
`--data` is an image folder (Set5, Set14, BSD100, Urban100, ...) or `tfds:NAME[:SPLIT]` for a
tensorflow-datasets set (its `hr` or `image` feature is the HR image).

`--save-examples DIR` writes what the numbers measure, as lossless PNGs (`kx_vision.visualize`): for
super-resolution, per image, bicubic | model | ground truth with their Y-PSNR, and a zoomed crop of each
(`<name>_x<scale>_<psnr>dB.png`); for segmentation, per image, the image, the truth and the prediction in
class colours (`<name>.png`), and `confusion_matrix.png`.
"""

import argparse
import json
import os
import re
import sys

import numpy as np

from kx_vision import cli
from kx_vision.errors import KxVisionError

# Nothing above imports Keras, TensorFlow or JAX: `--help` prints at once. The commands import them.


def load_hr_images(data, limit=None):
    """`(names, images)`: uint8 RGB arrays from a folder or a `tfds:` dataset."""
    from kx_vision.data import tfds_source

    if tfds_source.is_tfds(data):
        return tfds_source.load_tfds_images(data, limit, default_split="validation")
    from kx_vision.data.images import list_images, load_images

    paths = list_images([p for p in data.split(",") if p])
    if limit:
        paths = paths[:limit]
    images, kept = load_images(paths, what="evaluation image")
    return [os.path.basename(p) for p in kept], images


def evaluate(predict, names, images, scale, self_ensemble=False, save_examples=None):
    """Per-image rows `{"image", "psnr", "ssim", "psnr_rgb"}` and their mean. With `save_examples` (a
    folder), each image's `visualize.superres_strip` is written there too, and its row gets the file
    (`"example"`) and the Y-PSNR of bicubic upscaling (`"bicubic_psnr"`)."""
    from kx_vision import inference, metrics
    from kx_vision.data import transforms

    if self_ensemble:
        predict = inference.self_ensemble(predict)
    rows, taken = [], set()
    for name, image in zip(names, images):
        hr = transforms.crop_to_multiple(image, scale)[None].astype(np.float32) / 255.0
        if min(hr.shape[1:3]) < scale * 2 + 11:
            raise KxVisionError(f"evaluation image {name} is too small for x{scale} scoring")
        lr = np.asarray(transforms.bicubic_downscale(hr, scale))
        sr = inference.predict_whole(predict, lr[0])[None].astype(np.float32) / 255.0
        rows.append(
            {
                "image": name,
                "psnr": float(np.asarray(metrics.psnr(hr, sr, shave=scale))[0]),
                "ssim": float(np.asarray(metrics.ssim(hr, sr, shave=scale))[0]),
                "psnr_rgb": float(np.asarray(metrics.psnr(hr, sr, shave=scale, channel="rgb"))[0]),
            }
        )
        if save_examples:
            rows[-1].update(_save_superres_example(save_examples, rows[-1], lr[0], sr, hr, scale, taken))
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("psnr", "ssim", "psnr_rgb")}
    return rows, mean


def examples_folder(path):
    """`path`, created; one message if it cannot be (a file there, no permission)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise KxVisionError(f"--save-examples {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise KxVisionError(f"--save-examples {path}: cannot create the folder ({error.strerror})") from None
    return path


def example_name(name, taken):
    """A file stem for image `name` (a file name or a tfds `NAME:SPLIT:I`), unique among `taken`."""
    stem = re.sub(r"[^\w.-]+", "_", os.path.splitext(os.path.basename(name))[0] if ":" not in name else name)
    stem = stem.strip("._") or "image"
    unique, k = stem, 1
    while unique in taken:
        k += 1
        unique = f"{stem}_{k}"
    taken.add(unique)
    return unique


def _save_superres_example(folder, row, lr, sr, hr, scale, taken):
    """bicubic | model | ground truth (and zoomed crops) of one image; `{"example", "bicubic_psnr"}`."""
    from kx_vision import inference, metrics, visualize

    bicubic = inference.predict_whole(inference.bicubic(scale), lr)[None].astype(np.float32) / 255.0
    bicubic_psnr = float(np.asarray(metrics.psnr(hr, bicubic, shave=scale))[0])
    strip = visualize.superres_strip(bicubic[0], sr[0], hr[0], bicubic_psnr, row["psnr"])
    path = os.path.join(folder, f"{example_name(row['image'], taken)}_x{scale}_{row['psnr']:.2f}dB.png")
    visualize.save_png(strip, path)
    return {"example": path, "bicubic_psnr": bicubic_psnr}


def format_table(rows, mean):
    width = max([len(r["image"]) for r in rows] + [5])
    lines = [f"{'image':<{width}}  Y-PSNR  Y-SSIM  RGB-PSNR"]
    for r in rows + [{"image": "mean", **mean}]:
        lines.append(f"{r['image']:<{width}}  {r['psnr']:6.2f}  {r['ssim']:.4f}  {r['psnr_rgb']:8.2f}")
    return "\n".join(lines)


def _parser():
    parser = argparse.ArgumentParser(prog="python -m kx_vision.evaluate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = sub.add_parser("superres", help="Y-PSNR / Y-SSIM / RGB-PSNR of a super-resolution model",
                       description="Y-PSNR / Y-SSIM / RGB-PSNR of a super-resolution model, per image and mean")
    p.add_argument("--model", required=True,
                   help="a .keras model file, a preset directory or name (edsr_baseline_x2), or 'bicubic'")
    p.add_argument("--data", required=True, help="image folder(s), comma-separated, or tfds:NAME[:SPLIT]")
    p.add_argument("--scale", type=int, default=None, help="scale factor (default: the model's; required for bicubic)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble (EDSR+; 8x slower)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object, last")
    p.add_argument("--save-examples", metavar="DIR", default=None,
                   help="also write, per image, a PNG of bicubic | model | ground truth with their Y-PSNR and a "
                        "zoomed crop of each, into DIR")
    cli.add_verbose_argument(p)
    q = sub.add_parser("segmentation", help="mean IoU, per-class IoU and pixel accuracy at full resolution",
                       description="Mean IoU, per-class IoU and pixel accuracy at full resolution. Classes are "
                                   "named by --class-names, else by the class_names of the training run's "
                                   "config.yaml beside the model (or above its checkpoints/ folder), else by index.")
    q.add_argument("--model", required=True, help="a .keras segmentation model")
    q.add_argument("--images", required=True, help="image folder(s), comma-separated")
    q.add_argument("--masks", required=True, help="mask folder(s) (files named like the images)")
    q.add_argument("--num-classes", type=int, required=True, help="classes (1: binary)")
    q.add_argument("--ignore-class", type=int, default=None,
                   help="mask value to ignore, e.g. 11 for CamVid void (default: none)")
    q.add_argument("--mask-divisor", type=int, default=1,
                   help="divide mask values by this, 255 for 0/255 masks (default: %(default)s)")
    q.add_argument("--class-names", default=None,
                   help="comma-separated class names for the report (default: those saved with the training run, "
                        "else the class indices)")
    q.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    q.add_argument("--json", action="store_true", help="print the results as one JSON object, last")
    q.add_argument("--save-examples", metavar="DIR", default=None,
                   help="also write, per image, a PNG of the image, its truth and the prediction in class colours, "
                        "and confusion_matrix.png, into DIR")
    cli.add_verbose_argument(q)
    return parser


def saved_class_names(model_path, num_classes):
    """`(names, config_path)` from the training run a model file belongs to: `class_names` of the
    `config.yaml` that `train` writes beside `model.keras` (one folder up for `checkpoints/*.keras`),
    when that config declares the model's number of classes and one name per class. `(None, None)`
    otherwise: the model file itself holds no class names."""
    import yaml

    folder = os.path.dirname(os.path.abspath(model_path))
    folders = [folder, os.path.dirname(folder)] if os.path.basename(folder) == "checkpoints" else [folder]
    for candidate in folders:
        path = os.path.join(candidate, "config.yaml")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                values = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None, None
        if not isinstance(values, dict):
            return None, None
        names = values.get("class_names")
        if values.get("num_classes") == num_classes and isinstance(names, list) and \
                len(names) == max(num_classes, 2):
            return [str(name) for name in names], path
        return None, None
    return None, None


def class_names(args):
    """`(names, source)`: --class-names, else the training run's, else None (indices; background /
    foreground for a binary model). `source` says where the names came from, for the report."""
    classes = max(args.num_classes, 2)
    if args.class_names:
        names = [name.strip() for name in args.class_names.split(",")]
        if len(names) != classes:
            raise KxVisionError(f"--class-names has {len(names)} names but there are {classes} classes "
                                f"(--num-classes {args.num_classes}{', binary: 2 names' if args.num_classes == 1 else ''})")
        return names, "--class-names"
    names, path = saved_class_names(args.model, args.num_classes)
    if names:
        return names, path
    if args.num_classes == 1:
        return ["background", "foreground"], None
    return None, None


def evaluate_segmentation(args):
    """Scores of a segmentation model on image/mask folders, each image at its own size."""
    from kx_vision.data.masks import find_pairs, load_pairs
    from kx_vision.inference import as_predict_fn, check_task, checked_output
    from kx_vision.metrics import confusion_matrix, scores_from_confusion
    from kx_vision.models.loading import load_model

    names, source = class_names(args)
    model = check_task(load_model(args.model), args.model, "segmentation", "evaluate segmentation")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != args.num_classes:
        raise KxVisionError(f"{args.model} predicts {model_classes} classes but --num-classes is {args.num_classes}")
    pairs = find_pairs([p for p in args.images.split(",") if p], [p for p in args.masks.split(",") if p])
    if args.limit:
        pairs = pairs[: args.limit]
    images, masks = load_pairs(pairs, args.num_classes, args.ignore_class, args.mask_divisor)
    batches = ((image[None].astype(np.float32) / 255.0, mask[None]) for image, mask in zip(images, masks))
    predict = checked_output(as_predict_fn(model), args.model, "segmentation", channels=args.num_classes)
    if args.save_examples:
        # Pairs that could not be read were skipped (with a warning): name the files by the images kept.
        stems = [os.path.basename(image) for image, _ in pairs] if len(pairs) == len(images) else \
            [f"image_{i:04d}" for i in range(len(images))]
        predict = _saving_segmentation_examples(predict, examples_folder(args.save_examples), stems, images, masks,
                                                args.ignore_class, names)
    cm = confusion_matrix(predict, batches, args.num_classes, args.ignore_class)
    scores = scores_from_confusion(cm, names)
    scores["class_names_from"] = source
    if args.save_examples:
        from kx_vision import visualize

        ignored = f"class {args.ignore_class} ignored" if args.ignore_class is not None else None
        scores["confusion_matrix_png"] = visualize.save_confusion_matrix(
            cm, os.path.join(args.save_examples, "confusion_matrix.png"), names, ignored)
    return scores, len(images)


def _saving_segmentation_examples(predict, folder, stems, images, masks, ignore_class, class_names):
    """`predict`, which also writes the image, truth and prediction of each image it is given, in the order
    of `images` (as `metrics.confusion_matrix` calls it: once per image), to `folder/<stem>.png`."""
    from kx_vision import visualize

    taken, calls = set(), iter(range(len(images)))
    names = class_names or [str(k) for k in range(len(visualize.PALETTE))]

    def predict_and_save(batch):
        probabilities = predict(batch)
        i = next(calls)
        labels = visualize.class_ids(probabilities)[0]
        panels, captions = visualize.segmentation_row(images[i], masks[i], labels, ignore_class)
        shown = sorted(set(np.unique(labels).tolist()) | (set(np.unique(masks[i]).tolist()) - {ignore_class}))
        panels.append(visualize.legend([names[k] for k in shown], visualize.PALETTE[shown],
                                       max_height=images[i].shape[0]))
        visualize.save_png(visualize.grid([panels], [captions + [None]]),
                           os.path.join(folder, f"{example_name(stems[i], taken)}.png"))
        return probabilities

    return predict_and_save


def main_segmentation(args):
    scores, count = evaluate_segmentation(args)
    print(f"{args.model} on {args.images} ({count} images)")
    if scores["class_names_from"]:
        print(f"class names from {scores['class_names_from']}")
    width = max(len(k) for k in scores["per_class_iou"])
    for name, value in scores["per_class_iou"].items():
        print(f"{name:<{width}}  IoU {'  n/a' if value is None else f'{value:.3f}'}")
    print(f"{'mean':<{width}}  IoU {scores['miou']:.3f}   pixel accuracy {scores['pixel_accuracy']:.3f}")
    if args.save_examples:
        print(f"examples: {count} images and confusion_matrix.png in {args.save_examples}")
    if args.json:
        print(json.dumps({**scores, "images": count, "model": args.model}))


def main_superres(args):
    from kx_vision.inference import resolve_superres_model

    predict, scale = resolve_superres_model(args.model, args.scale)
    names, images = load_hr_images(args.data, args.limit)
    folder = examples_folder(args.save_examples) if args.save_examples else None
    rows, mean = evaluate(predict, names, images, scale, args.self_ensemble, save_examples=folder)
    print(f"{args.model} x{scale}{' (self-ensemble)' if args.self_ensemble else ''} on {args.data}")
    print(format_table(rows, mean))
    if folder:
        print(f"examples: {len(rows)} images (bicubic | model | ground truth) in {folder}")
    if args.json:
        result = {
            **mean,
            "scale": scale,
            "images": len(rows),
            "model": args.model,
            "data": args.data,
            "self_ensemble": args.self_ensemble,
            "per_image": rows,
        }
        print(json.dumps(result))


def main(argv=None):
    """Exit status: 0 done, 2 bad input (one line on stderr naming it), 130 interrupted."""
    args = _parser().parse_args(argv)
    cli.quiet_start(args.verbose, tensorflow=os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")
    return cli.run(lambda: main_segmentation(args) if args.task == "segmentation" else main_superres(args))


if __name__ == "__main__":
    sys.exit(main())
