"""Shared helpers of the benchmark scripts (standard library only: importable without Keras or a backend)."""

import json
import os
import platform


def cpu_device():
    """The `device` field of a CPU measurement, e.g. `CPU (x86_64, 16 cores)`."""
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def emit(record, out=None):
    """Print `record` as one JSON line and, when `out` is given, append the same line to that file."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
