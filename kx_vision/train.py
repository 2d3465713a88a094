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

from kx_vision import cli, distribute
from kx_vision import config as config_lib
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


# The warm-up never takes more than this fraction of a phase's steps: a warm-up as long as the
# training would leave the rate climbing until the end (the segmentation demo's 100 of 90 steps).
MAX_WARMUP_FRACTION = 0.25


def warmup_steps(requested, total_steps):
    """`requested` warm-up steps, clamped to `MAX_WARMUP_FRACTION` of `total_steps` (with a warning)."""
    limit = int(MAX_WARMUP_FRACTION * total_steps)
    if requested > limit:
        print(f"warning: optimizer.warmup_steps={requested} is more than a quarter of the {total_steps} planned "
              f"steps; warming up over {limit} steps instead")
        return limit
    return requested


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
        warmup = warmup_steps(opt.warmup_steps, total_steps)
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
    train_data = data["train"]
    if not data.get("endless") and hasattr(train_data, "repeat"):  # a finite tf.data.Dataset
        train_data = train_data.repeat()
    result = lr_finder.find_lr(model, train_data, task.build_loss(config), num_steps=num_steps)
    lr_finder.save_plot(result, os.path.join(output, "lr_find.png"))
    lr_finder.save_json(result, os.path.join(output, "lr_find.json"))
    suggestion = result["suggestion"]
    print(f"LR range test over {len(result['lrs'])} steps: suggested learning rate "
          f"{'n/a (too few steps)' if suggestion is None else f'{suggestion:.2e}'}; plot: {os.path.join(output, 'lr_find.png')}")
    return result


# What a run writes into its output folder (`--overwrite` removes these, and nothing else).
RUN_FILES = ("checkpoints", "backup", "logs", "history.csv", "summary.json", "model.keras", "config.yaml",
             ".workers")


def _flat(data, prefix=""):
    out = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _backup_states(backup):
    """`{phase: state}` of the phases' backups in `backup` (see `callbacks.TrainingBackup`)."""
    states = {}
    if os.path.isdir(backup):
        for phase in sorted(os.listdir(backup)):
            path = os.path.join(backup, phase, "state.json")
            if os.path.isfile(path):
                try:
                    with open(path) as f:
                        states[phase] = json.load(f)
                except (OSError, ValueError):
                    states[phase] = {}
    return states


def _run_status(output):
    """"finished" (a model and its summary were written), "interrupted" (a backup of a finished
    epoch exists) or "new"."""
    if os.path.isfile(os.path.join(output, "summary.json")) and os.path.isfile(os.path.join(output, "model.keras")):
        return "finished"
    return "interrupted" if _backup_states(os.path.join(output, "backup")) else "new"


