"""The Trainer: runs any `Task` (kx_vision.tasks) with `model.fit`, in phases, on one device or many, for
a number of epochs or a time budget; and the learning-rate range test.

`Trainer(task)` trains in memory: nothing is written, `fit` returns the `keras.callbacks.History` of the
run and leaves the model in `trainer.model` (notebooks, tests, scripts). `Trainer(task, run)`, `run` a
`RunFolder` (or its path), trains into a run folder: resumable, checkpointed, logged, never overwritten by
accident, and a run that diverges stops without saving the diverged epoch (see `kx_vision.training.run_folder`).
`fit(task, config, output)` is the second, as `python -m kx_vision.train` runs it (entry points only parse
arguments and call `fit` / `find_learning_rate`).

A run is a list of phases (`tasks.base.Phase`, from `Task.phases`: by default a first phase with the
layers of `Task.freeze_plan` frozen, then one that trains everything), each compiled afresh with the
optimizer and schedule of `kx_vision.training.optimizers`.
"""

import dataclasses
import importlib.util
import os

from kx_vision.errors import ConfigError, TrainingDiverged
from kx_vision.messages import say
from kx_vision.tasks import get_task
from kx_vision.tasks.base import Task
from kx_vision.training import distribute
from kx_vision.training.optimizers import build_optimizer, time_schedule
from kx_vision.training.run_folder import RunFolder

__all__ = ["Trainer", "TrainingDiverged", "find_learning_rate", "fit", "resolve_task"]


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
    """Train `task` (a `Task` subclass, instance or registered name) with `config` into the run folder `output`.

    `output` is never overwritten by accident: an interrupted run there resumes from its last finished
    epoch (same config), a finished run is left as it is (or continued, when `epochs` grew), and
    `overwrite=True` is needed to train there from scratch. A finished phase leaves its weights behind,
    so a resumed run skips it.

    Returns `(model, summary)`, the summary being a dict of final validation scores.
    """
    trainer = Trainer(resolve_task(task, config), RunFolder(output, overwrite=overwrite), verbose=verbose,
                      callbacks=extra_callbacks)
    trainer.fit()
    return trainer.model, trainer.summary


def find_learning_rate(task, config, output, num_steps=200):
    """The LR range test on the task's model and data; saves `lr_find.png` and `lr_find.json` in `output`."""
    return Trainer(resolve_task(task, config), RunFolder(output)).find_learning_rate(num_steps)


@dataclasses.dataclass
class _RunCallbacks:
    """The callbacks that live across the phases of one `fit`."""

    guard: object  # callbacks.DivergenceGuard
    checkpoint: object = None  # callbacks.AtomicModelCheckpoint (run folder only)
    samples: object = None  # callbacks.ExampleImages (run folder, one worker only)
    budget: object = None  # callbacks.TimeBudget (with `time_budget`)
    backup: object = None  # the current phase's callbacks.TrainingBackup (run folder only)


