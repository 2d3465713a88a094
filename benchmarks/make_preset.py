"""Turn a finished super-resolution training run into a preset shipped in the package (issue 31).

    python -m benchmarks.make_preset edsr_8x32_x2 --run runs/presets/edsr_8x32_x2 \
        --log runs/presets/edsr_8x32_x2.log --device "CPU, 2 cores (AMD EPYC), TensorFlow 2.21"

What it does, in order, all measured here, nothing copied from elsewhere:
1. loads the run's `checkpoints/best.keras` (chosen on Set5 during training: Set14 is never used to choose);
2. scores it on Set5 and Set14 (`kx_vision.evaluate`'s protocol), plain and with the x8 self-ensemble, and
   bicubic on the same images;
3. stores the weights as float16 when the preset's Set5 Y-PSNR then equals the float32 model's to 0.01 dB,
   else float32 (both figures go into the card);
4. draws the Set5 PSNR against training minutes (from the training log's per-epoch step times and
   `history.csv`) and a bicubic | model | ground truth picture (`--save-examples`) for the card;
5. writes `kx_vision/presets/<name>/` with `presets.save` (atomic; the card: command, data, device, minutes,
   scores beside bicubic and the published SRCNN / FSRCNN / VDSR figures).
"""

import argparse
import csv
import os
import re
import shutil
import sys
import tempfile

# Published Y-PSNR (dB) on the same protocol (shared/data/README.md; FSRCNN: Dong et al. 2016; VDSR: Kim et al.
# 2016, trained on the same 291 images).
PUBLISHED = {
    2: {"SRCNN": {"Set5": 36.66, "Set14": 32.45}, "FSRCNN": {"Set5": 37.00, "Set14": 32.63},
        "VDSR": {"Set5": 37.53, "Set14": 33.03}},
    4: {"SRCNN": {"Set5": 30.48, "Set14": 27.49}, "FSRCNN": {"Set5": 30.72, "Set14": 27.61},
        "VDSR": {"Set5": 31.35, "Set14": 28.01}},
}
SETS = ("Set5", "Set14")
EXAMPLE = {"Set5": "butterfly.png"}  # the card's picture: sharp edges and fine stripes, where x2 models beat bicubic
_EPOCH_END = re.compile(r"(\d+)/\1\D[^\n]*?(\d+(?:\.\d+)?)(ms|s)/step[^\n]*?val_psnr: ([\d.]+)")


def epoch_minutes(logs):
    """Cumulative training minutes at the end of each epoch: the mean step time Keras prints on each epoch's
    last progress line, times the epoch's steps (training steps only, as `time_budget` counts them)."""
    minutes, total = [], 0.0
    for path in logs:
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(path, encoding="utf-8", errors="replace").read())
        for match in _EPOCH_END.finditer(text.replace("\r", "\n")):
            step = float(match.group(2)) / (1000.0 if match.group(3) == "ms" else 1.0)
            total += step * int(match.group(1)) / 60.0
            minutes.append(total)
    return minutes


def history_psnr(run):
    with open(os.path.join(run, "history.csv"), encoding="utf-8") as f:
        return [float(row["val_psnr"]) for row in csv.DictReader(f)]


