"""Training tasks: each a `Task` subclass (see `kx_vision.tasks.base`) in a module of its own.

`TASKS` maps the command-line name to that module; `get_task(name)` imports it and returns its `Task`
class. Register a new task here (one line) and it is a `kx_vision.train` subcommand.
"""

import importlib

from kx_vision.errors import ConfigError

TASKS = {
    "superres": "kx_vision.tasks.superres",
    "segmentation": "kx_vision.tasks.segmentation",
    "style": "kx_vision.tasks.style",
}


def get_task(name):
    """The `Task` subclass registered as `name`."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).Task