class Trainer:
    """Trains one task, in memory (`run=None`) or into a run folder (see the module docstring).

    `task` is a `Task` instance (or subclass, or registered name, for its default config); `callbacks`
    are added to Keras's `fit` in every phase; `verbose` is `fit`'s.
    """

    def __init__(self, task, run=None, verbose="auto", callbacks=()):
        self.task = resolve_task(task)
        self.config = self.task.config
        self.run = RunFolder(run) if isinstance(run, (str, os.PathLike)) else run
        self.verbose = verbose
        self.extra_callbacks = list(callbacks)
        self.model = None  # the trained model, after `fit`
        self.summary = None  # its final scores, after `fit` (`Task.report`'s, and the best checkpoint's)
        self.history = None  # the `keras.callbacks.History` of every phase of the last `fit`
        self.dist = None  # the distribution of the running `fit` (`distribute.setup`)
        self.callbacks = None  # the running `fit`'s `_RunCallbacks`

    # --- entry points ---

    def fit(self, model=None):
        """Train the task's model (or `model`: it goes on training); returns the `History` of every phase.
        The model is `self.model` afterwards, its final scores `self.summary`."""
        import keras

        self.task.check_config()
        self.dist = distribute.setup(self.config.distribute)
        policy = keras.config.dtype_policy()
        # The policy is global in Keras: set it for the model, loss networks and optimizer built here.
        keras.config.set_dtype_policy(self.config.precision)
        try:
            return self._fit(model)
        finally:
            keras.config.set_dtype_policy(policy)
            distribute.reset()

    def find_learning_rate(self, num_steps=200):
        """The LR range test on the task's model and data (`lr_finder.find_lr`): `{"lrs", "losses",
        "suggestion"}`, also saved as `lr_find.png` and `lr_find.json` in a run folder."""
        import keras

        from kx_vision.training import lr_finder

        self.task.check_config()
        keras.utils.set_random_seed(self.config.seed)
        data = self.task.build_data()
        model = self.task.build_model()
        _initialise(model, self.config)
        train_data = data.train
        if not data.endless and hasattr(train_data, "repeat"):  # a finite tf.data.Dataset
            train_data = train_data.repeat()
        result = lr_finder.find_lr(model, train_data, self.task.loss, num_steps=num_steps)
        suggestion = result["suggestion"]
        message = (f"LR range test over {len(result['lrs'])} steps: suggested learning rate "
                   f"{'n/a (too few steps)' if suggestion is None else f'{suggestion:.2e}'}")
        if self.run is not None:
            lr_finder.save_plot(result, self.run.file("lr_find.png"))
            lr_finder.save_json(result, self.run.file("lr_find.json"))
            message += f"; plot: {self.run.file('lr_find.png')}"
        say(message)
        return result

    # --- one run ---

    def _fit(self, model):
        import keras

        config, dist, run = self.config, self.dist, self.run
        dist.check_batch_size(config.data.batch_size)
        if config.time_budget is not None and dist.num_workers > 1:
            raise ConfigError("config key 'time_budget' cannot be used with several workers (each would stop "
                              "at another step); train for a number of epochs instead")
        self.history = keras.callbacks.History()
        self.history.epoch = []
        if run is not None and run.plan(config, chief=dist.is_chief) == "complete":
            return self._finished_already()
        if dist.num_replicas > 1:
            say(f"distribute={dist.mode}: {dist.num_replicas} replicas over {dist.num_workers} worker(s), "
                f"this is worker {dist.worker_index}; global batch {config.data.batch_size}")
        keras.utils.set_random_seed(config.seed)
        data, examples, model, phases = self._start(model)
        if run is not None:
            run.open(config, chief=dist.is_chief, worker_index=dist.worker_index)
        self.callbacks = self._create_run_callbacks(data, examples)
        frozen = {name for phase in phases for name in phase.frozen}  # the layers that some phase freezes
        first = 0
        for index, phase in enumerate(phases):
            self._train_phase(model, data, phase, first, frozen, last_phase=index == len(phases) - 1)
            first += phase.epochs
            if self.callbacks.budget is not None and self.callbacks.budget.exhausted:
                break
        self._finish(model, data, phases)
        return self.history

    def _finished_already(self):
        from kx_vision.models.loading import load_model

        run = self.run
        summary = run.read_summary()
        say(f"{run.path} holds a finished run of {self.config.epochs} epochs; its model is {run.model_path} "
            f"({_format_scores(summary)}). Nothing to do: --set epochs=N (more) continues it, "
            "--overwrite trains again from scratch, --output DIR starts a new run.")
        self.model, self.summary = load_model(run.model_path), summary
        return self.history

    def _start(self, model):
        """Data, model (seeded by `init_from`), loss and phases: all that can fail on the user's input, built
        before a run folder is written, so that such a start leaves none behind."""
        dist, task = self.dist, self.task
        data = task.build_data()
        examples = data.val  # before it is repeated per replica: the samples show each image once
        data.train = dist.train_dataset(data.train)
        data.val = dist.validation_dataset(data.val)
        with dist.scope():
            model = dist.prepare_model(task.build_model() if model is None else model)
            transferred = _initialise(model, self.config)
            _ = task.loss  # a loss network whose weights cannot be loaded stops here
        return data, examples, model, task.phases(model, transferred)

    def _create_run_callbacks(self, data, examples):
        """The callbacks that live across phases: divergence guard, time budget, and in a run folder the
        checkpoints (with the best value so far, from any phase's backup: `best.keras` is only replaced by
        a better model) and the pictures of validation samples (the chief of one worker only)."""
        from kx_vision.training.callbacks import AtomicModelCheckpoint, DivergenceGuard, ExampleImages, TimeBudget

        config, run = self.config, self.run
        made = _RunCallbacks(DivergenceGuard())
        if run is not None:
            monitor, mode = self.task.monitor
            states = [state for state in run.backup_states().values() if state.get("monitor") == monitor]
            newest = max(states, key=lambda state: state.get("epoch", 0), default={})
            made.checkpoint = AtomicModelCheckpoint(run.checkpoints, monitor=monitor, mode=mode,
                                                    best=newest.get("best"), best_epoch=newest.get("best_epoch"))
            if config.samples and self.dist.is_chief and self.dist.num_workers == 1:
                made.samples = ExampleImages(self.task.render_examples, examples, config.samples, run.samples,
                                             log_dir=run.file("logs", "samples") if _tensorboard() else None)
        if config.time_budget is not None:
            made.budget = TimeBudget(config.time_budget,
                                     state_path=None if run is None else os.path.join(run.backup, "time_budget.json"))
            say(f"time budget: {config.time_budget:g} s of training steps (compilation and validation not "
                f"counted), at most {config.epochs} epochs of {data.steps_per_epoch} steps")
            if config.optimizer.schedule == "one_cycle" and config.optimizer.cycle_momentum:
                say("time budget: optimizer.cycle_momentum is not applied (beta_1 stays constant); "
                    "the one-cycle rate follows the clock")
        return made

    def _train_phase(self, model, data, phase, first, frozen, last_phase):
        """Epochs `first` to `first + phase.epochs` (a resumed phase from its backup), the layers of
        `phase.frozen` not trained (the others of `frozen` trained)."""
        run, last = self.run, first + phase.epochs
        marker = run.phase_marker(phase.name) if run is not None and not last_phase else None
        if marker is not None and os.path.isfile(marker):
            model.load_weights(marker)
            say(f"phase '{phase.name}' already finished: loaded {marker}")
            return
        for layer in model.layers:
            if layer.name in frozen:
                layer.trainable = layer.name not in phase.frozen
        if phase.frozen:
            trained = [layer.name for layer in model.layers if layer.weights and layer.name not in phase.frozen]
            shown = ", ".join(trained) if len(trained) <= 6 else f"{len(trained)} layers"
            say(f"epochs {first + 1}-{last}: training only {shown} ({', '.join(phase.frozen)} frozen)")
        initial = self._compile(model, data, phase, first, last_phase)
        budget = self.callbacks.budget
        if initial < last and not (budget is not None and budget.exhausted):
            with self.dist.fitting(model):
                history = model.fit(
                    data.train,
                    initial_epoch=initial,
                    epochs=last,
                    steps_per_epoch=data.steps_per_epoch if data.endless else None,
                    validation_data=data.val,
                    callbacks=self._phase_callbacks(),
                    shuffle=False,  # the pipelines shuffle / sample at random themselves
                    verbose=self.verbose if self.dist.is_chief else 0,
                )
            self._record(history, model)
        if self.callbacks.guard.diverged is not None:
            raise TrainingDiverged(_diverged_message(self.callbacks.guard.diverged, self.callbacks.checkpoint,
                                                     self.config, run))
        if marker is not None:
            run.save_weights(model, marker)

    def _compile(self, model, data, phase, first, last_phase):
        """Compile `model` for `phase` (its optimizer and schedule over the phase's steps; with a time budget,
        the last phase's rate spans what is left of it) and restore the phase's backup: the first epoch to train."""
        from kx_vision.training.callbacks import TrainingBackup

        config, dist, run, made = self.config, self.dist, self.run, self.callbacks
        timed = made.budget is not None and last_phase
        if made.budget is not None:  # frozen phases keep their step schedule
            made.budget.start_phase(phase.name, time_schedule(config) if timed else None)
        with dist.scope():
            model.compile(
                optimizer=build_optimizer(config, phase.epochs * data.steps_per_epoch, timed=timed),
                loss=self.task.loss,
                metrics=self.task.build_metrics(),
                jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            )
            dist.prepare_fit(model)
            if run is None:
                return first
            made.backup = TrainingBackup(run.phase_backup(phase.name), checkpoint=made.checkpoint)
            restored = made.backup.restore(model)
        initial = restored["epoch"] if restored else first
        if restored:
            verb = "continuing the finished run" if run.action == "continue" else "resuming"
            say(f"{verb} from epoch {initial} of {first + phase.epochs} "
                f"(backup {os.path.join(run.phase_backup(phase.name), restored['weights'])})")
        if dist.is_chief:
            run.truncate_history(initial)
        return initial

    def _phase_callbacks(self):
        import keras

        made, run = self.callbacks, self.run
        callbacks = [made.guard]
        if run is not None:
            callbacks += [made.checkpoint, made.backup]  # the backup after the checkpoint: it records the best
            if self.dist.is_chief:
                callbacks.append(keras.callbacks.CSVLogger(run.history, append=True))
                # Keras's TensorBoard callback writes through TensorFlow's summary API.
                if _tensorboard():
                    callbacks.append(keras.callbacks.TensorBoard(run.logs))
                if made.samples is not None:
                    callbacks.append(made.samples)
        if made.budget is not None:
            callbacks.append(made.budget)  # last: its state file is written after the epoch's checkpoints
        return callbacks + self.extra_callbacks

    def _record(self, history, model):
        """Add one phase's `History` to the run's."""
        for key, values in history.history.items():
            self.history.history.setdefault(key, []).extend(values)
        self.history.epoch.extend(history.epoch)
        self.history.set_model(model)

    def _finish(self, model, data, phases):
        """Save the run (a run folder), report on the model, keep it and its scores."""
        run, made = self.run, self.callbacks
        self.model, self.summary = model, {}
        if run is not None:
            final = run.save_model(model)
            made.backup.prune()  # keep one backup, of the last phase: enough to continue with more epochs
            run.remove_backups([phase.name for phase in phases[:-1]])
            if not self.dist.is_chief:
                run.remove_scratch()
                return
            if self.dist.num_replicas > 1:
                # Report on the saved model, on one device: it proves the file, and the report's full-size
                # single images need not split across replicas.
                from kx_vision.models.loading import load_model

                distribute.reset()
                model = self.model = load_model(final)
        message, self.summary = self.task.report(model, data)
        say(message)
        if made.checkpoint is not None and made.checkpoint.best_epoch is not None:
            monitor, best = self.task.monitor[0], made.checkpoint
            self.summary["best"] = {"monitor": monitor, "value": best.best, "epoch": best.best_epoch}
            say(f"model.keras is the last epoch's model; the best {monitor} was {best.best:.4g} at "
                f"epoch {best.best_epoch} ({os.path.join(best.directory, 'best.keras')})")
        if made.budget is not None:
            self.summary.update(made.budget.summary())
            say(_budget_message(made.budget, self.config))
            if made.budget.state_path and os.path.isfile(made.budget.state_path):
                os.remove(made.budget.state_path)
        if run is not None:
            run.write_summary(self.summary)


