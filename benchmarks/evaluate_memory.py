"""Peak memory of `evaluate segmentation` against the number of images evaluated (issue 19).

    python -m benchmarks.evaluate_memory                        # 40 and 400 pairs at 360x480, TensorFlow
    python -m benchmarks.evaluate_memory --backends tensorflow jax --counts 40 400
    python -m benchmarks.evaluate_memory --source /tmp/old      # another checkout's kx_vision (before/after)

Writes `max(--counts)` generated 360x480 image/mask pairs once (PNG images from `pipeline_memory.make_image`,
11-class block masks with void 11), saves a tiny untrained U-Net (the `simple` backbone, 11 classes), then
runs `python -m kx_vision.evaluate segmentation --limit N` in a fresh process per measurement and prints one
JSON line each: the peak resident memory of that process (`ru_maxrss` from `wait4`), its wall time, and the
images it scored. `jax` runs with TensorFlow hidden (`tests/no_tensorflow`), as on a JAX-only machine.
`--source` runs the `kx_vision` package of another folder (e.g. `git archive` of an older commit) on the same
files and model. The generated files are removed at the end unless `--root` names a folder to keep them in.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import backend_env, cpu_device, emit
from benchmarks.pipeline_memory import make_image

REPO = Path(__file__).resolve().parents[1]
MODEL = """
import sys, keras
from kx_vision.backbones import simple_backbone
from kx_vision.models import UNet
keras.utils.set_random_seed(0)
UNet(num_classes=11, backbone=simple_backbone(), max_filters=32).save(sys.argv[1])
"""


def make_mask(args):
    """An 11-class mask of 24x24-pixel blocks, a tenth of them void (11), as an 8-bit PNG."""
    path, width, height, index = args
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(10_000 + index)
    blocks = rng.integers(0, 12, (height // 24 + 1, width // 24 + 1), dtype=np.uint8)
    mask = np.kron(blocks, np.ones((24, 24), np.uint8))[:height, :width]
    Image.fromarray(mask).save(path, compress_level=1)


def make_pairs(root, count, width, height):
    """`count` image/mask pairs in `root/images` and `root/masks` (kept if already there), in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = []
    for folder, make in (("images", make_image), ("masks", make_mask)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        jobs += [(make, (str(root / folder / f"{i:05d}.png"), width, height, i)) for i in range(count)
                 if not (root / folder / f"{i:05d}.png").exists()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_call, jobs, chunksize=8))


def _call(job):
    function, args = job
    function(args)


def measure(root, model, count, backend, source, scratch):
    """Evaluate in a fresh process; `(peak_rss_mib, seconds, result, returncode, tail)`."""
    command = [sys.executable, "-m", "kx_vision.evaluate", "segmentation", "--model", str(model),
               "--images", str(root / "images"), "--masks", str(root / "masks"), "--num-classes", "11",
               "--ignore-class", "11", "--limit", str(count), "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=backend_env(backend, source), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=scratch)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    result = json.loads(last) if code == 0 and last.startswith("{") else {}
    return usage.ru_maxrss / 1024, seconds, result, code, out[-2000:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[40, 400])
    parser.add_argument("--size", default="480x360", help="WIDTHxHEIGHT (default: %(default)s, CamVid's)")
    parser.add_argument("--backends", nargs="+", default=["tensorflow"], choices=["tensorflow", "jax"])
    parser.add_argument("--source", default=str(REPO), help="folder holding the kx_vision package to run")
    parser.add_argument("--root", help="where the generated pairs and model go, kept (default: temporary)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.size.split("x"))
    root = Path(args.root or tempfile.mkdtemp(prefix="kx_evaluate_memory_"))
    scratch = Path(tempfile.mkdtemp(prefix="kx_evaluate_memory_runs_"))
    try:
        start = time.perf_counter()
        make_pairs(root, max(args.counts), width, height)
        model = root / "unet.keras"
        if not model.exists():
            subprocess.run([sys.executable, "-c", MODEL, str(model)], env=backend_env("tensorflow", REPO),
                           check=True, cwd=scratch)
        generated = time.perf_counter() - start
        for backend in args.backends:
            for count in args.counts:
                peak, seconds, result, code, tail = measure(root, model, count, backend, args.source, scratch)
                record = {
                    "benchmark": "evaluate_memory", "images": count, "size": f"{width}x{height}",
                    "decoded_mib": round(count * width * height * 4 / 2**20, 1), "backend": backend,
                    "source": args.source, "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1),
                    "scored": result.get("images"), "miou": result.get("miou"),
                    "device": cpu_device(),
                    "date": time.strftime("%Y-%m-%d"), "generate_s": round(generated, 1),
                }
                if code:
                    record["error"] = tail
                emit(record, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
