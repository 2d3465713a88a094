"""This card's reachable bf16 matrix-product rate, in JAX: one JSON line (the best of the sizes tried).

    python -m benchmarks.matmul_peak [--sizes 8192 16384] [--repeats 10] [--out FILE]

Square `n x n x n` products of random bfloat16 matrices (float32 accumulation, as XLA does on GPUs), jitted;
after three warm-up products, `--repeats` products are queued and timed until the last one is done. The
rate is `2 n^3` FLOPs per product. It is the denominator of the training steps' "fraction of peak".
"""

import argparse
import time

from benchmarks import emit


def measure(n, repeats, dtype="bfloat16"):
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    product = jax.jit(jnp.matmul)
    for _ in range(3):
        product(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / repeats
    return seconds, 2 * n**3 / seconds / 1e12


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matmul_peak", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    import jax

    device = jax.devices()[0]
    results = {n: measure(n, args.repeats) for n in args.sizes}
    best = max(results, key=lambda n: results[n][1])
    record = {"benchmark": "matmul_peak", "dtype": "bfloat16", "device": f"{device.platform}:{device.device_kind}",
              "jax": jax.__version__, "size": best, "product_ms": round(results[best][0] * 1e3, 3),
              "tflops": round(results[best][1], 2),
              "by_size": {str(n): round(tflops, 2) for n, (_, tflops) in results.items()},
              "date": time.strftime("%Y-%m-%d")}
    emit(record, args.out)


if __name__ == "__main__":
    main()
