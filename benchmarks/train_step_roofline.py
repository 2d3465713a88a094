"""How close a training step of a super-resolution recipe is to this CPU's matrix-product rate (TensorFlow).

    KERAS_BACKEND=tensorflow python -m benchmarks.train_step_roofline      # the x2 preset recipe
    KERAS_BACKEND=tensorflow python -m benchmarks.train_step_roofline --config configs/edsr_baseline_x2.yaml

Three figures, one JSON line:
- `step_gflop`: the floating-point operations of one training step (forward, loss and gradients of a batch),
  counted by TensorFlow's profiler on the step's graph;
- `ms_per_step`: Keras's `fit` on one fixed batch held in memory (no input pipeline), the mean step after 20
  warm-up steps, over `--steps`;
- `matmul_gflop_s`: the best rate of float32 `n x n x n` matrix products (`tf.matmul`, n = 1024, 2048, 4096),
  the ceiling that oneDNN's convolutions approach on this machine.
`fraction_of_matmul` = step_gflop / ms_per_step / matmul_gflop_s. Run it alone on the machine.
"""

import argparse
import time
from pathlib import Path

from benchmarks import REPO, cpu_device, emit


def step_gflop(task, model, batch):
    import tensorflow as tf
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = task.loss(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    x, y = batch
    graph = tf.function(step).get_concrete_function(tf.TensorSpec(x.shape), tf.TensorSpec(y.shape)).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return profile(graph, options=options).total_float_ops / 1e9


def matmul_gflop_s(sizes=(1024, 2048, 4096), repeats=5):
    import tensorflow as tf

    best = 0.0
    for n in sizes:
        a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
        product = tf.function(tf.matmul)
        product(a, b).numpy()
        start = time.perf_counter()
        for _ in range(repeats):
            result = product(a, b)
        result.numpy()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/presets/edsr_8x32_x2.yaml"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")

    import keras
    import tensorflow as tf

    from kx_vision import config as cfg
    from kx_vision.tasks import get_task
    from kx_vision.training.optimizers import build_optimizer

    if keras.backend.backend() != "tensorflow":
        parser.error("run it with KERAS_BACKEND=tensorflow (the profiler counts a TensorFlow graph)")
    Task = get_task("superres")
    config = cfg.load(Task.Config, args.config, ["time_budget=null", "samples=0"])
    task = Task(config)
    batch = next(iter(task.build_data().train))
    keras.utils.set_random_seed(0)
    model = task.build_model()
    model.compile(optimizer=build_optimizer(config, 10 * args.steps), loss=task.loss, metrics=task.build_metrics())
    clock = {}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            if batch_index == 19:
                clock["start"] = time.perf_counter()

    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=args.steps + 20,
              callbacks=[Clock()], verbose=0)
    ms = (time.perf_counter() - clock["start"]) / args.steps * 1000
    gflop, peak = step_gflop(task, model, batch), matmul_gflop_s()
    emit({"benchmark": "train_step_roofline", "config": args.config, "batch": list(batch[0].shape),
          "step_gflop": round(gflop, 2), "ms_per_step": round(ms, 1), "step_gflop_s": round(gflop / ms * 1000, 1),
          "matmul_gflop_s": round(peak, 1), "fraction_of_matmul": round(gflop / ms * 1000 / peak, 2),
          "device": cpu_device(), "tensorflow": tf.__version__, "date": time.strftime("%Y-%m-%d")}, args.out)


if __name__ == "__main__":
    main()
