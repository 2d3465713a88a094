"""Set5-style Y-PSNR of super-resolution models and their exports, side by side (issue 27, item 2: what float16
and int8 cost).

python -m benchmarks.deploy_psnr --data ../shared/data/Set5 MODEL [EXPORT_FOLDER ...] [--out results.jsonl]

Each argument is a `.keras` file, a preset (directory or name) or an export folder of
`kx-vision export --format onnx|litert|openvino [--quantize ...]`; each is scored as
`python -m kx_vision.evaluate superres` scores a model (`evaluate.score_superres`: bicubic LR, Y channel,
`scale` pixels shaved), the exports in their own runtimes. One JSON line per model (mean Y-PSNR, SSIM, the size
of its files, the difference to the first model), then a Markdown table.
"""

import argparse
import os
import sys
import time

from benchmarks import cpu_device, emit


def _size_mib(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    if not os.path.isdir(path):
        return None  # a preset name
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
               if not name.endswith(".json")) / 2**20


def score(spec, data, scale=None):
    """`(record, mean)` of one model or export on the images of `data`."""
    from kx_vision import evaluate
    from kx_vision.inference import runtimes, tiling

    if runtimes.is_export(spec):
        predict, scale = runtimes.resolve_superres(spec, scale, "auto", "deploy_psnr")
        card = runtimes.read_export(spec).card
        kind, quantize = card["format"], card.get("quantize", "none")
    else:
        predict, scale = tiling.resolve_superres_model(spec, scale, command="deploy_psnr")
        kind, quantize = "keras", "none"
    _, mean = evaluate.score_superres(predict, evaluate.iter_hr_images(data), scale)
    size = _size_mib(spec)
    return {"benchmark": "deploy_psnr", "model": spec, "format": kind, "quantize": quantize, "scale": scale,
            "data": data, "psnr_y": round(mean["psnr"], 4), "ssim": round(mean["ssim"], 5),
            "size_mib": None if size is None else round(size, 3), "device": cpu_device(),
            "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy_psnr", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help=".keras files, presets or export folders; the first is the "
                                                  "reference of the differences")
    parser.add_argument("--data", required=True, help="a folder of HR images (Set5)")
    parser.add_argument("--scale", type=int, default=None, help="default: each model's")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    args = parser.parse_args(argv)
    records = []
    for spec in args.models:
        record = score(spec, args.data, args.scale)
        record["delta_db"] = round(record["psnr_y"] - records[0]["psnr_y"], 4) if records else 0.0
        records.append(record)
        emit(record, args.out)
    print("| model | format | quantize | size MiB | Y-PSNR dB | vs first |\n|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['model']} | {r['format']} | {r['quantize']} | {r['size_mib']} | {r['psnr_y']:.2f} | "
              f"{r['delta_db']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
