"""The Trainer: runs any `Task` (kx_vision.tasks) with `model.fit`, in phases, resumable, on one device
or many, for a number of epochs or a time budget; and the learning-rate range test.

The run folder (`output`) holds what a user keeps: `config.yaml`, `checkpoints/{last,best}.keras`,
`backup/` (the state a killed run resumes from), `history.csv`, TensorBoard `logs/`, and at the end
`model.keras` and `summary.json`. Nothing there is lost by accident: a finished run is never retrained
(more `epochs` continue it; `overwrite=True` starts again), every file is written atomically, and a run
that diverges stops without saving the diverged epoch. Entry points (`kx_vision.train`) only parse
arguments and call `fit` / `find_learning_rate`.
"""

import contextlib
import importlib.util
import json
import math
import os

from kx_vision import config as config_lib
from kx_vision import distribute
from kx_vision.errors import ConfigError, KxVisionError
from kx_vision.tasks import get_task
from kx_vision.tasks.base import Task


def resolve_task(task, config=None):
    """A `Task` instance from a Task subclass or instance, a registered name, or a task module."""
    if isinstance(task, str):
        task = get_task(task)
    elif not isinstance(task, (type, Task)) and hasattr(task, "Task"):  # a module of kx_vision.tasks
        task = task.Task
    if isinstance(task, Task):
        if config is not None:
            task.config = config
        return task
    return task(config)


def fit(task, config, output, verbose="auto", extra_callbacks=(), overwrite=False):
    """Train `task` (a `Task` subclass, instance or registered name) with `config`, writing into `output`.

    A task may ask for a first phase in which some layers are frozen (`Task.freeze_plan`: the
    pretrained backbone of a U-Net, or the layers transferred from a x2 model); training then runs
    in two phases, each compiled afresh. A finished phase leaves its weights behind, so a resumed
    run skips it.

    `output` is never overwritten by accident: an interrupted run there resumes from its last
    finished epoch (same config), a finished run is left as it is (or continued, when `epochs` grew),
    and `overwrite=True` is needed to train there from scratch.

    Returns `(model, summary)`, the summary being a dict of final validation scores.
    """
    return Trainer(resolve_task(task, config), output, verbose=verbose, callbacks=extra_callbacks,
                   overwrite=overwrite).fit()


def find_learning_rate(task, config, output, num_steps=200):
    """The LR range test on the task's model and data; saves `lr_find.png` and `lr_find.json`."""
    return Trainer(resolve_task(task, config), output).find_learning_rate(num_steps)


