"""CPU inference speed of one super-resolution network in every way kx_vision can run it, and in PyTorch
(issue 27, item 4): Keras on TensorFlow, Keras on JAX, ONNX Runtime, LiteRT, OpenVINO, PyTorch eager and
`torch.compile` (when it runs). Same network (the PyTorch copy gets the Keras weights, and its output is
checked against Keras's), same input, same cores.

python -m benchmarks.deploy_speed [--model FILE_OR_PRESET] [--threads 2] [--repeats 3] [--out results.jsonl]
python -m benchmarks.deploy_speed --quick     # a tiny EDSR and tiny images: every path runs, nothing measured

Without `--model`, an EDSR baseline x2 (16 blocks x 64 filters; weights do not change the time) is built.
Cases: a 512 x 512 image upscaled in one call (`inference.predict_whole`) and a 2048 x 2048 one tiled (256 px
tiles, 32 px overlap: `inference.predict_tiled`, as `kx-vision predict` does). Each path runs in a process of
its own (so its peak RSS is its own), pinned to the same `--threads` cores, with each runtime's thread count
set to match; one warm-up run, then the median of `--repeats`. One JSON line per path and case: output
megapixels/s, seconds, peak RSS and the RSS once the model was loaded (MiB); then a table and the fastest path.
The exported paths import Keras (numpy backend) for kx_vision's tiling: a few hundred MiB of their RSS that a
deployment without kx_vision does not carry (compare the growth, peak minus loaded). A path whose package is
missing (PyTorch is not a dependency: `pip install torch`) is reported as skipped.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import REPO, cpu_device, emit, rss_mib

PATHS = ("keras_tensorflow", "keras_jax", "onnx", "litert", "openvino", "torch_eager", "torch_compile")
CASES = {"full": [("whole_512", 512, 0, 0), ("tiled_2048", 2048, 256, 32)],
         "quick": [("whole_48", 48, 0, 0), ("tiled_96", 96, 40, 8)]}
REFERENCE_SHAPE = (1, 24, 28, 3)  # the input on which the PyTorch copy is compared with Keras


def _prepare(model_spec, folder, quick):
    """In a TensorFlow process: the model as `model.keras`, its three exports, its weights for PyTorch
    (`torch.npz`, `torch.json`) and a reference input and Keras output."""
    import keras
    import numpy as np

    from kx_vision.export import export_model
    from kx_vision.models import EDSR
    from kx_vision.models.loading import load_model_or_preset

    if model_spec:
        model = load_model_or_preset(model_spec)
    else:
        model = EDSR(scale=2, num_blocks=1, num_filters=8) if quick else EDSR(scale=2, num_blocks=16, num_filters=64)
    if not isinstance(model, EDSR) or model.blur:
        raise SystemExit(f"{model_spec}: this benchmark takes an EDSR without blur (its PyTorch copy is an EDSR)")
    model.save(os.path.join(folder, "model.keras"))
    for format in ("onnx", "litert", "openvino"):
        export_model(model, os.path.join(folder, format), format=format, uint8_endpoint=False)
    weights = {}
    for layer in ["head_conv", "body_conv", "tail_conv"] + [f"upsample_{i}_conv" for i in range(8)]:
        if any(candidate.name == layer for candidate in model.layers):
            kernel, bias = model.get_layer(layer).get_weights()
            weights[f"{layer}/kernel"], weights[f"{layer}/bias"] = kernel, bias
    for i in range(model.num_blocks):
        block = model.get_layer(f"block_{i}")
        for name, conv in (("conv1", block.conv1), ("conv2", block.conv2)):
            weights[f"block_{i}_{name}/kernel"], weights[f"block_{i}_{name}/bias"] = conv.get_weights()
    np.savez(os.path.join(folder, "torch.npz"), **weights)
    with open(os.path.join(folder, "torch.json"), "w") as f:
        json.dump(model.get_config(), f)
    x = np.random.default_rng(0).random(REFERENCE_SHAPE).astype("float32")
    np.save(os.path.join(folder, "reference_input.npy"), x)
    np.save(os.path.join(folder, "reference_output.npy"), keras.ops.convert_to_numpy(model(x)))


def torch_edsr(folder):
    """The EDSR of `folder/torch.json` in PyTorch (NCHW inside), with the Keras weights: kernels transposed
    to (out, in, h, w), and each upsampling conv's output channels reordered for PyTorch's pixel shuffle
    (channel `c * r * r + k` there is `k * C + c` in Keras's depth_to_space)."""
    import numpy as np
    import torch
    from torch import nn

    from kx_vision.models.edsr import upsample_factors

    config = json.load(open(os.path.join(folder, "torch.json")))
    weights = np.load(os.path.join(folder, "torch.npz"))
    factors = upsample_factors(config["scale"])
    mean = torch.tensor(config["rgb_mean"] or (0.0, 0.0, 0.0)).reshape(1, 3, 1, 1)

    def conv(name, order=None):
        kernel, bias = weights[f"{name}/kernel"], weights[f"{name}/bias"]
        layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0], padding=kernel.shape[0] // 2)
        order = np.arange(kernel.shape[3]) if order is None else order
        layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)[order]))
        layer.bias.data = torch.from_numpy(np.ascontiguousarray(bias[order]))
        return layer

    def shuffle_order(channels, r):
        base = channels // (r * r)
        return np.array([k * base + c for c in range(base) for k in range(r * r)])

    class EDSR(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.body, self.tail = conv("head_conv"), conv("body_conv"), conv("tail_conv")
            self.blocks = nn.ModuleList(nn.ModuleList([conv(f"block_{i}_conv1"), conv(f"block_{i}_conv2")])
                                        for i in range(config["num_blocks"]))
            self.ups = nn.ModuleList(
                conv(f"upsample_{i}_conv", shuffle_order(weights[f"upsample_{i}_conv/kernel"].shape[3], r))
                for i, r in enumerate(factors))

        def forward(self, x):
            x = self.head(x - mean)
            skip = x
            for conv1, conv2 in self.blocks:
                x = x + conv2(torch.relu(conv1(x))) * config["residual_scale"]
            x = self.body(x) + skip
            for up, r in zip(self.ups, factors):
                x = nn.functional.pixel_shuffle(up(x), r)
            return self.tail(x) + mean

    return EDSR().eval()


def _torch_predict(folder, compiled):
    import numpy as np
    import torch

    net = torch_edsr(folder)
    if compiled:
        net = torch.compile(net)

    def predict(batch):
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
            return net(x).numpy().transpose(0, 2, 3, 1)

    return predict


def _load(path, folder, threads):
    """`(predict, note)` for one path; `predict` None (and the reason) when its package is missing."""
    import importlib.util

    if path.startswith("torch"):
        if importlib.util.find_spec("torch") is None:
            return None, "PyTorch is not installed (pip install torch)"
        import torch

        torch.set_num_threads(threads)
        return _torch_predict(folder, compiled=path == "torch_compile"), None
    if path.startswith("keras"):
        import keras

        from kx_vision import inference

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        model = keras.saving.load_model(os.path.join(folder, "model.keras"))
        return inference.as_predict_fn(model), None
    from kx_vision import runtimes

    module, package = runtimes.PACKAGES[path]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None, f"{package} is not installed (pip install -e '.[export]')"
    return runtimes.load(os.path.join(folder, path), threads=threads)[0], None


def _measure(args):
    """In the path's own process: one JSON line per case."""
    import numpy as np

    from kx_vision import inference

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    base = {"benchmark": "deploy_speed", "path": args.measure, "threads": args.threads, "device": cpu_device()}
    predict, note = _load(args.measure, args.folder, args.threads)
    if predict is None:
        emit({**base, "skipped": note})
        return
    scale = json.load(open(os.path.join(args.folder, "torch.json")))["scale"]
    reference = np.load(os.path.join(args.folder, "reference_input.npy"))
    want = np.clip(np.load(os.path.join(args.folder, "reference_output.npy")), 0, 1)  # exports clip their outputs
    difference = float(np.abs(np.clip(predict(reference), 0, 1) - want).max())
    loaded = rss_mib()
    for name, size, tile, overlap in CASES["quick" if args.quick else "full"]:
        image = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)

        def run(image=image, tile=tile, overlap=overlap):
            if tile:
                return inference.predict_tiled(predict, image, scale, tile=tile, overlap=overlap)
            return inference.predict_whole(predict, image)

        run()  # warm-up: compilation, memory plans, every tile shape
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        emit({**base, "case": name, "input": [size, size], "scale": scale, "seconds": round(seconds, 4),
              "output_mpix_per_s": round((size * scale) ** 2 / 1e6 / seconds, 3),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "rss_loaded_mib": round(loaded, 1), "max_difference_vs_keras": difference,
              "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")})


