"""CPU inference speed of one super-resolution network in every way kx_vision can run it, and in PyTorch
(issue 27, item 4): Keras on TensorFlow, Keras on JAX, ONNX Runtime, LiteRT, OpenVINO, PyTorch eager and
`torch.compile` (when it runs). Same network (the PyTorch copy gets the Keras weights, and its output is
checked against Keras's), same input, same cores.

python -m benchmarks.deploy_speed [--model FILE_OR_PRESET] [--threads 2] [--repeats 3] [--out results.jsonl]
python -m benchmarks.deploy_speed --quick --repeats 1   # a tiny EDSR and tiny images: every path runs end to end

Without `--model`, an EDSR baseline x2 (16 blocks x 64 filters; weights do not change the time) is built.
Cases: a 512 x 512 image upscaled in one call (`tiling.predict_whole`) and a 2048 x 2048 one tiled (256 px
tiles, 32 px overlap: `tiling.predict_tiled`, as `kx-vision predict` does); `--cases` picks some. Each path and
case runs in a process of its own (so its peak RSS is its own), pinned to the same `--threads` cores, with each
runtime's thread count set to match. Before anything is timed, the path's output on a reference input must agree
with the Keras model's within 1e-3 (else the path is reported as failed, untimed); then one warm-up run (compilation,
memory plans, every tile shape) and the median of `--repeats`. One JSON line per path and case (output
megapixels/s, seconds, peak RSS and the RSS once the model was loaded, MiB), also appended to `--out`; then a
Markdown table for BENCHMARKS.md (the command, the date, the device; each path's speed against PyTorch eager) and
the fastest path, the order of `kx_vision.inference.runtimes.FASTEST_FIRST`. The exported paths import Keras
(numpy backend) for kx_vision's tiling: a few hundred MiB of their RSS that a deployment without kx_vision does not carry (compare
the growth, peak minus loaded). A path whose package is missing (PyTorch is not a dependency: `pip install torch`),
or `torch.compile` where it cannot compile, is reported as skipped with the reason.

The PyTorch network is the same EDSR with the Keras weights (`torch_edsr`): kernels HWIO -> OIHW, and each
upsampling conv's output channels permuted, since PyTorch's `pixel_shuffle` takes output channel c at offset
(i, j) from input channel `c*r*r + i*r + j` and TensorFlow's `depth_to_space` from `(i*r + j)*C + c`.
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
REFERENCE_SHAPE = (1, 24, 28, 3)  # the input on which every path is compared with Keras before it is timed
TOLERANCE = 1e-3  # the largest difference from Keras's output on it (float32 paths agree within about 1e-5)


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
        torch.set_num_interop_threads(1)
        return _torch_predict(folder, compiled=path == "torch_compile"), None
    if path.startswith("keras"):
        import keras

        from kx_vision.inference import tiling

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        model = keras.saving.load_model(os.path.join(folder, "model.keras"))
        return tiling.as_predict_fn(model), None
    from kx_vision.inference import runtimes

    module, package = runtimes.PACKAGES[path]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None, f"{package} is not installed (pip install -e '.[export]')"
    return runtimes.load(os.path.join(folder, path), threads=threads)[0], None


def _difference(path, predict, folder):
    """`(difference, note)`: the largest difference from Keras's output on the reference input, or None and why
    the path cannot run here (`torch.compile` without a working compiler)."""
    import numpy as np

    reference = np.load(os.path.join(folder, "reference_input.npy"))
    want = np.clip(np.load(os.path.join(folder, "reference_output.npy")), 0, 1)  # exports clip their outputs
    try:
        got = predict(reference)  # torch.compile compiles here
    except Exception as error:  # noqa: BLE001 - "if it runs" (issue 27): the reason goes into the table
        if path != "torch_compile":
            raise
        return None, f"torch.compile does not run here: {type(error).__name__}: {str(error).strip()[:300]}"
    return float(np.abs(np.clip(got, 0, 1) - want).max()), None


def _measure(args):
    """In the path's own process: one JSON line for the case `args.case`."""
    import numpy as np

    from kx_vision.inference import tiling

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    base = {"benchmark": "deploy_speed", "path": args.measure, "case": args.case, "threads": args.threads,
            "device": cpu_device()}
    predict, note = _load(args.measure, args.folder, args.threads)
    difference, note = _difference(args.measure, predict, args.folder) if predict else (None, note)
    if note:
        emit({**base, "skipped": note})
        return
    if not difference <= TOLERANCE:
        emit({**base, "failed": f"its output differs from Keras's by {difference:.3g} > {TOLERANCE} (not timed)",
              "max_difference_vs_keras": difference})
        return
    scale = json.load(open(os.path.join(args.folder, "torch.json")))["scale"]
    loaded = rss_mib()
    size, tile, overlap = dict((c[0], c[1:]) for c in CASES["quick" if args.quick else "full"])[args.case]
    image = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)

    def run():
        if tile:
            return tiling.predict_tiled(predict, image, scale, tile=tile, overlap=overlap)
        return tiling.predict_whole(predict, image)

    run()  # warm-up: compilation, memory plans, every tile shape
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    emit({**base, "input": [size, size], "tile": tile, "overlap": overlap, "scale": scale,
          "seconds": round(seconds, 4), "output_mpix_per_s": round((size * scale) ** 2 / 1e6 / seconds, 3),
          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "rss_loaded_mib": round(loaded, 1), "max_difference_vs_keras": difference, "repeats": args.repeats,
          "date": time.strftime("%Y-%m-%d")})


