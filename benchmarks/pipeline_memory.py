"""Peak memory of super-resolution training against the number of training images (issue 19).

    python -m benchmarks.pipeline_memory                          # the four sets, both pipelines, defaults
    python -m benchmarks.pipeline_memory --sets 150x640x480 --pipelines tf_data --set data.cache=always
    python -m benchmarks.pipeline_memory --keep                   # leave the generated images for a rerun

Writes each set of generated PNGs once (`--root`, default a temporary folder; `make_images`), then trains
the default super-resolution model (`python -m kx_vision.train superres`, default config and settings,
`epochs=1 steps_per_epoch=20`, the packaged validation images) on it in a fresh process per measurement and
prints one JSON line each: the peak resident memory of that process (`ru_maxrss` from `wait4`), its wall
time, and what the run printed about its training data (cached or streamed). `tf_data` runs under the
TensorFlow backend, `numpy` (the `PyDataset` pipeline) under JAX with TensorFlow hidden, as on a JAX-only
machine. The generated images are removed at the end unless `--keep`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import backend_env, cpu_device, emit

REPO = Path(__file__).resolve().parents[1]
SETS = ("150x640x480", "1500x640x480", "200x1024x768", "4000x1024x768")


def make_image(args):
    """One photograph-like image (smooth colour waves, soft noise), written as a PNG at compression level 1
    (quick to write: 4,000 of them at 1024x768 take minutes, not hours)."""
    path, width, height, index = args
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(index)
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):  # three waves per channel; sums of separable terms, so cheap to compute
        fx, fy, fxy = rng.uniform(0.002, 0.03, 3).astype(np.float32)
        px, py, pxy = rng.uniform(0, 6.3, 3).astype(np.float32)
        image[..., channel] = (np.sin(x * fx + px) + np.sin(y * fy + py) + np.sin(x * fxy + pxy) * np.cos(y * fxy)
                               + np.cos(x * fxy + pxy) * np.sin(y * fxy))
    image = (image + 3) * (220 / 6) + rng.integers(-4, 5, (height, width, 3), dtype=np.int8)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def make_images(folder, count, width, height, workers=None):
    """`count` generated `width` x `height` PNGs in `folder` (kept if already there), in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.png"), width, height, i) for i in range(count)
            if not (folder / f"{i:05d}.png").exists()]
    if jobs:
        with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
            list(pool.map(make_image, jobs, chunksize=8))
    return folder


def parse_set(text):
    count, width, height = (int(v) for v in text.split("x"))
    return count, width, height


def measure(folder, pipeline, steps, assignments, scratch):
    """Train in a fresh process; `(peak_rss_mib, seconds, data_line, returncode, tail)`."""
    env = backend_env(pipeline)
    output = Path(scratch) / f"run_{time.time_ns()}"
    command = [sys.executable, "-m", "kx_vision.train", "superres", "--output", str(output),
               "--set", f"data.train={folder}", "--set", "epochs=1", "--set", f"steps_per_epoch={steps}",
               "--set", f"data.pipeline={pipeline}"]
    for assignment in assignments:
        command += ["--set", assignment]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=scratch)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(output, ignore_errors=True)
    data_line = next((line for line in out.splitlines() if line.startswith("training data:")), "")
    return usage.ru_maxrss / 1024, seconds, data_line, process.returncode, out[-2000:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="COUNTxWIDTHxHEIGHT")
    parser.add_argument("--pipelines", nargs="+", default=["tf_data", "numpy"], choices=["tf_data", "numpy"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE",
                        help="extra config values (default: none, the default settings)")
    parser.add_argument("--root", help="where the generated images go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated images")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    root = Path(args.root or tempfile.mkdtemp(prefix="kx_pipeline_memory_"))
    scratch = Path(tempfile.mkdtemp(prefix="kx_pipeline_memory_runs_"))
    try:
        for text in args.sets:
            count, width, height = parse_set(text)
            start = time.perf_counter()
            folder = make_images(root / text, count, width, height)
            written = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            for pipeline in args.pipelines:
                peak, seconds, data_line, code, tail = measure(folder, pipeline, args.steps, args.assignments,
                                                               scratch)
                record = {
                    "benchmark": "pipeline_memory", "images": count, "size": f"{width}x{height}",
                    "decoded_mib": round(count * width * height * 3 / 2**20, 1), "png_mib": round(disk, 1),
                    "pipeline": pipeline, "backend": "jax" if pipeline == "numpy" else "tensorflow",
                    "settings": args.assignments or "defaults", "steps": args.steps,
                    "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1), "data": data_line,
                    "device": cpu_device(),
                    "date": time.strftime("%Y-%m-%d"), "generate_s": round(written, 1),
                }
                if code:
                    record["error"] = tail
                emit(record, args.out)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