def _environment(path, threads):
    backend = {"keras_tensorflow": "tensorflow", "keras_jax": "jax"}.get(path, "numpy")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(threads)}
    return env  # JAX's CPU threads: bounded by the cores the process is pinned to


def _child(path, folder, args, extra=()):
    command = [sys.executable, "-m", "benchmarks.deploy_speed", "--folder", folder, "--threads", str(args.threads),
               "--repeats", str(args.repeats), *(["--quick"] if args.quick else []), *extra]
    if path == "prepare":
        command += ["--prepare"] + (["--model", args.model] if args.model else [])
    else:
        command += ["--measure", path]
    done = subprocess.run(command, env=_environment("keras_tensorflow" if path == "prepare" else path, args.threads),
                          cwd=REPO, capture_output=True, text=True)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        records.append({"benchmark": "deploy_speed", "path": path, "failed": done.stderr.strip()[-1500:]})
    return records


def table(records):
    """A Markdown table of the measured records, fastest first per case; and the fastest path overall."""
    measured = [r for r in records if "seconds" in r]
    lines = ["| case | path | output MP/s | seconds | peak RSS MiB | RSS loaded MiB |", "|---|---|---|---|---|---|"]
    for r in sorted(measured, key=lambda r: (r["case"], -r["output_mpix_per_s"])):
        lines.append(f"| {r['case']} | {r['path']} | {r['output_mpix_per_s']} | {r['seconds']} | "
                     f"{r['peak_rss_mib']} | {r['rss_loaded_mib']} |")
    lines += [f"| - | {r['path']} | skipped: {r.get('skipped') or 'failed'} | | | |"
              for r in records if "seconds" not in r and "path" in r]
    totals = {}
    for r in measured:
        totals.setdefault(r["path"], []).append(r["output_mpix_per_s"])
    cases = max((len(v) for v in totals.values()), default=0)
    complete = {p: statistics.geometric_mean(v) for p, v in totals.items() if len(v) == cases}
    fastest = max(complete, key=complete.get) if complete else None
    return "\n".join(lines), fastest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an EDSR .keras file or preset (default: a random EDSR baseline x2)")
    parser.add_argument("--threads", type=int, default=2, help="cores, and threads of each runtime (default: 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    parser.add_argument("--quick", action="store_true", help="a tiny EDSR and tiny images (checks that it runs)")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        return _prepare(args.model, args.folder, args.quick)
    if args.measure:
        return _measure(args)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown --paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    records = []
    with tempfile.TemporaryDirectory(prefix="deploy_speed_") as folder:
        failed = _child("prepare", folder, args)
        if failed:
            raise SystemExit(f"preparing the model and its exports failed:\n{failed[-1].get('failed')}")
        for path in paths:
            for record in _child(path, folder, args):
                records.append(record)
                emit(record, args.out)
    text, fastest = table(records)
    print(text)
    print(f"fastest: {fastest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
