"""Make TensorFlow (and the packages that need it) look absent, as on a JAX-only GPU machine.

`PYTHONPATH=tests/no_tensorflow KERAS_BACKEND=jax python -m pytest ...` runs the command-line suite this way
in CI (.ci/run): `import tensorflow` fails with ModuleNotFoundError and `importlib.util.find_spec` returns
None, exactly as when the package is not installed.
"""

import os
import sys

# KX_HIDE_MODULES adds names (space-separated): benchmarks/device.sh's dry run also hides what the GPU machine lacks.
_HIDDEN = {"tensorflow", "tensorboard", "tensorflow_datasets", "tf_keras"} | set(os.environ.get("KX_HIDE_MODULES", "").split())


class _Hide:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
