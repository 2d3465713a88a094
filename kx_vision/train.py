"""Train a task: `python -m kx_vision.train TASK [--config FILE] [--set key=value ...] [--output DIR]`.

Runs `model.fit` with Keras progress bars and these callbacks: `BackupAndRestore` (a killed run,
restarted with the same command, continues from its last finished epoch), atomic `.keras`
checkpoints (`last.keras`, `best.keras`), `TerminateOnNaN`, `CSVLogger` and, where TensorBoard is
installed, `TensorBoard`. The final model is `OUTPUT/model.keras`.
"""

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import sys

from kx_vision import config as config_lib
from kx_vision import distribute
from kx_vision.errors import ConfigError, KxVisionError

TASKS = {
    "superres": "kx_vision.tasks.superres",
    "segmentation": "kx_vision.tasks.segmentation",
    "style": "kx_vision.tasks.style",
}


def task_module(name):
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def time_schedule(config):
    """The configured learning-rate schedule as a function of the fraction of a time budget spent
    (and of the step, for the warm-up): what `callbacks.TimeBudget` applies with `time_budget`."""
    from kx_vision.optimizers import one_cycle

    opt = config.optimizer
    if opt.schedule == "constant":
        return lambda fraction, step: opt.learning_rate
    if opt.schedule == "one_cycle":
        resolution = 10_000  # the schedule evaluated on a grid of fractions of the budget
        schedule, _ = one_cycle(opt.learning_rate, resolution, pct_start=opt.pct_start)
        return lambda fraction, step: float(schedule(fraction * resolution))

    def cosine(fraction, step):  # as keras's CosineDecay(alpha=0.01) with a linear warm-up, over time
        if step < opt.warmup_steps:
            return opt.learning_rate * step / opt.warmup_steps
        return opt.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * fraction)))

    return cosine


def build_optimizer(config, total_steps, timed=False):
    """Adam (kx_vision's, with per-group rates) with the configured learning-rate schedule; with
    `timed`, a plain rate that `callbacks.TimeBudget` moves along the schedule as time passes."""
    import keras

    from kx_vision.optimizers import Adam, one_cycle

    opt = config.optimizer
    learning_rate, beta_1_schedule = opt.learning_rate, None
    if timed:
        learning_rate = time_schedule(config)(0.0, 0)
    elif opt.schedule == "cosine":
        warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=opt.learning_rate if warmup else None,
            warmup_steps=warmup,
            alpha=0.01,
        )
    elif opt.schedule == "one_cycle":
        learning_rate, momentum = one_cycle(opt.learning_rate, max(total_steps, 1), pct_start=opt.pct_start)
        beta_1_schedule = momentum if opt.cycle_momentum else None
    try:
        optimizer = Adam(learning_rate=learning_rate, group_rates=opt.group_rates, beta_1_schedule=beta_1_schedule,
                         clipnorm=opt.clipnorm)
    except ValueError as error:
        raise ConfigError(f"config key 'optimizer.group_rates': {error}") from None
    if getattr(config, "precision", "float32") == "mixed_float16":
        # float16 gradients underflow without it (bfloat16 has float32's exponent range and needs none).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def find_learning_rate(task, config, output, num_steps=200):
    """The LR range test on the task's model and data; saves `lr_find.png` and `lr_find.json`."""
    from kx_vision import lr_finder

    task.check_config(config)
    os.makedirs(output, exist_ok=True)
    import keras

    keras.utils.set_random_seed(config.seed)
    data = task.build_data(config)
    model = task.build_model(config)
    _initialise(model, config)
    train_data = data["train"] if data.get("endless") else data["train"].repeat()
    result = lr_finder.find_lr(model, train_data, task.build_loss(config), num_steps=num_steps)
    lr_finder.save_plot(result, os.path.join(output, "lr_find.png"))
    lr_finder.save_json(result, os.path.join(output, "lr_find.json"))
    suggestion = result["suggestion"]
    print(f"LR range test over {len(result['lrs'])} steps: suggested learning rate "
          f"{'n/a (too few steps)' if suggestion is None else f'{suggestion:.2e}'}; plot: {os.path.join(output, 'lr_find.png')}")
    return result


def _check_resume(output, config):
    """Refuse to resume an interrupted run in `output` with a different config."""
    saved = os.path.join(output, "config.yaml")
    backup = os.path.join(output, "backup")
    interrupted = os.path.isdir(backup) and any(files for _, _, files in os.walk(backup))
    if interrupted and os.path.isfile(saved):
        import yaml

        with open(saved) as f:
            previous = yaml.safe_load(f)
        current = config_lib.to_dict(config)
        # The device layout does not change the computation: a run may resume on more or fewer devices.
        previous.pop("distribute", None), current.pop("distribute", None)
        if previous != current:
            raise ConfigError(
                f"{output} holds an interrupted run with a different config ({saved}); "
                "rerun with the same settings to resume it, or choose another --output"
            )