def _tensorboard():
    """Whether TensorBoard logs are written: TensorBoard and TensorFlow (its summary API) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorflow"))


def _initialise(model, config):
    """Seed `model` from `config.init_from` by layer name; the names of the transferred layers."""
    path = getattr(config, "init_from", None)
    if not path:
        return []
    from kx_vision.models.loading import format_transfer_report, load_model_or_preset, transfer_weights

    report = transfer_weights(load_model_or_preset(path), model)
    say(format_transfer_report(report))
    if not report["transferred"]:
        raise ConfigError(f"init_from: no layer of {path} matches this model by name and shape")
    return report["transferred"]


def _format_scores(summary):
    shown = [f"{key} {value:.4g}" for key, value in summary.items() if isinstance(value, (int, float))][:3]
    return ", ".join(shown) or "no scores"


def _diverged_message(diverged, checkpoint, config, run):
    at = "at the end" if diverged["step"] == "end" else f"after {diverged['step']} steps"
    message = f"training diverged in epoch {diverged['epoch']} (loss {diverged['loss']} {at})"
    if run is not None:
        last = os.path.join(checkpoint.directory, "last.keras")
        kept = (f"the last good checkpoint is {last} (epoch {checkpoint.last_epoch})"
                if checkpoint.last_epoch else (f"the last good checkpoint is {last}" if os.path.isfile(last)
                                               else "no epoch finished before it"))
        message += f"; nothing of that epoch was saved: {kept}, and the backup in {run.file('backup')} is kept"
    again = " with --overwrite (or another --output)" if run is not None else ""
    return (f"{message}. Lower optimizer.learning_rate (now {config.optimizer.learning_rate:g}) or set "
            f"optimizer.clipnorm, then train again{again}")


def _budget_message(budget, config):
    step_ms = 1000 * budget.spent / max(budget.timed_steps, 1)
    message = (f"time budget: {budget.spent:.1f} s of training in {budget.steps} steps ({step_ms:.2f} ms/step); "
               f"compilation and first batches {budget.startup_seconds:.1f} s, not counted")
    if not budget.exhausted:
        message += (f"; stopped by epochs={config.epochs} with {budget.budget - budget.spent:.1f} s of the budget "
                    "left (raise epochs to use it all)")
    return message
