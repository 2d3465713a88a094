"""Issue 31, item 1: what a training step of the x2 preset recipe costs with Keras's step options.

Trains `configs/presets/edsr_8x32_x2.yaml` in memory (`Trainer`, no run folder) for a fixed number of steps and
prints one JSON line: the mean time of a step in the last epoch (the first one traces and compiles), measured
by Keras around its train function only (validation not counted). Options compared:

- `--steps-per-execution N`: `model.compile(steps_per_execution=N)`, N steps per call of the compiled function;
- `--train-metrics all|psnr`: the task's metrics (Y-PSNR and Y-SSIM) or Y-PSNR alone; Keras computes compiled
  metrics on every training batch too, and SSIM's 11x11 Gaussian windows are not free.

  KERAS_BACKEND=tensorflow python -m benchmarks.train_step_options --steps-per-execution 8 --train-metrics psnr

Run it alone on the machine (nothing else on the cores). Not a library option: the preset recipe keeps Keras's
defaults, and `TimeBudget` counts steps by batch callbacks, which `steps_per_execution` makes coarser.
"""

import argparse
import time

from benchmarks import REPO, cpu_device, emit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--train-metrics", choices=("all", "psnr"), default="all")
    parser.add_argument("--steps", type=int, default=800, help="steps of each of the two epochs")
    parser.add_argument("--log", help="also append the JSON line to this file")
    args = parser.parse_args(argv)

    import keras

    from kx_vision import config as cfg
    from kx_vision.tasks import get_task
    from kx_vision.training.trainer import Trainer

    original = keras.Model.compile

    def compile(model, *a, **kw):
        return original(model, *a, steps_per_execution=args.steps_per_execution, **kw)

    keras.Model.compile = compile
    Task = get_task("superres")
    config = cfg.load(Task.Config, REPO / "configs/presets/edsr_8x32_x2.yaml",
                      ["time_budget=null", "epochs=2", f"steps_per_epoch={args.steps}", "samples=0"])
    task = Task(config)
    if args.train_metrics == "psnr":
        task.build_metrics = lambda: Task.build_metrics(task)[:1]
    class StepClock(keras.callbacks.Callback):
        """The time of each call of the train function (batch begin to batch end) in the current epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.spent, self.calls = 0.0, 0

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.spent += time.perf_counter() - self.start
            self.calls += 1

    clock = StepClock()
    Trainer(task, verbose=0, callbacks=[clock]).fit()
    emit({"bench": "train_step_options", "backend": keras.backend.backend(), "device": cpu_device(),
          "steps_per_execution": args.steps_per_execution, "train_metrics": args.train_metrics,
          "steps": args.steps, "ms_per_step": round(1000 * clock.spent / (clock.calls * args.steps_per_execution), 2), "keras": keras.__version__,
          "date": time.strftime("%Y-%m-%d")}, args.log)


if __name__ == "__main__":
    main()