def _initialise(model, config):
    """Seed `model` from `config.init_from` by layer name; the names of the transferred layers."""
    path = getattr(config, "init_from", None)
    if not path:
        return []
    from kx_vision.models.loading import format_transfer_report, load_model, transfer_weights

    report = transfer_weights(load_model(path), model)
    print(format_transfer_report(report))
    if not report["transferred"]:
        raise ConfigError(f"init_from: no layer of {path} matches this model by name and shape")
    return report["transferred"]


def fit(task, config, output, verbose="auto", extra_callbacks=()):
    """Train `task` (a module of `kx_vision.tasks`) with `config`, writing into `output`.

    A task may ask for a first phase in which some layers are frozen (`task.freeze_plan`: the
    pretrained backbone of a U-Net, or the layers transferred from a x2 model); training then runs
    in two phases, each compiled afresh. A finished phase leaves its weights behind, so a resumed
    run skips it.

    Returns `(model, summary)`, the summary being a dict of final validation scores.
    """
    import keras

    task.check_config(config)
    dist = distribute.setup(config.distribute)
    policy = keras.config.dtype_policy()
    # The policy is global in Keras: set it for the model, loss networks and optimizer built here.
    keras.config.set_dtype_policy(config.precision)
    try:
        return _fit(task, config, output, dist, verbose, extra_callbacks)
    finally:
        keras.config.set_dtype_policy(policy)
        distribute.reset()


def _fit(task, config, output, dist, verbose, extra_callbacks):
    import keras

    from kx_vision.callbacks import AtomicModelCheckpoint, TimeBudget, save_model_atomic, save_weights_atomic

    dist.check_batch_size(config.data.batch_size)
    os.makedirs(output, exist_ok=True)
    if dist.is_chief:
        _check_resume(output, config)
        config_lib.dump(config, os.path.join(output, "config.yaml"))
    if dist.num_replicas > 1:
        print(f"distribute={dist.mode}: {dist.num_replicas} replicas over {dist.num_workers} worker(s), "
              f"this is worker {dist.worker_index}; global batch {config.data.batch_size}")
    keras.utils.set_random_seed(config.seed)

    data = task.build_data(config)
    data["train"] = dist.train_dataset(data["train"])
    data["val"] = dist.validation_dataset(data["val"])
    with dist.scope():
        model = dist.prepare_model(task.build_model(config))
        transferred = _initialise(model, config)
    frozen, frozen_epochs = task.freeze_plan(model, config, transferred)
    frozen_epochs = min(frozen_epochs, config.epochs) if frozen else 0
    phases = [("frozen", 0, frozen_epochs), ("all", frozen_epochs, config.epochs)]
    phases = [phase for phase in phases if phase[1] < phase[2]]
    monitor, mode = task.MONITOR
    # Only the chief writes checkpoints and logs into `output`. Saving reads every variable, which in a
    # multi-process run is a collective step, so the other workers save too, into a private scratch
    # folder (removed when they finish) that also holds the backup they resume from.
    scratch = output if dist.is_chief else os.path.join(output, ".workers", f"worker{dist.worker_index}")
    backup = os.path.join(scratch, "backup")
    budget = None
    if config.time_budget is not None:
        if config.time_budget <= 0:
            raise ConfigError(f"config key 'time_budget' must be > 0 seconds, got {config.time_budget}")
        if dist.num_workers > 1:
            raise ConfigError("config key 'time_budget' cannot be used with several workers (each would stop "
                              "at another step); train for a number of epochs instead")
        budget = TimeBudget(config.time_budget, state_path=os.path.join(backup, "time_budget.json"))
        print(f"time budget: {config.time_budget:g} s of training steps (compilation and validation not "
              f"counted), at most {config.epochs} epochs of {data['steps_per_epoch']} steps")
        if config.optimizer.schedule == "one_cycle" and config.optimizer.cycle_momentum:
            print("time budget: optimizer.cycle_momentum is not applied (beta_1 stays constant); "
                  "the one-cycle rate follows the clock")
    for name, first, last in phases:
        done_marker = os.path.join(scratch, f"phase_{name}.weights.h5")
        if name != phases[-1][0] and os.path.isfile(done_marker):
            model.load_weights(done_marker)
            print(f"phase '{name}' already finished: loaded {done_marker}")
            continue
        for layer in model.layers:
            if layer.name in frozen:
                layer.trainable = name != "frozen"
        if name == "frozen":
            trained = [layer.name for layer in model.layers if layer.weights and layer.name not in frozen]
            shown = ", ".join(trained) if len(trained) <= 6 else f"{len(trained)} layers"
            print(f"epochs {first + 1}-{last}: training only {shown} ({', '.join(frozen)} frozen)")
        timed = budget is not None and name == phases[-1][0]
        if budget is not None:
            # Frozen phases keep their step schedule; the last phase's rate spans what is left of the budget.
            budget.start_phase(name, time_schedule(config) if timed else None)
        with dist.scope():
            model.compile(
                optimizer=build_optimizer(config, (last - first) * data["steps_per_epoch"], timed=timed),
                loss=task.build_loss(config),
                metrics=task.build_metrics(config),
                jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            )
            dist.prepare_fit(model)
        callbacks = [
            keras.callbacks.BackupAndRestore(os.path.join(backup, name)),
            keras.callbacks.TerminateOnNaN(),
            AtomicModelCheckpoint(os.path.join(scratch, "checkpoints"), monitor=monitor, mode=mode),
        ]
        if dist.is_chief:
            callbacks.append(keras.callbacks.CSVLogger(os.path.join(output, "history.csv"), append=True))
            # Keras's TensorBoard callback writes through TensorFlow's summary API.
            if all(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorflow")):
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "logs")))
        if budget is not None:
            callbacks.append(budget)  # last: its state file is written after the epoch's checkpoints
        callbacks.extend(extra_callbacks)
        model.fit(
            data["train"],
            initial_epoch=first,
            epochs=last,
            steps_per_epoch=data["steps_per_epoch"] if data.get("endless") else None,
            validation_data=data["val"],
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipelines shuffle / sample at random themselves
            verbose=verbose if dist.is_chief else 0,
        )
        if name != phases[-1][0]:
            save_weights_atomic(model, done_marker)
        if budget is not None and budget.exhausted:
            break

    final = os.path.join(scratch, "model.keras")
    save_model_atomic(model, final)
    if not dist.is_chief:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(scratch))  # `.workers`, once every worker has finished
        return model, {}
    if dist.num_replicas > 1:
        # Report on the saved model, on one device: it proves the file, and the report's full-size
        # single images need not split across replicas.
        from kx_vision.models.loading import load_model

        distribute.reset()
        model = load_model(final)
    message, summary = task.report(model, data, config)
    print(message)
    if budget is not None:
        summary.update(budget.summary())
        print(_budget_message(budget, config))
        with contextlib.suppress(OSError):
            os.remove(budget.state_path)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return model, summary