def _prepare_output(output, config, overwrite):
    """What to do with `output`: "new", "overwrite", "resume" (an interrupted run), "continue" (a
    finished run given more epochs) or "complete" (a finished run: nothing to do). Refuses to mix
    a run with another config. Reads only: nothing is written here."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output} is a file, not a folder")
    status = _run_status(output) if os.path.isdir(output) else "new"
    if overwrite:
        return "overwrite" if os.path.isdir(output) else "new"
    if status == "new":
        return "new"
    saved = os.path.join(output, "config.yaml")
    previous = {}
    if os.path.isfile(saved):
        import yaml

        with open(saved) as f:
            previous = yaml.safe_load(f) or {}
    # The device layout does not change the computation: a run may resume on more or fewer devices;
    # a finished run may be given more `epochs` to continue it.
    ignored = ("distribute", "epochs") if status == "finished" else ("distribute",)
    before, now = _flat(previous), _flat(config_lib.to_dict(config))
    differ = sorted(k for k in set(before) | set(now) if k not in ignored and before.get(k) != now.get(k))
    what = "a finished" if status == "finished" else "an interrupted"
    if differ:
        shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
        raise ConfigError(
            f"{output} holds {what} run with a different config ({shown} differ from {saved}); rerun with its "
            "settings to " + ("continue" if status == "finished" else "resume") + " it, add --overwrite to "
            "replace it, or choose another --output"
        )
    if status == "finished":
        return "complete" if config.epochs <= int(previous.get("epochs", 0)) else "continue"
    return "resume"


def _clear_run(output):
    import shutil

    for name in RUN_FILES:
        path = os.path.join(output, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _truncate_history(path, epochs):
    """Keep the header and the rows of the first `epochs` epochs of a CSVLogger file (a killed run
    may have logged an epoch that its backup does not hold; it is trained again)."""
    if not os.path.isfile(path):
        return
    from kx_vision.fileio import atomic_write_text

    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].strip().isdigit()
                        and int(line.split(",", 1)[0]) < epochs]
    if kept != lines:
        atomic_write_text(path, "".join(kept))


class TrainingDiverged(KxVisionError):
    """The loss became NaN or infinite."""


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


def fit(task, config, output, verbose="auto", extra_callbacks=(), overwrite=False):
    """Train `task` (a module of `kx_vision.tasks`) with `config`, writing into `output`.

    A task may ask for a first phase in which some layers are frozen (`task.freeze_plan`: the
    pretrained backbone of a U-Net, or the layers transferred from a x2 model); training then runs
    in two phases, each compiled afresh. A finished phase leaves its weights behind, so a resumed
    run skips it.

    `output` is never overwritten by accident: an interrupted run there resumes from its last
    finished epoch (same config), a finished run is left as it is (or continued, when `epochs` grew),
    and `overwrite=True` is needed to train there from scratch.

    Returns `(model, summary)`, the summary being a dict of final validation scores.
    """
    import keras

    task.check_config(config)
    dist = distribute.setup(config.distribute)
    policy = keras.config.dtype_policy()
    # The policy is global in Keras: set it for the model, loss networks and optimizer built here.
    keras.config.set_dtype_policy(config.precision)
    try:
        return _fit(task, config, output, dist, verbose, extra_callbacks, overwrite)
    finally:
        keras.config.set_dtype_policy(policy)
        distribute.reset()


def _fit(task, config, output, dist, verbose, extra_callbacks, overwrite):
    import keras

    from kx_vision.callbacks import (
        AtomicModelCheckpoint,
        DivergenceGuard,
        TimeBudget,
        TrainingBackup,
        save_model_atomic,
        save_weights_atomic,
    )
    from kx_vision.fileio import atomic_write_text, remove_stale_temporaries
    from kx_vision.models.loading import load_model

    dist.check_batch_size(config.data.batch_size)
    if config.time_budget is not None:
        if config.time_budget <= 0:
            raise ConfigError(f"config key 'time_budget' must be > 0 seconds, got {config.time_budget}")
        if dist.num_workers > 1:
            raise ConfigError("config key 'time_budget' cannot be used with several workers (each would stop "
                              "at another step); train for a number of epochs instead")
    action = _prepare_output(output, config, overwrite) if dist.is_chief else "new"
    if action == "complete":
        with open(os.path.join(output, "summary.json")) as f:
            summary = json.load(f)
        final = os.path.join(output, "model.keras")
        print(f"{output} holds a finished run of {config.epochs} epochs; its model is {final} "
              f"({_format_scores(summary)}). Nothing to do: --set epochs=N (more) continues it, "
              "--overwrite trains again from scratch, --output DIR starts a new run.")
        return load_model(final), summary
    if dist.num_replicas > 1:
        print(f"distribute={dist.mode}: {dist.num_replicas} replicas over {dist.num_workers} worker(s), "
              f"this is worker {dist.worker_index}; global batch {config.data.batch_size}")
    keras.utils.set_random_seed(config.seed)

    # Data and model first: a start that fails (a missing folder, weights that cannot be loaded)
    # leaves no run folder behind.
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

    # From here on the run writes into `output`.
    if action == "overwrite":
        _clear_run(output)
        print(f"--overwrite: removed the previous run's files from {output}")
    os.makedirs(output, exist_ok=True)
    history = os.path.join(output, "history.csv")
    if dist.is_chief:
        if action in ("new", "overwrite") and os.path.isfile(history):
            os.remove(history)  # no epoch of an earlier start was backed up: its rows are stale
        config_lib.dump(config, os.path.join(output, "config.yaml"))
    # Only the chief writes checkpoints and logs into `output`. Saving reads every variable, which in a
    # multi-process run is a collective step, so the other workers save too, into a private scratch
    # folder (removed when they finish) that also holds the backup they resume from.
    scratch = output if dist.is_chief else os.path.join(output, ".workers", f"worker{dist.worker_index}")
    backup = os.path.join(scratch, "backup")
    checkpoints = os.path.join(scratch, "checkpoints")
    for folder in (scratch, checkpoints):
        remove_stale_temporaries(folder)  # left by a write that was killed half-way
    # The best monitored value so far (from any phase's backup): `best.keras` is only replaced by a better model.
    states = [state for state in _backup_states(backup).values() if state.get("monitor") == monitor]
    newest = max(states, key=lambda state: state.get("epoch", 0), default={})
    checkpoint = AtomicModelCheckpoint(checkpoints, monitor=monitor, mode=mode, best=newest.get("best"),
                                       best_epoch=newest.get("best_epoch"))
    guard = DivergenceGuard()
    budget = None
    if config.time_budget is not None:
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
            phase_backup = TrainingBackup(os.path.join(backup, name), checkpoint=checkpoint)
            restored = phase_backup.restore(model)
        for warning in phase_backup.warnings:
            print(f"warning: {warning}")
        initial = restored["epoch"] if restored else first
        if restored:
            verb = "continuing the finished run" if action == "continue" else "resuming"
            print(f"{verb} from epoch {initial} of {last} "
                  f"(backup {os.path.join(backup, name, restored['weights'])})")
        if dist.is_chief:
            _truncate_history(history, initial)
        callbacks = [guard, checkpoint, phase_backup]  # the backup after the checkpoint: it records the best value
        if dist.is_chief:
            callbacks.append(keras.callbacks.CSVLogger(history, append=True))
            # Keras's TensorBoard callback writes through TensorFlow's summary API.
            if all(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorflow")):
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "logs")))
        if budget is not None:
            callbacks.append(budget)  # last: its state file is written after the epoch's checkpoints
        callbacks.extend(extra_callbacks)
        if initial < last and not (budget is not None and budget.exhausted):
            with dist.fitting(model):
                model.fit(
                    data["train"],
                    initial_epoch=initial,
                    epochs=last,
                    steps_per_epoch=data["steps_per_epoch"] if data.get("endless") else None,
                    validation_data=data["val"],
                    callbacks=callbacks,
                    shuffle=False,  # the tf.data pipelines shuffle / sample at random themselves
                    verbose=verbose if dist.is_chief else 0,
                )
        if guard.diverged is not None:
            raise TrainingDiverged(_diverged_message(guard.diverged, checkpoint, config, output))
        if name != phases[-1][0]:
            save_weights_atomic(model, done_marker)
        if budget is not None and budget.exhausted:
            break

    final = os.path.join(scratch, "model.keras")
    save_model_atomic(model, final)
    # Keep one backup, of the last phase: enough to continue the run with more epochs.
    phase_backup.prune()
    for name, _, _ in phases[:-1]:
        import shutil

        shutil.rmtree(os.path.join(backup, name), ignore_errors=True)
    if not dist.is_chief:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(scratch))  # `.workers`, once every worker has finished
        return model, {}
    if dist.num_replicas > 1:
        # Report on the saved model, on one device: it proves the file, and the report's full-size
        # single images need not split across replicas.
        distribute.reset()
        model = load_model(final)
    message, summary = task.report(model, data, config)
    print(message)
    if checkpoint.best_epoch is not None:
        summary["best"] = {"monitor": monitor, "value": checkpoint.best, "epoch": checkpoint.best_epoch}
        print(f"model.keras is the last epoch's model; the best {monitor} was {checkpoint.best:.4g} at epoch "
              f"{checkpoint.best_epoch} ({os.path.join(checkpoints, 'best.keras')})")
    if budget is not None:
        summary.update(budget.summary())
        print(_budget_message(budget, config))
        with contextlib.suppress(OSError):
            os.remove(budget.state_path)
    atomic_write_text(os.path.join(output, "summary.json"), json.dumps(summary, indent=2))
    return model, summary


def _format_scores(summary):
    shown = [f"{key} {value:.4g}" for key, value in summary.items() if isinstance(value, (int, float))][:3]
    return ", ".join(shown) or "no scores"


def _diverged_message(diverged, checkpoint, config, output):
    at = "at the end" if diverged["step"] == "end" else f"after {diverged['step']} steps"
    last = os.path.join(checkpoint.directory, "last.keras")
    kept = (f"the last good checkpoint is {last} (epoch {checkpoint.last_epoch})"
            if checkpoint.last_epoch else (f"the last good checkpoint is {last}" if os.path.isfile(last)
                                           else "no epoch finished before it"))
    return (f"training diverged in epoch {diverged['epoch']} (loss {diverged['loss']} {at}); nothing of that epoch "
            f"was saved: {kept}, and the backup in {os.path.join(output, 'backup')} is kept. Lower "
            f"optimizer.learning_rate (now {config.optimizer.learning_rate:g}) or set optimizer.clipnorm, then "
            "train again with --overwrite (or another --output)")


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
        p.add_argument("--find-lr-steps", type=int, default=200, metavar="N",
                       help="steps of the range test (default: %(default)s)")
        p.add_argument("--overwrite", action="store_true",
                       help="train from scratch even if the output folder holds a run (its files are replaced)")
        cli.add_verbose_argument(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before the parser: building it imports the tasks, and with them Keras (and TensorFlow).
    cli.quiet_start_from_argv(argv)
    args = _parser().parse_args(argv)

    def command():
        task = task_module(args.task)
        config = config_lib.load(task.Config, args.config, args.assignments)
        output = args.output or os.path.join("runs", args.task)
        if args.find_lr:
            find_learning_rate(task, config, output, args.find_lr_steps)
        else:
            fit(task, config, output, overwrite=args.overwrite)

    return cli.run(command, interrupted="interrupted: rerun the same command to resume from the last finished epoch")


if __name__ == "__main__":
    sys.exit(main())