class Trainer:
    """Runs one task's training into one run folder (see the module docstring)."""

    def __init__(self, task, output, verbose="auto", callbacks=(), overwrite=False):
        self.task, self.config, self.output = task, task.config, output
        self.verbose, self.extra_callbacks, self.overwrite = verbose, list(callbacks), overwrite

    # --- entry points ---

    def fit(self):
        import keras

        self.task.check_config()
        self.dist = distribute.setup(self.config.distribute)
        policy = keras.config.dtype_policy()
        # The policy is global in Keras: set it for the model, loss networks and optimizer built here.
        keras.config.set_dtype_policy(self.config.precision)
        try:
            return self._run()
        finally:
            keras.config.set_dtype_policy(policy)
            distribute.reset()

    def find_learning_rate(self, num_steps=200):
        import keras

        from kx_vision import lr_finder

        self.task.check_config()
        keras.utils.set_random_seed(self.config.seed)
        data = self.task.build_data()
        model = self.task.build_model()
        _initialise(model, self.config)
        train_data = data.train
        if not data.endless and hasattr(train_data, "repeat"):  # a finite tf.data.Dataset
            train_data = train_data.repeat()
        os.makedirs(self.output, exist_ok=True)
        result = lr_finder.find_lr(model, train_data, self.task.loss, num_steps=num_steps)
        plot = os.path.join(self.output, "lr_find.png")
        lr_finder.save_plot(result, plot)
        lr_finder.save_json(result, os.path.join(self.output, "lr_find.json"))
        suggestion = result["suggestion"]
        print(f"LR range test over {len(result['lrs'])} steps: suggested learning rate "
              f"{'n/a (too few steps)' if suggestion is None else f'{suggestion:.2e}'}; plot: {plot}")
        return result

    # --- one run ---

    def _run(self):
        import keras

        from kx_vision.models.loading import load_model

        config, dist, output = self.config, self.dist, self.output
        dist.check_batch_size(config.data.batch_size)
        if config.time_budget is not None and dist.num_workers > 1:
            raise ConfigError("config key 'time_budget' cannot be used with several workers (each would stop "
                              "at another step); train for a number of epochs instead")
        self.action = _prepare_output(output, config, self.overwrite) if dist.is_chief else "new"
        if self.action == "complete":
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
        data = self.task.build_data()
        self.example_data = data.val  # before it is repeated per replica: the samples show each image once
        data.train = dist.train_dataset(data.train)
        data.val = dist.validation_dataset(data.val)
        with dist.scope():
            model = dist.prepare_model(self.task.build_model())
            transferred = _initialise(model, config)
        frozen, frozen_epochs = self.task.freeze_plan(model, transferred)
        frozen_epochs = min(frozen_epochs, config.epochs) if frozen else 0
        phases = [("frozen", 0, frozen_epochs), ("all", frozen_epochs, config.epochs)]
        phases = [phase for phase in phases if phase[1] < phase[2]]

        self._open_run_folder()
        self._create_run_callbacks(data)
        for index, (name, first, last) in enumerate(phases):
            last_phase = index == len(phases) - 1
            self._train_phase(model, data, name, first, last, frozen, last_phase)
            if self.budget is not None and self.budget.exhausted:
                break
        return self._finish(model, data, phases)

    def _open_run_folder(self):
        """From here on the run writes into `output` (only the chief; the other workers of a multi-worker
        run keep a private scratch folder: saving is a collective step, so they save too)."""
        from kx_vision.fileio import remove_stale_temporaries

        dist, output = self.dist, self.output
        if self.action == "overwrite":
            _clear_run(output)
            print(f"--overwrite: removed the previous run's files from {output}")
        os.makedirs(output, exist_ok=True)
        self.history = os.path.join(output, "history.csv")
        if dist.is_chief:
            if self.action in ("new", "overwrite") and os.path.isfile(self.history):
                os.remove(self.history)  # no epoch of an earlier start was backed up: its rows are stale
            config_lib.dump(self.config, os.path.join(output, "config.yaml"))
        self.scratch = output if dist.is_chief else os.path.join(output, ".workers", f"worker{dist.worker_index}")
        self.backup = os.path.join(self.scratch, "backup")
        self.checkpoints = os.path.join(self.scratch, "checkpoints")
        for folder in (self.scratch, self.checkpoints):
            remove_stale_temporaries(folder)  # left by a write that was killed half-way

    def _create_run_callbacks(self, data):
        """The callbacks that live across phases: checkpoints (with the best value so far, from any
        phase's backup: `best.keras` is only replaced by a better model), divergence guard, time budget."""
        from kx_vision.callbacks import AtomicModelCheckpoint, DivergenceGuard, ExampleImages, TimeBudget

        config = self.config
        monitor, mode = self.task.monitor
        states = [state for state in _backup_states(self.backup).values() if state.get("monitor") == monitor]
        newest = max(states, key=lambda state: state.get("epoch", 0), default={})
        self.checkpoint = AtomicModelCheckpoint(self.checkpoints, monitor=monitor, mode=mode,
                                                best=newest.get("best"), best_epoch=newest.get("best_epoch"))
        self.guard = DivergenceGuard()
        self.samples = None  # pictures of validation samples after every epoch (the chief of one worker only)
        if config.samples and self.dist.is_chief and self.dist.num_workers == 1:
            self.samples = ExampleImages(self.task.render_examples, self.example_data, config.samples,
                                         os.path.join(self.output, "samples"),
                                         log_dir=os.path.join(self.output, "logs", "samples") if _tensorboard() else None)
        self.budget = None
        if config.time_budget is not None:
            self.budget = TimeBudget(config.time_budget, state_path=os.path.join(self.backup, "time_budget.json"))
            print(f"time budget: {config.time_budget:g} s of training steps (compilation and validation not "
                  f"counted), at most {config.epochs} epochs of {data.steps_per_epoch} steps")
            if config.optimizer.schedule == "one_cycle" and config.optimizer.cycle_momentum:
                print("time budget: optimizer.cycle_momentum is not applied (beta_1 stays constant); "
                      "the one-cycle rate follows the clock")

    def _train_phase(self, model, data, name, first, last, frozen, last_phase):
        import keras

        from kx_vision.callbacks import TrainingBackup, save_weights_atomic

        config, dist = self.config, self.dist
        done_marker = os.path.join(self.scratch, f"phase_{name}.weights.h5")
        if not last_phase and os.path.isfile(done_marker):
            model.load_weights(done_marker)
            print(f"phase '{name}' already finished: loaded {done_marker}")
            return
        for layer in model.layers:
            if layer.name in frozen:  # frozen in the first phase, trained in the others
                layer.trainable = name != "frozen"
        if name == "frozen":
            trained = [layer.name for layer in model.layers if layer.weights and layer.name not in frozen]
            shown = ", ".join(trained) if len(trained) <= 6 else f"{len(trained)} layers"
            print(f"epochs {first + 1}-{last}: training only {shown} ({', '.join(frozen)} frozen)")
        timed = self.budget is not None and last_phase
        if self.budget is not None:
            # Frozen phases keep their step schedule; the last phase's rate spans what is left of the budget.
            self.budget.start_phase(name, time_schedule(config) if timed else None)
        with dist.scope():
            model.compile(
                optimizer=build_optimizer(config, (last - first) * data.steps_per_epoch, timed=timed),
                loss=self.task.loss,
                metrics=self.task.build_metrics(),
                jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            )
            dist.prepare_fit(model)
            self.phase_backup = TrainingBackup(os.path.join(self.backup, name), checkpoint=self.checkpoint)
            restored = self.phase_backup.restore(model)
        for warning in self.phase_backup.warnings:
            print(f"warning: {warning}")
        initial = restored["epoch"] if restored else first
        if restored:
            verb = "continuing the finished run" if self.action == "continue" else "resuming"
            print(f"{verb} from epoch {initial} of {last} "
                  f"(backup {os.path.join(self.backup, name, restored['weights'])})")
        if dist.is_chief:
            _truncate_history(self.history, initial)
        callbacks = [self.guard, self.checkpoint, self.phase_backup]  # the backup after the checkpoint: it records the best
        if dist.is_chief:
            callbacks.append(keras.callbacks.CSVLogger(self.history, append=True))
            # Keras's TensorBoard callback writes through TensorFlow's summary API.
            if _tensorboard():
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(self.output, "logs")))
            if self.samples is not None:
                callbacks.append(self.samples)
        if self.budget is not None:
            callbacks.append(self.budget)  # last: its state file is written after the epoch's checkpoints
        callbacks.extend(self.extra_callbacks)
        if initial < last and not (self.budget is not None and self.budget.exhausted):
            with dist.fitting(model):
                model.fit(
                    data.train,
                    initial_epoch=initial,
                    epochs=last,
                    steps_per_epoch=data.steps_per_epoch if data.endless else None,
                    validation_data=data.val,
                    callbacks=callbacks,
                    shuffle=False,  # the pipelines shuffle / sample at random themselves
                    verbose=self.verbose if dist.is_chief else 0,
                )
        if self.guard.diverged is not None:
            raise TrainingDiverged(_diverged_message(self.guard.diverged, self.checkpoint, config, self.output))
        if not last_phase:
            save_weights_atomic(model, done_marker)

    def _finish(self, model, data, phases):
        import shutil

        from kx_vision.callbacks import save_model_atomic
        from kx_vision.fileio import atomic_write_text
        from kx_vision.models.loading import load_model

        dist, output = self.dist, self.output
        final = os.path.join(self.scratch, "model.keras")
        save_model_atomic(model, final)
        # Keep one backup, of the last phase: enough to continue the run with more epochs.
        self.phase_backup.prune()
        for name, _, _ in phases[:-1]:
            shutil.rmtree(os.path.join(self.backup, name), ignore_errors=True)
        if not dist.is_chief:
            shutil.rmtree(self.scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.scratch))  # `.workers`, once every worker has finished
            return model, {}
        if dist.num_replicas > 1:
            # Report on the saved model, on one device: it proves the file, and the report's full-size
            # single images need not split across replicas.
            distribute.reset()
            model = load_model(final)
        message, summary = self.task.report(model, data)
        print(message)
        monitor = self.task.monitor[0]
        if self.checkpoint.best_epoch is not None:
            summary["best"] = {"monitor": monitor, "value": self.checkpoint.best, "epoch": self.checkpoint.best_epoch}
            print(f"model.keras is the last epoch's model; the best {monitor} was {self.checkpoint.best:.4g} at "
                  f"epoch {self.checkpoint.best_epoch} ({os.path.join(self.checkpoints, 'best.keras')})")
        if self.budget is not None:
            summary.update(self.budget.summary())
            print(_budget_message(self.budget, self.config))
            with contextlib.suppress(OSError):
                os.remove(self.budget.state_path)
        atomic_write_text(os.path.join(output, "summary.json"), json.dumps(summary, indent=2))
        return model, summary


def _tensorboard():
    """Whether TensorBoard logs are written: TensorBoard and TensorFlow (its summary API) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorflow"))


# --- optimizer and schedules ---

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



# --- the run folder ---

# What a run writes into its output folder (`--overwrite` removes these, and nothing else).
RUN_FILES = ("checkpoints", "backup", "logs", "samples", "history.csv", "summary.json", "model.keras", "config.yaml",
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
    # a finished run may be given more `epochs` to continue it. Nor do the pictures of `samples`.
    ignored = ("distribute", "samples") + (("epochs",) if status == "finished" else ())
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
    from kx_vision.models.loading import format_transfer_report, load_model_or_preset, transfer_weights

    report = transfer_weights(load_model_or_preset(path), model)
    print(format_transfer_report(report))
    if not report["transferred"]:
        raise ConfigError(f"init_from: no layer of {path} matches this model by name and shape")
    return report["transferred"]


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
