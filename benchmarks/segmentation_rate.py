"""Images/s of the segmentation input pipelines at 360x480, streamed and cached (issue 19).

    python -m benchmarks.segmentation_rate                    # CamVid from ../shared/data when present
    python -m benchmarks.segmentation_rate --images DIR --masks DIR --epochs 2

For each pipeline (`tf_data` under TensorFlow; `numpy`, the `PyDataset`, under JAX with TensorFlow hidden)
and each way of reading the pairs (`cache`: `data.cache=always`, decoded once and kept; `stream`:
`data.cache=never`, decoded every epoch by worker threads), in a fresh process, the task's own
`build_data` with the default augmentation (crop, flip, rotation within 10 degrees: `--rotate`, jitter), batches of 8,
`data.image_size=360,480`: a first epoch is drawn untimed (it fills the cache), then `--epochs` epochs are
timed, batches drawn as fast as the pipeline makes them. Without CamVid, 120 pairs of 480x360 JPEG frames
and PNG masks are generated.

Each prints one JSON line: images/s (wall clock), images per CPU-second of the whole process (user + system
time of all its threads): the rate per core, which depends less on what else the machine runs, and the
process's peak RSS.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import backend_env, cpu_device, emit

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "seg" / "camvid"
MODES = {"cache": "always", "stream": "never"}


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _epoch(train, pipeline):
    """Draw one epoch of batches as `model.fit` would; the number of images."""
    count = 0
    if pipeline == "numpy":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(train.workers) as pool:
            for images, _ in pool.map(train.__getitem__, range(len(train))):
                count += len(images)
        train.on_epoch_end()
    else:
        for images, _ in train:
            count += int(images.shape[0])
    return count


def one(images, masks, pipeline, mode, epochs, rotate):
    """Runs in the measuring process: one JSON record."""
    import keras

    from kx_vision import config as config_lib
    from kx_vision.tasks import segmentation

    # Validation: the same pairs (not timed; a split would leave out a group of the training frames).
    config = config_lib.load(segmentation.SegmentationConfig, None, [
        f"data.train_images={images}", f"data.train_masks={masks}", f"data.val_images={images}",
        f"data.val_masks={masks}", "data.image_size=360,480", "data.batch_size=8", f"data.pipeline={pipeline}",
        f"data.cache={MODES[mode]}", f"data.rotate_degrees={rotate}"])
    data = segmentation.SegmentationTask(config).build_data()
    _epoch(data.train, pipeline)  # warm-up: fills the cache, starts the threads
    start, cpu_start = time.perf_counter(), cpu_seconds()
    count = sum(_epoch(data.train, pipeline) for _ in range(epochs))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {"benchmark": "segmentation_rate", "pipeline": pipeline, "backend": keras.backend.backend(),
            "mode": mode, "image_size": "360x480", "batch": config.data.batch_size, "rotate_degrees": float(rotate),
            "pairs": len(data.extras["train_reader"]), "epochs": epochs, "images_per_s": round(count / seconds, 1),
            "images_per_cpu_s": round(count / cpu, 1), "cpu_busy": round(cpu / seconds, 2),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "device": cpu_device(),
            "date": time.strftime("%Y-%m-%d")}


def make_pairs(root, count, seed=0):
    """`count` generated 480x360 frames (JPEG) with 11-class masks (PNG) in `root/images`, `root/masks`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:360, 0:480]
    for i in range(count):
        mask = rng.integers(0, 11, (9, 12))[yy // 40, xx // 40].astype(np.uint8)
        image = (mask[..., None] * 20 + rng.normal(0, 20, (360, 480, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"seq{i // 10}_{i:05d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"seq{i // 10}_{i:05d}.png")
    return root / "images", root / "masks"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="training frames (default: CamVid's train, else 120 generated frames)")
    parser.add_argument("--masks", help="their masks")
    parser.add_argument("--pipelines", nargs="+", default=["tf_data", "numpy"], choices=["tf_data", "numpy"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (after one untimed)")
    parser.add_argument("--rotate", type=float, default=10.0, help="data.rotate_degrees (default: %(default)s)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--one", nargs=4, metavar=("IMAGES", "MASKS", "PIPELINE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(one(*args.one, epochs=args.epochs, rotate=args.rotate)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="kx_segmentation_rate_") as root:
        if args.images:
            images, masks = args.images, args.masks
        elif (CAMVID / "train").is_dir():
            images, masks = CAMVID / "train", CAMVID / "trainannot"
        else:
            images, masks = make_pairs(Path(root), 120)
        for pipeline in args.pipelines:
            env = backend_env(pipeline)
            for mode in args.modes:
                done = subprocess.run([sys.executable, "-m", "benchmarks.segmentation_rate", "--one", str(images),
                                       str(masks), pipeline, mode, "--epochs", str(args.epochs),
                                       "--rotate", str(args.rotate)],
                                      env=env, capture_output=True, text=True, cwd=REPO)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                record = json.loads(lines[-1]) if lines else {
                    "benchmark": "segmentation_rate", "pipeline": pipeline, "mode": mode,
                    "error": (done.stderr or done.stdout)[-1500:]}
                emit(record, args.out)


if __name__ == "__main__":
    main()
