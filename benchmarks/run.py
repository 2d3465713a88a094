"""kx_vision's benchmark harness: one JSON line per measurement, on whatever device is present.

    python -m benchmarks.run                      # everything, full sizes (meant for a GPU)
    python -m benchmarks.run --only edsr_train --precision float32 --configs 16x48
    python -m benchmarks.run --quick              # reduced sizes, to check the harness on a CPU

Benchmarks (`--only`, comma-separated):
- `edsr_train`: EDSR-baseline x2 training step through `model.fit`, as `python -m kx_vision.train superres`
  compiles it (kx_vision's Adam with the cosine schedule, L1 loss, the Y-PSNR metric), at batch 16 / LR 48 px
  and batch 64 / LR 96 px, float32 and mixed_bfloat16. Batches are random images already on the device, as in
  the PyTorch peer (`../shared/bench/torch_edsr.py`), whose FLOP count (3 x forward) is used for TFLOP/s.
- `unet_train`: U-Net over ResNet50 (random weights) training step at 384x480, batch 8.
- `style_infer`: style network inference at 1024x1024.
- `sr_infer`: EDSR-baseline x4 inference of a 1024x1024 image (output 4096x4096).
- `pipeline`: input-pipeline throughput (images/s) of the real super-resolution pipelines (tf.data and the
  NumPy PyDataset) on ../shared/data/sr/T91 + BSD200 (or `--pipeline-data`), and the segmentation tf.data
  pipeline on CamVid, on the CPU.

Without TensorFlow (the GPU machine, JAX backend) `edsr_train`, `sr_infer`, `style_infer` and the NumPy
`pipeline` run; `benchmarks/device.sh` runs `edsr_train` there one precision and one config per process.

Timing: each measurement runs `--repeats` timed rounds of `--steps` steps after one warm-up round (compilation
excluded) and reports the median; a round ends by reading a value back from the device, so queued work is
counted.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SHARED_DATA = Path(os.environ.get("KX_VISION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform}:{getattr(device, 'device_kind', '')}"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"gpu:{tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


def emit(record, out=None):
    import keras

    record = {"backend": keras.backend.backend(), "device": device_name(), **record,
              "date": time.strftime("%Y-%m-%d")}
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def edsr_train_flops(batch, lr_size, scale=2, blocks=16, filters=64):
    """FLOPs of one training step (3 x forward), counted as the PyTorch peer counts them."""
    conv = lambda cin, cout: 2 * 9 * cin * cout  # noqa: E731
    forward, hr = conv(3, filters) + (2 * blocks + 1) * conv(filters, filters), 1
    for _ in range(int(math.log2(scale))):
        forward += conv(filters, 4 * filters) * hr
        hr *= 4
    forward += conv(filters, 3) * hr
    return 3 * forward * batch * lr_size**2


class _DeviceBatches:
    """The same few batches, converted to backend tensors once, served by a PyDataset."""

    def __new__(cls, xs, ys, steps):
        import keras

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return steps

            def __getitem__(self, index):
                return xs[index % len(xs)], ys[index % len(ys)]

        return Batches()


class _EpochTimer:
    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))  # wait for the device
                self.times.append(time.perf_counter() - self.start)

        return Timer()


def time_fit(model, xs, ys, steps, repeats):
    """`(seconds, warmup_seconds)`: median seconds per `model.fit` step over `repeats` epochs of `steps` steps,
    and the length of the warm-up epoch before them (compilation included)."""
    timer = _EpochTimer()
    model.fit(_DeviceBatches(xs, ys, steps), epochs=repeats + 1, callbacks=[timer], verbose=0)
    return statistics.median(timer.times[1:]) / steps, timer.times[0]


def step_cost_analysis(model, x, y, seconds):
    """On JAX, XLA's cost analysis of the model's training step (`jax.stages.Lowered.cost_analysis`, no
    compilation): the FLOPs and bytes it counts, and what they make per second at the measured step time,
    to set a step against the card's roofline (issue 16: what a missed target's profile shows). Taken after
    the timing; `{}` on other backends, the error in one field if JAX cannot say."""
    import keras

    if keras.backend.backend() != "jax":
        return {}
    try:
        import jax

        state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
        cost = jax.jit(model.train_step).lower(state, (x, y)).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops, moved = cost.get("flops"), cost.get("bytes accessed")
        found = {"xla_gflop": round(flops / 1e9, 2) if flops else None,
                 "xla_gbytes": round(moved / 1e9, 3) if moved else None}
        if flops and moved:
            found.update(xla_tflops=round(flops / seconds / 1e12, 2), xla_tbytes_per_s=round(moved / seconds / 1e12, 3),
                         xla_flop_per_byte=round(flops / moved, 1))
        return found
    except Exception as error:  # noqa: BLE001 - a diagnostic, never a reason to lose the measurement
        return {"xla_cost_error": f"{type(error).__name__}: {error}"[:300]}


def random_batches(shape_x, shape_y, count=4, labels=None):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    xs = [keras.ops.convert_to_tensor(rng.random(shape_x, dtype=np.float32)) for _ in range(count)]
    if labels:
        ys = [keras.ops.convert_to_tensor(rng.integers(0, labels, shape_y).astype("int32")) for _ in range(count)]
    else:
        ys = [keras.ops.convert_to_tensor(rng.random(shape_y, dtype=np.float32)) for _ in range(count)]
    return xs, ys


def bench_edsr_train(args):
    import keras

    from kx_vision import config as config_lib
    from kx_vision.tasks import superres
    from kx_vision.training import trainer

    blocks, filters = (4, 32) if args.quick else (16, 64)
    for precision in args.precision:
        for batch, lr_size in args.configs:
            keras.config.set_dtype_policy(precision)
            keras.utils.set_random_seed(0)
            config = config_lib.load(superres.Config, None, [
                f"model.num_blocks={blocks}", f"model.num_filters={filters}", f"data.batch_size={batch}",
                f"data.patch_size={lr_size * 2}", f"precision={precision}"])
            task = superres.SuperResTask(config)
            model = task.build_model()
            model.compile(optimizer=trainer.build_optimizer(config, 10_000), loss=task.build_loss(),
                          metrics=task.build_metrics())
            xs, ys = random_batches((batch, lr_size, lr_size, 3), (batch, lr_size * 2, lr_size * 2, 3))
            seconds, warmup = time_fit(model, xs, ys, args.steps, args.repeats)
            flops = edsr_train_flops(batch, lr_size, 2, blocks, filters)
            emit({"benchmark": "edsr_train", "model": f"EDSR x2 {blocks} blocks {filters} filters",
                  "precision": precision, "batch": batch, "size": lr_size, "step_ms": round(seconds * 1e3, 3),
                  "images_per_s": round(batch / seconds, 1), "tflops": round(flops / seconds / 1e12, 2),
                  "steps": args.steps, "repeats": args.repeats, "warmup_s": round(warmup, 2),
                  **step_cost_analysis(model, xs[0], ys[0], seconds)}, args.out)
            keras.config.set_dtype_policy("float32")


def bench_unet_train(args):
    import keras

    from kx_vision.losses import SegmentationLoss
    from kx_vision.models import UNet
    from kx_vision.training.optimizers import Adam

    height, width, batch = (96, 128, 2) if args.quick else (384, 480, 8)
    for precision in args.precision:
        keras.config.set_dtype_policy(precision)
        model = UNet(num_classes=12, backbone="resnet50", backbone_weights=None)
        model.compile(optimizer=Adam(1e-3), loss=SegmentationLoss(12, ignore_class=11))
        xs, ys = random_batches((batch, height, width, 3), (batch, height, width, 1), labels=12)
        seconds, warmup = time_fit(model, xs, ys, args.steps, args.repeats)
        emit({"benchmark": "unet_train", "model": "U-Net ResNet50", "precision": precision, "batch": batch,
              "size": f"{height}x{width}", "step_ms": round(seconds * 1e3, 3),
              "images_per_s": round(batch / seconds, 2), "tflops": None, "warmup_s": round(warmup, 2)}, args.out)
        keras.config.set_dtype_policy("float32")


def _time_predict(model, x, repeats):
    import keras

    keras.ops.convert_to_numpy(model.predict_on_batch(x))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(model.predict_on_batch(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_style_infer(args):
    import keras
    import numpy as np

    from kx_vision.models import StyleTransferNet

    size = 256 if args.quick else 1024
    for precision in args.precision:
        keras.config.set_dtype_policy(precision)
        model = StyleTransferNet()
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        seconds = _time_predict(model, x, args.repeats)
        emit({"benchmark": "style_infer", "precision": precision, "batch": 1, "size": size,
              "step_ms": round(seconds * 1e3, 2), "images_per_s": round(1 / seconds, 2), "tflops": None}, args.out)
        keras.config.set_dtype_policy("float32")


def bench_sr_infer(args):
    import keras
    import numpy as np

    from kx_vision.models import EDSR

    size, blocks, filters = (128, 4, 32) if args.quick else (1024, 16, 64)
    for precision in args.precision:
        keras.config.set_dtype_policy(precision)
        model = EDSR(scale=4, num_blocks=blocks, num_filters=filters)
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        seconds = _time_predict(model, x, args.repeats)
        emit({"benchmark": "sr_infer", "model": f"EDSR x4 {blocks} blocks {filters} filters",
              "precision": precision, "batch": 1, "size": size, "step_ms": round(seconds * 1e3, 2),
              "images_per_s": round(1 / seconds, 3), "tflops": None}, args.out)
        keras.config.set_dtype_policy("float32")


def _throughput(iterator, batch, batches):
    next(iterator)  # start-up (threads, first decode)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch * batches / (time.perf_counter() - start)


def bench_pipeline(args):
    import importlib.util

    from kx_vision.data import arrays
    from kx_vision.data.superres import load_folders

    folders = ([Path(p) for p in args.pipeline_data.split(",") if p] if args.pipeline_data
               else [SHARED_DATA / "sr" / "T91", SHARED_DATA / "sr" / "BSD200"])
    if not all(f.is_dir() for f in folders):
        print(f"pipeline: skipped, {folders[0].parent} is absent", file=sys.stderr)
        return
    batch, patch, batches = 16, 96, (20 if args.quick else 200)  # HR 96 = LR 48 at x2, the EDSR paper's patches
    images = [image for image in load_folders([str(f) for f in folders]) if min(image.shape[:2]) >= patch]
    common = {"benchmark": "pipeline", "task": "superres x2", "images": len(images), "batch": batch, "size": patch,
              "cpu_cores": os.cpu_count()}
    data = arrays.SuperResPatches(images, 2, patch, batch, steps_per_epoch=batches + 1,
                                  workers=arrays.default_workers())
    emit({**common, "pipeline": "numpy PyDataset", "workers": arrays.default_workers(),
          "images_per_s": round(_throughput(_threaded(data, batches + 1), batch, batches), 1)}, args.out)
    if importlib.util.find_spec("tensorflow") is None:
        return
    from kx_vision.data import superres

    dataset = superres.train_dataset(images, 2, patch, batch)
    emit({**common, "pipeline": "tf.data",
          "images_per_s": round(_throughput(iter(dataset), batch, batches), 1)}, args.out)
    camvid = SHARED_DATA / "seg" / "camvid"
    if camvid.is_dir():
        from kx_vision import config as config_lib
        from kx_vision.tasks import segmentation

        config = config_lib.load(segmentation.Config, None, [
            f"data.{key}={camvid / folder}" for key, folder in (
                ("train_images", "train"), ("train_masks", "trainannot"), ("val_images", "val"),
                ("val_masks", "valannot"))] + ["num_classes=11", "ignore_class=11", "data.image_size=360,480",
                                               "data.batch_size=8"])
        train = segmentation.SegmentationTask(config).build_data().train
        emit({"benchmark": "pipeline", "task": "segmentation camvid", "pipeline": "tf.data",
              "batch": config.data.batch_size, "size": "x".join(map(str, config.data.image_size)),
              "images_per_s": round(_throughput(iter(train.repeat()), config.data.batch_size,
                                                max(5, batches // 10)), 1), "cpu_cores": os.cpu_count()}, args.out)


def _threaded(data, count):
    """Batches of a PyDataset prepared by its worker threads, in order, as `model.fit` runs them (Keras's
    own iterator is private API)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(data.workers)
    return pool.map(data.__getitem__, range(count))


BENCHMARKS = {"edsr_train": bench_edsr_train, "unet_train": bench_unet_train, "style_infer": bench_style_infer,
              "sr_infer": bench_sr_infer, "pipeline": bench_pipeline}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--configs", nargs="+", default=["16x48", "64x96"], help="EDSR training batch x LR size")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--quick", action="store_true", help="reduced models and sizes, for a CPU")
    parser.add_argument("--pipeline-data", default=None, metavar="DIRS",
                        help="pipeline: comma-separated training folders (default: ../shared/data/sr/T91,BSD200)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    args.configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    for name in args.only.split(","):
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHMARKS)}")
        BENCHMARKS[name](args)


if __name__ == "__main__":
    main()