def plot_curve(minutes, psnr, published, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(minutes), len(psnr))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(minutes[:n], psnr[:n], label="this preset (Set5, validation during training)")
    for (method, scores), style in zip(published.items(), (":", "--", "-.")):
        ax.axhline(scores["Set5"], color="gray", linestyle=style, linewidth=1, label=f"{method} {scores['Set5']:.2f}")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("Set5 Y-PSNR (dB)")
    ax.set_title(title)
    ax.set_ylim(min(psnr[:n][len(psnr[:n]) // 10:] + [s["Set5"] for s in published.values()]) - 0.3,
                max(psnr[:n] + [s["Set5"] for s in published.values()]) + 0.2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score(spec, data, scale, self_ensemble=False, save_examples=None):
    from kx_vision import evaluate
    from kx_vision.inference import tiling

    predict_fn, scale = tiling.resolve_superres_model(spec, scale)
    names, images = evaluate.load_hr_images(data)
    rows, mean = evaluate.evaluate(predict_fn, names, images, scale, self_ensemble, save_examples)
    return rows, mean


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a preset name known to kx_vision.models.presets.PRESETS")
    parser.add_argument("--run", required=True, help="the training run folder")
    parser.add_argument("--log", nargs="+", required=True, help="the run's training log(s), in order")
    parser.add_argument("--device", required=True, help="what trained it, for the card")
    parser.add_argument("--data", default=os.environ.get("KX_VISION_SHARED_DATA", "../shared/data"))
    parser.add_argument("--out", default=None, help="folder to write (default: kx_vision/presets/NAME)")
    parser.add_argument("--note", action="append", default=[], help="KEY=TEXT notes for the card (repeatable)")
    args = parser.parse_args(argv)

    from kx_vision.models import presets
    from kx_vision.models.loading import load_model

    entry = presets.PRESETS[args.name]
    scale = entry["config"]["scale"]
    best = os.path.join(args.run, "checkpoints", "best.keras")
    sets = {name: os.path.join(args.data, "sr", name) for name in SETS}
    results, comparison = {}, {"bicubic": {}}
    work = tempfile.mkdtemp(prefix="make_preset-")
    try:
        for set_name, folder in sets.items():
            examples = os.path.join(work, set_name) if set_name in EXAMPLE else None
            rows, mean = score(best, folder, scale, save_examples=examples)
            results[set_name] = {"psnr": round(mean["psnr"], 3), "ssim": round(mean["ssim"], 4)}
            comparison["bicubic"][set_name] = score("bicubic", folder, scale)[1]["psnr"]
            print(f"{set_name}: {mean['psnr']:.3f} dB (bicubic {comparison['bicubic'][set_name]:.2f})", flush=True)
            if examples:
                row = next(r for r in rows if r["image"] == EXAMPLE[set_name])
                shutil.copyfile(row["example"], os.path.join(work, "examples.png"))
        for set_name, folder in sets.items():
            results[set_name]["psnr_self_ensemble"] = round(score(best, folder, scale, self_ensemble=True)[1]["psnr"], 3)
        comparison.update(PUBLISHED[scale])
        comparison["this preset"] = {s: results[s]["psnr"] for s in SETS}
        comparison["this preset, x8 self-ensemble"] = {s: results[s]["psnr_self_ensemble"] for s in SETS}

        minutes = epoch_minutes(args.log)
        plot_curve(minutes, history_psnr(args.run), PUBLISHED[scale], os.path.join(work, "psnr_vs_minutes.png"),
                   f"{args.name}: Set5 x{scale} during training")
        card = {**presets.default_card(args.name), "device": args.device,
                "training_minutes": round(minutes[-1], 1) if minutes else None,
                "results": results, "comparison": comparison,
                **dict(note.split("=", 1) for note in args.note)}
        images = {name: os.path.join(work, name) for name in presets.CARD_IMAGES}
        model = load_model(best)
        half = os.path.join(work, "float16", args.name)
        presets.save(model, half, dtype="float16", card=card)
        set5_half = score(half, sets["Set5"], scale)[1]["psnr"]
        dtype = "float16" if abs(set5_half - results["Set5"]["psnr"]) < 0.01 else "float32"
        card["weights_float16_set5_psnr"] = round(set5_half, 4)
        card["weights_float32_set5_psnr"] = results["Set5"]["psnr"]
        if dtype == "float16":  # the card's plain scores are those of the weights that ship
            for set_name, folder in sets.items():
                mean = score(half, folder, scale)[1]
                results[set_name].update(psnr=round(mean["psnr"], 3), ssim=round(mean["ssim"], 4))
            comparison["this preset"] = {s: results[s]["psnr"] for s in SETS}
        print(f"float16 weights: Set5 {set5_half:.4f} dB against {results['Set5']['psnr']:.4f}: storing {dtype}")
        target = args.out or os.path.join(presets.PRESETS_DIR, args.name)
        presets.save(model, target, dtype=dtype, card=card, overwrite=True, images=images)
        problems = presets.shipped_card_problems(target, args.name)
        if problems:
            print("not shippable: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"wrote {target}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
