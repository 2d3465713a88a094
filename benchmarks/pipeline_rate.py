"""Images/s of the super-resolution input pipelines, streamed and cached (issue 19).

    python -m benchmarks.pipeline_rate                        # 150 generated 640x480 PNGs, both pipelines
    python -m benchmarks.pipeline_rate --data DIR --batches 100
    python -m benchmarks.pipeline_rate --format bmp            # the same 150 images as uncompressed BMPs
    python -m benchmarks.pipeline_rate --source tfds           # the same 150 PNGs as a tensorflow-datasets set
    python -m benchmarks.pipeline_rate --decode-cost           # CPU ms per decoded PNG: Pillow, OpenCV, TensorFlow

For each pipeline (`tf_data` under TensorFlow; `numpy`, the `PyDataset`, under JAX with TensorFlow hidden)
and each way of reading the images (`cache`: decoded into memory first, `data.cache=always`; `stream`:
decoded as the stream goes, `data.cache=never`, one patch per decoded image; `stream_p8`: the same with
`data.patches_per_image=8`), two measurements, each in a fresh process, the task's own `build_data` with
the default super-resolution settings (HR patches 48, batch 16, x2):

- `input`: the pipeline alone, batches drawn as fast as it makes them (after 5 warm-up batches);
- `train`: `model.fit` of the default model, steps timed from the end of the 5th (compilation excluded).

Each prints one JSON line: images/s (wall clock), and images per CPU-second of the whole process (user +
system time of all its threads): the rate per core, which does not depend on what else the machine runs.

`--source tfds` measures `kx_vision.data.tfds_source.TfdsSource` streams (`data.train=tfds:...`, tf_data only) on
the same images written, still PNG-encoded, into a tensorflow-datasets set (`kx_bench_images`, built in a
temporary data dir).
"""

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import backend_env, cpu_device, emit

REPO = Path(__file__).resolve().parents[1]
MODES = {"cache": ["data.cache=always"], "stream": ["data.cache=never"],
         "stream_p8": ["data.cache=never", "data.patches_per_image=8"]}
WARMUP = 5


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(folder, pipeline, mode, kind, batches, scratch):
    """Runs in the measuring process: one JSON record."""
    import keras

    from kx_vision import config as config_lib
    from kx_vision.tasks import superres
    from kx_vision.training import trainer

    steps = WARMUP + batches
    if folder.startswith("tfds:"):
        bench_images_builder()  # registers `kx_bench_images` (prepared by the parent in $TFDS_DATA_DIR)
    config = config_lib.load(superres.SuperResConfig, None, [
        f"data.train={folder}", f"data.pipeline={pipeline}", "epochs=1", f"steps_per_epoch={steps}",
        *MODES[mode]])
    batch = config.data.batch_size
    marks = {}
    if kind == "input":
        data = superres.SuperResTask(config).build_data()
        if pipeline == "numpy":
            iterator = _threaded(data.train, steps)
        else:
            iterator = iter(data.train)
        for index in range(steps):
            next(iterator)
            if index == WARMUP - 1:
                marks["start"] = (time.perf_counter(), cpu_seconds())
        marks["end"] = (time.perf_counter(), cpu_seconds())
        # Freed now, while tf.data's threads can still run. The first `import keras` ran in this frame and
        # leaves a reference cycle through the frames of that import, so this frame and the iterator would
        # otherwise be freed by the collector at interpreter exit, where destroying an iterator with a
        # numpy_function in flight never finishes (the process hung after printing its result).
        del iterator
    else:
        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, index, logs=None):
                if index == WARMUP - 1:
                    marks["start"] = (time.perf_counter(), cpu_seconds())
                elif index == steps - 1:
                    marks["end"] = (time.perf_counter(), cpu_seconds())

        trainer.fit(superres.SuperResTask, config, os.path.join(scratch, "run"), verbose=0,
                    extra_callbacks=[Clock()])
    seconds = marks["end"][0] - marks["start"][0]
    cpu = marks["end"][1] - marks["start"][1]
    images = batches * batch
    return {"benchmark": "pipeline_rate", "measure": kind, "pipeline": pipeline, "backend": keras.backend.backend(),
            "mode": mode, "files": _kinds(folder),
            "patches_per_image": config.data.patches_per_image, "batch": batch,
            "patch": config.data.patch_size, "batches": batches, "images_per_s": round(images / seconds, 1),
            "images_per_cpu_s": round(images / cpu, 1), "cpu_busy": round(cpu / seconds, 2),
            "device": cpu_device(),
            "date": time.strftime("%Y-%m-%d")}


def _kinds(folder):
    if folder.startswith("tfds:"):
        return f"{folder} ({_kinds(os.environ['KX_BENCH_IMAGES'])})"
    return ",".join(sorted({Path(n).suffix.lstrip(".") for n in os.listdir(folder)}))


@functools.cache
def bench_images_builder():
    """The tensorflow-datasets builder class `kx_bench_images`: one `image` feature, a `train` split of the
    image files of `KX_BENCH_IMAGES` stored as they are (not re-encoded). Defining it registers it."""
    import tensorflow_datasets as tfds

    from kx_vision.data.images import list_images

    class KxBenchImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # No source folder, so no checksums file to find (tfds's lookup of it needs importlib_resources
        # when the class is defined in an imported module rather than __main__).
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(os.environ["KX_BENCH_IMAGES"])}

        def _generate_examples(self, folder):
            for path in list_images(folder):
                yield Path(path).stem, {"image": path}

    return KxBenchImages


