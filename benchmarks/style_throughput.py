"""Stylisation throughput of the style-transfer network (inference), images/s.

python -m benchmarks.style_throughput [--sizes 256 1024 --batch 1 --repeats 5]

Times `model.predict_on_batch` (compiled) on random images after one warm-up call; prints one JSON line
per size with the median time and images/s.
"""

import argparse
import json
import statistics
import time

from benchmarks import cpu_device


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import keras
    import numpy as np

    from kx_vision.models import StyleTransferNet

    model = StyleTransferNet()
    for size in args.sizes:
        x = np.random.default_rng(0).random((args.batch, size, size, 3), dtype=np.float32)
        model.predict_on_batch(x)  # warm-up: compile for this size
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.predict_on_batch(x)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps({
            "benchmark": "style_inference", "backend": keras.backend.backend(),
            "device": cpu_device(), "precision": "float32",
            "batch": args.batch, "size": f"{size}x{size}", "step_s": round(median, 4),
            "images_per_s": round(args.batch / median, 3),
        }))


if __name__ == "__main__":
    main()
