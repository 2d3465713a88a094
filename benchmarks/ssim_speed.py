"""Milliseconds of `kx_vision.metrics.ssim`, compiled, on a training batch and on an evaluation image.

    python -m benchmarks.ssim_speed                                   # both backends, each in a process
    python -m benchmarks.ssim_speed --source /tmp/old                 # another checkout's kx_vision (before)

Cases: `train_16x48` (a batch of 16 HR patches of 48x48, x2's shave of 2: what the super-resolution task's
training metric computes every step) and `eval_512` (one 512x512 image, shave 2: an evaluation image). Y
channel, float32 in [0, 1]. The function is compiled (`tf.function` / `jax.jit`) and warmed up, then timed
over `--repeats` calls after waiting for the result; the median of five such rounds is printed, one JSON
line per backend and case.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import REPO, backend_env, cpu_device, emit

CASES = {"train_16x48": (16, 48), "eval_512": (1, 512)}


def one(case, repeats):
    """Runs in the measuring process: one record."""
    import keras
    import numpy as np

    import kx_vision
    from kx_vision.metrics import ssim

    count, side = CASES[case]
    rng = np.random.default_rng(0)
    a = rng.random((count, side, side, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(lambda x, y: ssim(x, y, shave=2))
        wait = jax.block_until_ready
    else:
        import tensorflow as tf

        compiled = tf.function(lambda x, y: ssim(x, y, shave=2))
        wait = np.asarray
    wait(compiled(a, b))
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            result = compiled(a, b)
        wait(result)
        rounds.append((time.perf_counter() - start) / repeats * 1000)
    return {"benchmark": "ssim_speed", "backend": keras.backend.backend(), "case": case,
            "ms": round(statistics.median(rounds), 3), "repeats": repeats, "device": cpu_device(),
            "kx_vision": str(Path(kx_vision.__file__).parents[1]),
            "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--source", default=str(REPO), help="the checkout whose kx_vision is measured")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.repeats)), flush=True)
        return
    if not (Path(args.source) / "kx_vision").is_dir():
        parser.error(f"--source {args.source}: no kx_vision package there")
    for backend in args.backends:
        for case in args.cases:
            # Run from `--source` (`python -m` puts the working folder first on sys.path, so its kx_vision is
            # the one measured), with this checkout's benchmarks after it.
            env = backend_env(backend, args.source)
            env["PYTHONPATH"] += os.pathsep + str(REPO)
            done = subprocess.run([sys.executable, "-m", "benchmarks.ssim_speed", "--one", case,
                                   "--repeats", str(args.repeats)], env=env, capture_output=True, text=True,
                                  cwd=args.source)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            record = json.loads(lines[-1]) if lines else {"benchmark": "ssim_speed", "backend": backend,
                                                          "case": case, "error": done.stderr[-1500:]}
            if "kx_vision" in record and Path(record["kx_vision"]) != Path(args.source).resolve():
                record["error"] = f"measured the kx_vision of {record['kx_vision']}, not --source"
            emit({**record, "source": args.source}, args.out)


if __name__ == "__main__":
    main()