def _environment(path, threads):
    backend = {"keras_tensorflow": "tensorflow", "keras_jax": "jax"}.get(path, "numpy")
    # JAX's default CPU compilation (the tests' conftest lowers XLA's optimisation level for speed of compiling)
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_backend_optimization_level"))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(threads), "XLA_FLAGS": xla_flags}
    return env  # JAX's CPU threads: bounded by the cores the process is pinned to


def _child(path, folder, args, case=None):
    command = [sys.executable, "-m", "benchmarks.deploy_speed", "--folder", folder, "--threads", str(args.threads),
               "--repeats", str(args.repeats), *(["--quick"] if args.quick else [])]
    if path == "prepare":
        command += ["--prepare"] + (["--model", args.model] if args.model else [])
    else:
        command += ["--measure", path, "--case", case]
    done = subprocess.run(command, env=_environment("keras_tensorflow" if path == "prepare" else path, args.threads),
                          cwd=REPO, capture_output=True, text=True)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        records.append({"benchmark": "deploy_speed", "path": path, "case": case,
                        "failed": done.stderr.strip()[-1500:]})
    return records


def table(records):
    """A Markdown table of the measured records, fastest first per case, with each path's speed against PyTorch
    eager's in the same case; and the fastest path overall (the geometric mean over the cases)."""
    measured = [r for r in records if "seconds" in r]
    eager = {r["case"]: r["output_mpix_per_s"] for r in measured if r["path"] == "torch_eager"}
    lines = ["| case | path | output MP/s | vs PyTorch eager | seconds | peak RSS MiB | RSS loaded MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(measured, key=lambda r: (r["case"], -r["output_mpix_per_s"])):
        ratio = f"{r['output_mpix_per_s'] / eager[r['case']]:.2f}x" if r["case"] in eager else "-"
        lines.append(f"| {r['case']} | {r['path']} | {r['output_mpix_per_s']} | {ratio} | {r['seconds']} | "
                     f"{r['peak_rss_mib']} | {r['rss_loaded_mib']} |")
    unmeasured = {}
    for r in records:
        if "seconds" not in r and "path" in r:
            failed = (r.get("failed") or "").strip().splitlines()
            reason = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {failed[-1] if failed else ''}"
            unmeasured.setdefault((r["path"], reason.replace("|", "/")), []).append(r.get("case") or "-")
    lines += [f"| {', '.join(cases)} | {path} | {reason} | | | | |" for (path, reason), cases in unmeasured.items()]
    speed = _speeds(measured)
    return "\n".join(lines), max(speed, key=speed.get) if speed else None


def _speeds(measured):
    """`{path: geometric mean of its output MP/s over the cases}`, for the paths measured in every case."""
    totals = {}
    for r in measured:
        totals.setdefault(r["path"], []).append(r["output_mpix_per_s"])
    cases = max((len(v) for v in totals.values()), default=0)
    return {p: statistics.geometric_mean(v) for p, v in totals.items() if len(v) == cases}


def ranking(records):
    """kx_vision's paths fastest first, as `kx_vision.inference.runtimes.FASTEST_FIRST` (Keras at its faster backend's
    place), and the fastest one's speed over PyTorch eager's (None without PyTorch)."""
    speed = _speeds([r for r in records if "seconds" in r])
    keras = max((speed[p] for p in ("keras_tensorflow", "keras_jax") if p in speed), default=None)
    ours = {p: speed[p] for p in ("openvino", "onnx", "litert") if p in speed} | (
        {"keras": keras} if keras is not None else {})
    order = tuple(sorted(ours, key=ours.get, reverse=True))
    ratio = ours[order[0]] / speed["torch_eager"] if order and "torch_eager" in speed else None
    return order, ratio


def _header(args, records, model):
    """The lines above the table in BENCHMARKS.md: the command, the date, the device, the network."""
    command = "python -m benchmarks.deploy_speed " + " ".join(args.argv)
    date = next((r["date"] for r in records if "date" in r), time.strftime("%Y-%m-%d"))
    device = next((r["device"] for r in records if "device" in r), cpu_device())
    return (f"```\n{command.strip()}\n```\n{model}; {args.threads} thread(s) pinned to {args.threads} core(s) of a "
            f"{device}, {date}; median of {args.repeats} run(s) after one warm-up:\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an EDSR .keras file or preset (default: a random EDSR baseline x2)")
    parser.add_argument("--threads", type=int, default=2, help="cores, and threads of each runtime (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (default: 3)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    parser.add_argument("--cases", help="comma-separated subset of the cases (whole_512, tiled_2048; --quick: "
                                        "whole_48, tiled_96)")
    parser.add_argument("--quick", action="store_true", help="a tiny EDSR and tiny images (checks that it runs)")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.prepare:
        return _prepare(args.model, args.folder, args.quick)
    if args.measure:
        return _measure(args)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown --paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    known = [c[0] for c in CASES["quick" if args.quick else "full"]]
    cases = [c for c in (args.cases or ",".join(known)).split(",") if c]
    if set(cases) - set(known):
        parser.error(f"unknown --cases {', '.join(sorted(set(cases) - set(known)))}; choose from {', '.join(known)}")
    if args.out and os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="deploy_speed_") as folder:
        failed = _child("prepare", folder, args)
        if failed:
            raise SystemExit(f"preparing the model and its exports failed:\n{failed[-1].get('failed')}")
        config = json.load(open(os.path.join(folder, "torch.json")))
        for path in paths:
            for case in cases:
                found = _child(path, folder, args, case)
                for record in found:
                    records.append(record)
                    emit(record, args.out)
                if any("skipped" in r for r in found):
                    break  # the other cases would be skipped for the same reason
    model = (f"EDSR x{config['scale']}, {config['num_blocks']} blocks x {config['num_filters']} filters"
             + (f" ({args.model})" if args.model else " (random weights)"))
    text, fastest = table(records)
    order, ratio = ranking(records)
    print(_header(args, records, model) + "\n" + text)
    print(f"fastest: {fastest}")
    print(f"kx_vision's paths, fastest first (kx_vision.inference.runtimes.FASTEST_FIRST): FASTEST_FIRST = {order!r}")
    if ratio is not None:
        print(f"kx_vision's fastest path ({order[0]}) / PyTorch eager: {ratio:.2f}x (issue 27's goal: 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
