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

Both commands read, predict and score one image at a time (its rows or confusion-matrix counts kept, its
pixels not), so memory does not grow with the number of images (of a folder or a `tfds:` set); unreadable files are skipped with a warning and counted, and an image and mask of different sizes
stop the run before any prediction.

`--save-examples DIR` writes what the numbers measure, as lossless PNGs (`kx_vision.inference.pictures`): for
super-resolution, per image, bicubic | model | ground truth with their Y-PSNR, and a zoomed crop of each
(`<name>_x<scale>_<psnr>dB.png`); for segmentation, per image, the image, the truth and the prediction in
class colours (`<name>.png`), and `confusion_matrix.png`.
"""

import argparse
import itertools
import json
import os
import re
import sys

import numpy as np

from kx_vision import cli
from kx_vision.errors import KxVisionError

# Nothing above imports Keras, TensorFlow or JAX: `--help` prints at once. The commands import them.


def iter_hr_images(data, limit=None):
    """An iterator of `(name, image)` uint8 RGB arrays from a folder or a `tfds:` dataset. A folder is listed
    at once (a missing one is named here) and its files decoded one at a time, when asked for
    (`images.iter_images`: unreadable ones skipped with a warning, counted at the end); a tfds set's first
    example is read at once (a set that cannot be loaded is named here), the others one at a time. So
    evaluating a large set holds one decoded image, not the set."""
    from kx_vision.data import tfds_source

    if tfds_source.is_tfds(data):
        name, split = tfds_source.parse(data, default_split="validation")
        images = enumerate(tfds_source.tfds_images(data, limit, default_split="validation"))
        first = next(images)  # a set that cannot be loaded, or an empty split, is named here, before any model
        return ((f"{name}:{split}:{i}", image) for i, image in itertools.chain([first], images))
    from kx_vision.data.images import iter_images, list_images

    paths = list_images([p for p in data.split(",") if p])
    if limit:
        paths = paths[:limit]
    return ((os.path.basename(path), image) for path, image in iter_images(paths, what="evaluation image"))


def load_hr_images(data, limit=None):
    """`(names, images)`: all of `iter_hr_images`, in lists."""
    items = list(iter_hr_images(data, limit))
    return [name for name, _ in items], [image for _, image in items]


def evaluate(predict, names, images, scale, self_ensemble=False, save_examples=None):
    """Per-image rows `{"image", "psnr", "ssim", "psnr_rgb"}` and their mean (`score_superres` over `names`
    and `images`)."""
    return score_superres(predict, zip(names, images), scale, self_ensemble, save_examples)


def score_superres(predict, items, scale, self_ensemble=False, save_examples=None):
    """Per-image rows `{"image", "psnr", "ssim", "psnr_rgb"}` and their mean, over `(name, image)` items
    taken one at a time (an iterator such as `iter_hr_images`: only the image being scored is held). With
    `save_examples` (a folder), each image's `pictures.superres_strip` is written there too, and its row gets
    the file (`"example"`) and the Y-PSNR of bicubic upscaling (`"bicubic_psnr"`)."""
    from kx_vision import metrics
    from kx_vision.data import transforms
    from kx_vision.inference import tiling

    if self_ensemble:
        predict = tiling.self_ensemble(predict)
    rows, taken = [], set()
    for name, image in items:
        hr = transforms.crop_to_multiple(image, scale)[None].astype(np.float32) / 255.0
        del image
        if min(hr.shape[1:3]) < scale * 2 + 11:
            raise KxVisionError(f"evaluation image {name} is too small for x{scale} scoring")
        lr = np.asarray(transforms.bicubic_downscale(hr, scale))
        sr = tiling.predict_whole(predict, lr[0])[None].astype(np.float32) / 255.0
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
        del hr, lr, sr  # before the next image is decoded
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
    from kx_vision import metrics
    from kx_vision.inference import pictures, tiling

    bicubic = tiling.predict_whole(tiling.bicubic(scale), lr)[None].astype(np.float32) / 255.0
    bicubic_psnr = float(np.asarray(metrics.psnr(hr, bicubic, shave=scale))[0])
    strip = pictures.superres_strip(bicubic[0], sr[0], hr[0], bicubic_psnr, row["psnr"])
    path = os.path.join(folder, f"{example_name(row['image'], taken)}_x{scale}_{row['psnr']:.2f}dB.png")
    pictures.save_png(strip, path)
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
    _add_output_arguments(p, "a PNG of bicubic | model | ground truth with their Y-PSNR and a zoomed crop of each,")
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
    _add_output_arguments(q, "a PNG of the image, its truth and the prediction in class colours, and "
                             "confusion_matrix.png,")
    return parser


def _add_output_arguments(parser, examples):
    """What both tasks take: how many images, how the results are printed, which pictures are written."""
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object, last")
    parser.add_argument("--save-examples", metavar="DIR", default=None,
                        help=f"also write, per image, {examples} into DIR")
    cli.add_verbose_argument(parser)


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
    """Scores of a segmentation model on image/mask folders, each image at its own size, read, predicted and
    counted one at a time (memory does not grow with the number of images)."""
    from kx_vision.data.masks import PairReader, find_pairs, iter_pairs
    from kx_vision.inference.tiling import as_predict_fn, check_task, checked_output
    from kx_vision.metrics import scores_from_confusion
    from kx_vision.models.loading import load_model

    names, source = class_names(args)
    model = check_task(load_model(args.model), args.model, "segmentation", "evaluate segmentation")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != args.num_classes:
        raise KxVisionError(f"{args.model} predicts {model_classes} classes but --num-classes is {args.num_classes}")
    pairs = find_pairs([p for p in args.images.split(",") if p], [p for p in args.masks.split(",") if p])
    if args.limit:
        pairs = pairs[: args.limit]
    # Every file's header, nothing decoded: an image and a mask of different sizes stop here, before any
    # prediction, with the `DataError` that decoding them would give.
    PairReader(pairs, args.num_classes, args.ignore_class, args.mask_divisor, what="evaluation")
    predict = checked_output(as_predict_fn(model), args.model, "segmentation", channels=args.num_classes)
    save = None
    if args.save_examples:
        save = _segmentation_example_writer(examples_folder(args.save_examples), args.ignore_class, names)
    cm, count = segmentation_confusion(
        predict, iter_pairs(pairs, args.num_classes, args.ignore_class, args.mask_divisor), args.num_classes,
        args.ignore_class, on_prediction=save)
    scores = scores_from_confusion(cm, names)
    scores["class_names_from"] = source
    if args.save_examples:
        from kx_vision.inference import pictures

        ignored = f"class {args.ignore_class} ignored" if args.ignore_class is not None else None
        scores["confusion_matrix_png"] = pictures.save_confusion_matrix(
            cm, os.path.join(args.save_examples, "confusion_matrix.png"), names, ignored)
    return scores, count


def segmentation_confusion(predict, pairs, num_classes, ignore_class=None, on_prediction=None):
    """`(cm, count)`: the confusion matrix (int64; rows truth, columns prediction; `metrics.confusion_matrix`)
    of `predict` over `(name, image, mask)` items, taken one at a time (an iterator such as `masks.iter_pairs`:
    only the pair being scored is held), and how many there were. Each image is one batch, at its own size;
    `on_prediction(name, image, mask, probabilities)` is called after each."""
    from kx_vision.metrics import confusion_matrix

    count, last = [0], []

    def predict_and_keep(batch):
        last[:] = [predict(batch)]
        return last[0]

    def batches():
        for name, image, mask in pairs:
            yield image[None].astype(np.float32) / 255.0, mask[None]
            # Resumed once the batch is predicted and counted (after the last one too).
            if on_prediction is not None:
                on_prediction(name, image, mask, last[0])
            last.clear()
            count[0] += 1
            del image, mask  # before the next pair is decoded

    cm = confusion_matrix(predict_and_keep if on_prediction is not None else predict, batches(), num_classes,
                          ignore_class)
    return cm, count[0]


def _segmentation_example_writer(folder, ignore_class, class_names):
    """`on_prediction` for `segmentation_confusion`: writes the image, its truth and the prediction in class
    colours, and a legend of the classes shown, to `folder/<image stem>.png`."""
    from kx_vision.inference import pictures

    taken = set()
    names = class_names or [str(k) for k in range(len(pictures.PALETTE))]

    def save(name, image, mask, probabilities):
        labels = pictures.class_ids(probabilities)[0]
        panels, captions = pictures.segmentation_row(image, mask, labels, ignore_class)
        shown = sorted(set(np.unique(labels).tolist()) | (set(np.unique(mask).tolist()) - {ignore_class}))
        panels.append(pictures.legend([names[k] for k in shown], pictures.PALETTE[shown],
                                       max_height=image.shape[0]))
        pictures.save_png(pictures.grid([panels], [captions + [None]]),
                           os.path.join(folder, f"{example_name(os.path.basename(name), taken)}.png"))

    return save


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
    from kx_vision.inference.tiling import resolve_superres_model

    predict, scale = resolve_superres_model(args.model, args.scale, command="evaluate superres")
    items = iter_hr_images(args.data, args.limit)
    folder = examples_folder(args.save_examples) if args.save_examples else None
    rows, mean = score_superres(predict, items, scale, args.self_ensemble, save_examples=folder)
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