def _budget_message(budget, config):
    step_ms = 1000 * budget.spent / max(budget.timed_steps, 1)
    message = (f"time budget: {budget.spent:.1f} s of training in {budget.steps} steps ({step_ms:.2f} ms/step); "
               f"compilation and first batches {budget.startup_seconds:.1f} s, not counted")
    if not budget.exhausted:
        message += (f"; stopped by epochs={config.epochs} with {budget.budget - budget.spent:.1f} s of the budget "
                    "left (raise epochs to use it all)")
    return message


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m kx_vision.train",
        description="Train a kx_vision model. The Keras backend is chosen with KERAS_BACKEND "
        "(tensorflow or jax).",
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name in TASKS:
        module = task_module(name)
        keys = "\n".join(config_lib.describe(module.Config))
        p = sub.add_parser(
            name,
            help=(module.__doc__ or "").strip().splitlines()[0],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"config keys (set with --set key=value or in a --config YAML file):\n{keys}",
        )
        p.add_argument("--config", metavar="FILE", help="YAML file of config values")
        p.add_argument(
            "--set", metavar="KEY=VALUE", action="append", default=[], dest="assignments",
            help="override one config key (repeatable); lists: comma-separated",
        )
        p.add_argument("--output", metavar="DIR", default=None, help=f"output folder (default: runs/{name})")
        p.add_argument("--find-lr", action="store_true",
                       help="run the learning-rate range test instead of training (weights are not kept)")
        p.add_argument("--find-lr-steps", type=int, default=200, metavar="N", help="steps of the range test")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        task = task_module(args.task)
        config = config_lib.load(task.Config, args.config, args.assignments)
        output = args.output or os.path.join("runs", args.task)
        if args.find_lr:
            find_learning_rate(task, config, output, args.find_lr_steps)
        else:
            fit(task, config, output)
    except KxVisionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
