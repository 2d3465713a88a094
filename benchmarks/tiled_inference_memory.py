"""Peak memory of tiled super-resolution inference on a large image.

python -m benchmarks.tiled_inference_memory [--size 2048 --scale 4 --tile 256 --overlap 64]

Builds an EDSR baseline (16 blocks, 64 filters; weights do not change memory or time), super-resolves a
`size` x `size` image tile by tile as `python -m kx_vision.predict` does, and prints one JSON line with the
process's peak resident memory (ru_maxrss), the resident memory before inference (Python + Keras +
backend + model), the size of the output image, and the wall time.
"""

import argparse
import json
import resource
import time

from benchmarks import cpu_device, rss_mib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=16)
    parser.add_argument("--num-filters", type=int, default=64)
    args = parser.parse_args()

    import keras
    import numpy as np

    from kx_vision.inference import tiling
    from kx_vision.models import EDSR

    model = EDSR(scale=args.scale, num_blocks=args.num_blocks, num_filters=args.num_filters)
    predict = tiling.as_predict_fn(model)
    rng = np.random.default_rng(0)
    image = rng.random((args.size, args.size, 3), dtype=np.float32)
    predict(image[None, : args.tile, : args.tile])  # warm-up: compile / allocate once
    before = rss_mib()
    start = time.perf_counter()
    out = tiling.predict_tiled(predict, image, args.scale, tile=args.tile, overlap=args.overlap)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "benchmark": "tiled_superres_inference_memory",
        "backend": keras.backend.backend(),
        "device": cpu_device(),
        "model": f"EDSR x{args.scale} {args.num_blocks} blocks {args.num_filters} filters",
        "input": f"{args.size}x{args.size}",
        "output": f"{out.shape[1]}x{out.shape[0]}",
        "tile": args.tile,
        "overlap": args.overlap,
        "output_image_mib": round(out.nbytes / 2**20, 1),
        "input_float_mib": round(image.nbytes / 2**20, 1),
        "rss_before_inference_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "seconds": round(seconds, 1),
    }))


if __name__ == "__main__":
    main()
