"""The files of one training run: `RunFolder`.

A run folder holds what a user keeps: `config.yaml`, `checkpoints/{last,best}.keras`, `backup/` (the state
a killed run resumes from, one folder per training phase), `history.csv`, TensorBoard `logs/`, the pictures of
`samples/`, and at the end `model.keras` and `summary.json`. Nothing there is lost by accident: a finished run
is never retrained (more `epochs` continue it; `overwrite=True` starts again), a run is never mixed with
another config, and every file is written atomically (`kx_vision.fileio`).

Reading comes first (`plan`: what to do with the folder), writing only once training really starts
(`open`): a start that fails on its input (a bad config, a missing data folder, weights that cannot be
loaded) leaves no folder behind.
"""

import contextlib
import json
import os
import shutil

from kx_vision import config as config_lib
from kx_vision.errors import ConfigError
from kx_vision.fileio import atomic_write, atomic_write_text, remove_stale_temporaries
from kx_vision.messages import say

# What a run writes into its folder (`overwrite` removes these, and nothing else).
RUN_FILES = ("checkpoints", "backup", "logs", "samples", "history.csv", "summary.json", "model.keras", "config.yaml",
             ".workers")


class RunFolder:
    """The folder `path` of one training run (see the module docstring).

    `plan(config)` reads the folder and decides what the run does ("new", "overwrite", "resume",
    "continue", "complete"); `open(config)` then creates it and writes the config. The other workers
    of a multi-worker run write into a private scratch folder (`scratch`) that `remove_scratch` removes
    at the end: saving is a collective step, so they save too.
    """

    def __init__(self, path, overwrite=False):
        self.path = os.fspath(path)
        self.overwrite = overwrite
        self.action = None  # what `plan` decided
        self.scratch = self.path  # where this process writes its checkpoints, backups and model

    def __repr__(self):
        return f"RunFolder({self.path!r}, overwrite={self.overwrite})"

    # --- where things are ---

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    @property
    def history(self):
        return self.file("history.csv")

    @property
    def summary_path(self):
        return self.file("summary.json")

    @property
    def logs(self):
        return self.file("logs")

    @property
    def samples(self):
        return self.file("samples")

    @property
    def checkpoints(self):
        return os.path.join(self.scratch, "checkpoints")

    @property
    def backup(self):
        return os.path.join(self.scratch, "backup")

    @property
    def model_path(self):
        return os.path.join(self.scratch, "model.keras")

    def phase_backup(self, name):
        """The backup folder of the training phase `name`."""
        return os.path.join(self.backup, name)

    def phase_marker(self, name):
        """The weights a finished phase `name` leaves behind (a resumed run skips that phase)."""
        return os.path.join(self.scratch, f"phase_{name}.weights.h5")

    # --- reading: what to do ---

    def plan(self, config, chief=True):
        """Decide (and return, as `action`) what to do with the folder: "new", "overwrite", "resume" (an
        interrupted run), "continue" (a finished run given more epochs) or "complete" (a finished run:
        nothing to do). Refuses to mix a run with another config. Reads only; the other workers of a
        multi-worker run (`chief=False`) read nothing: their action is "new"."""
        self.action = _plan(self.path, config, self.overwrite) if chief else "new"
        return self.action

    def read_summary(self):
        with open(self.summary_path) as f:
            return json.load(f)

    def backup_states(self):
        """`{phase: state}` of the phases' backups (see `callbacks.TrainingBackup`)."""
        return _backup_states(self.backup)

    # --- writing ---

    def open(self, config, chief=True, worker_index=0):
        """From here on the run writes into the folder: clears it for "overwrite", creates it, writes
        `config.yaml` (the chief; another worker gets its scratch folder), removes the temporaries of a
        write that was killed half-way."""
        if self.action == "overwrite":
            _clear_run(self.path)
            say(f"--overwrite: removed the previous run's files from {self.path}")
        os.makedirs(self.path, exist_ok=True)
        if chief:
            if self.action in ("new", "overwrite") and os.path.isfile(self.history):
                os.remove(self.history)  # no epoch of an earlier start was backed up: its rows are stale
            config_lib.dump(config, self.file("config.yaml"))
        self.scratch = self.path if chief else self.file(".workers", f"worker{worker_index}")
        for folder in (self.scratch, self.checkpoints):
            remove_stale_temporaries(folder)

    def truncate_history(self, epochs):
        """Keep the header and the rows of the first `epochs` epochs of `history.csv` (a killed run may
        have logged an epoch that its backup does not hold; it is trained again)."""
        if not os.path.isfile(self.history):
            return
        with open(self.history) as f:
            lines = f.read().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].strip().isdigit()
                            and int(line.split(",", 1)[0]) < epochs]
        if kept != lines:
            atomic_write_text(self.history, "".join(kept))

    def save_weights(self, model, path):
        atomic_write(path, model.save_weights)

    def save_model(self, model):
        """`model.keras` (in the scratch folder of a worker that is not the chief); its path."""
        atomic_write(self.model_path, model.save)
        return self.model_path

    def remove_backups(self, names):
        """Remove the backups of the phases `names` (finished: their weights live on in the next phase)."""
        for name in names:
            shutil.rmtree(self.phase_backup(name), ignore_errors=True)

    def remove_scratch(self):
        """Remove a worker's scratch folder, and `.workers` once every worker has finished."""
        if self.scratch == self.path:
            return
        shutil.rmtree(self.scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.scratch))

    def write_summary(self, summary):
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))


def _flat(data, prefix=""):
    out = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _backup_states(backup):
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


def _plan(output, config, overwrite):
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
    for name in RUN_FILES:
        path = os.path.join(output, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