def as_tfds(folder, data_dir):
    """Writes the images of `folder` as the tfds set `kx_bench_images` under `data_dir`; its spec."""
    os.environ["KX_BENCH_IMAGES"] = str(folder)
    bench_images_builder()(data_dir=str(data_dir)).download_and_prepare()
    return "tfds:kx_bench_images:train"


def decoders():
    """`{name: decode}`: encoded image bytes -> `(H, W, 3)` uint8 RGB, by Pillow (what the streams use:
    `images.read_image`), OpenCV and TensorFlow (`tf.io.decode_image`), those installed."""
    import io

    import numpy as np
    from PIL import Image

    found = {"pillow": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))}
    try:
        import cv2

        found["opencv"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    except ImportError:
        pass
    try:
        import tensorflow as tf

        found["tensorflow"] = lambda b: tf.io.decode_image(b, channels=3, expand_animations=False).numpy()
    except ImportError:
        pass
    return found


def decode_costs(folder, repeats=2):
    """CPU milliseconds to decode each image file of `folder` from bytes in memory (`decoders()`)."""
    from kx_vision.data.images import list_images

    blobs = [Path(path).read_bytes() for path in list_images(folder)]
    record = {"benchmark": "decode_cost", "images": len(blobs), "repeats": repeats,
              "files": _kinds(str(folder)), "device": cpu_device(), "date": time.strftime("%Y-%m-%d")}
    for name, decode in decoders().items():
        decode(blobs[0])
        start = cpu_seconds()
        for _ in range(repeats):
            for blob in blobs:
                decode(blob)
        record[f"{name}_cpu_ms"] = round((cpu_seconds() - start) / (repeats * len(blobs)) * 1e3, 2)
    return record


def as_bmp(folder, output):
    """The PNGs of `folder` as uncompressed 24-bit BMPs in `output` (the same pixels)."""
    from PIL import Image

    output.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(folder).glob("*.png")):
        with Image.open(path) as image:
            image.convert("RGB").save(output / f"{path.stem}.bmp")
    return output


def _threaded(data, count):
    """A PyDataset's batches made by its worker threads, in order, as `model.fit` takes them."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(data.workers)
    return pool.map(data.__getitem__, range(count))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="training images (default: 150 generated 640x480 PNGs, removed after)")
    parser.add_argument("--format", choices=["png", "bmp"], default="png",
                        help="file format of the generated images (bmp: uncompressed, what `python -m "
                             "kx_vision.prepare crop --format bmp` writes; decoding costs ~14x less CPU)")
    parser.add_argument("--source", choices=["folder", "tfds"], default="folder",
                        help="tfds: the generated PNGs as a tensorflow-datasets set (tf_data only)")
    parser.add_argument("--pipelines", nargs="+", default=None, choices=["tf_data", "numpy"],
                        help="default: both (tfds: tf_data)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--measures", nargs="+", default=["input", "train"], choices=["input", "train"])
    parser.add_argument("--batches", type=int, default=60, help="timed batches (after 5 warm-up ones)")
    parser.add_argument("--decode-cost", action="store_true",
                        help="only: CPU ms to decode one image with Pillow, OpenCV and TensorFlow")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--one", nargs=4, metavar=("FOLDER", "PIPELINE", "MODE", "MEASURE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.source == "tfds" and (args.format != "png" or "numpy" in (args.pipelines or [])):
        parser.error("--source tfds measures encoded images (PNG, JPEG) on the tf_data pipeline")
    pipelines = args.pipelines or (["tf_data"] if args.source == "tfds" else ["tf_data", "numpy"])

    if args.one:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(one(*args.one, batches=args.batches, scratch=scratch)), flush=True)
        return

    from benchmarks.pipeline_memory import make_images

    with tempfile.TemporaryDirectory(prefix="kx_pipeline_rate_") as root:
        folder = args.data or make_images(Path(root) / "images", 150, 640, 480)
        if not args.data and args.format == "bmp":
            folder = as_bmp(folder, Path(root) / "bmp")
        if args.decode_cost:
            emit(decode_costs(folder), args.out)
            return
        extra_env = {}
        if args.source == "tfds":
            extra_env["TFDS_DATA_DIR"] = str(Path(root) / "tfds")
            folder = as_tfds(folder, extra_env["TFDS_DATA_DIR"])
        for measure in args.measures:
            for pipeline in pipelines:
                env = {**backend_env(pipeline), **extra_env}
                for mode in args.modes:
                    done = subprocess.run([sys.executable, "-m", "benchmarks.pipeline_rate", "--one", str(folder),
                                           pipeline, mode, measure, "--batches", str(args.batches)],
                                          env=env, capture_output=True, text=True, cwd=REPO)
                    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                    record = json.loads(lines[-1]) if lines else {
                        "benchmark": "pipeline_rate", "pipeline": pipeline, "mode": mode, "measure": measure,
                        "error": (done.stderr or done.stdout)[-1500:]}
                    emit(record, args.out)


if __name__ == "__main__":
    main()
