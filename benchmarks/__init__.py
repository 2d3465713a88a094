"""Shared helpers of the benchmark scripts (standard library only: importable without Keras or a backend)."""

import json
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def backend_env(pipeline, source=REPO):
    """The environment of a measuring subprocess: `numpy` (or `jax`) runs on JAX with TensorFlow hidden
    (`tests/no_tensorflow`), as on a JAX-only machine; `tf_data` (or `tensorflow`) on TensorFlow. `source`:
    the checkout whose `kx_vision` is measured."""
    jax = pipeline in ("numpy", "jax")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax" if jax else "tensorflow",
           "PYTHONPATH": str(source)}
    if jax:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "no_tensorflow"), str(source)])
    return env


def rss_mib():
    """This process's resident memory now, in MiB (Linux; NaN elsewhere)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
