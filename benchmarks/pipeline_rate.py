"""Images/s of the super-resolution input pipelines, streamed and cached (issue 19).

    python -m benchmarks.pipeline_rate                        # 150 generated 640x480 PNGs, both pipelines
    python -m benchmarks.pipeline_rate --data DIR --batches 100
    python -m benchmarks.pipeline_rate --format bmp            # the same 150 images as uncompressed BMPs

For each pipeline (`tf_data` under TensorFlow; `numpy`, the `PyDataset`, under JAX with TensorFlow hidden)
and each way of reading the images (`cache`: decoded into memory first, `data.cache=always`; `stream`:
decoded as the stream goes, `data.cache=never`, one patch per decoded image; `stream_p8`: the same with
`data.patches_per_image=8`), two measurements, each in a fresh process, the task's own `build_data` with
the default super-resolution settings (HR patches 48, batch 16, x2):

- `input`: the pipeline alone, batches drawn as fast as it makes them (after 5 warm-up batches);
- `train`: `model.fit` of the default model, steps timed from the end of the 5th (compilation excluded).

Each prints one JSON line: images/s (wall clock), and images per CPU-second of the whole process (user +
system time of all its threads): the rate per core, which does not depend on what else the machine runs.
"""

import argparse
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
    from kx_vision import trainer
    from kx_vision.tasks import superres

    steps = WARMUP + batches
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
            "mode": mode, "files": ",".join(sorted({Path(n).suffix.lstrip(".") for n in os.listdir(folder)})),
            "patches_per_image": config.data.patches_per_image, "batch": batch,
            "patch": config.data.patch_size, "batches": batches, "images_per_s": round(images / seconds, 1),
            "images_per_cpu_s": round(images / cpu, 1), "cpu_busy": round(cpu / seconds, 2),
            "device": cpu_device(),
            "date": time.strftime("%Y-%m-%d")}


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
    parser.add_argument("--pipelines", nargs="+", default=["tf_data", "numpy"], choices=["tf_data", "numpy"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--measures", nargs="+", default=["input", "train"], choices=["input", "train"])
    parser.add_argument("--batches", type=int, default=60, help="timed batches (after 5 warm-up ones)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--one", nargs=4, metavar=("FOLDER", "PIPELINE", "MODE", "MEASURE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(one(*args.one, batches=args.batches, scratch=scratch)), flush=True)
        return

    from benchmarks.pipeline_memory import make_images

    with tempfile.TemporaryDirectory(prefix="kx_pipeline_rate_") as root:
        folder = args.data or make_images(Path(root) / "images", 150, 640, 480)
        if not args.data and args.format == "bmp":
            folder = as_bmp(folder, Path(root) / "bmp")
        for measure in args.measures:
            for pipeline in args.pipelines:
                env = backend_env(pipeline)
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
