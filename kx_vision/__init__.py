"""kx_vision: the image-to-image models of fast.ai's 2018 lesson 14, in Keras 3 (TensorFlow and JAX).

A start::

    import numpy as np
    import kx_vision
    model = kx_vision.models.EDSR(scale=2, num_blocks=2, num_filters=16)
    image = np.random.default_rng(0).random((32, 32, 3), np.float32)       # RGB in [0, 1], or uint8
    upscaled = kx_vision.inference.predict_whole(kx_vision.inference.as_predict_fn(model), image)  # uint8

The map (each submodule is loaded on first use, `kx_vision.models` for instance):

- `models`: `EDSR`, `UNet`, `FPN`, `UpsampleHeadNet`, `StyleTransferNet`; each has `from_preset` and
  `save_to_preset`.
- `layers`: `PixelShuffle` and `ICNR`, `ResidualBlock`, `ReflectionPadding2D`, `Blur2D`, ...
- `losses`: `PerceptualLoss`, `StyleTransferLoss`, `SegmentationLoss`.
- `metrics`: `psnr`, `ssim` (functions) and `PSNR`, `SSIM`, `PixelAccuracy`, `Dice` (Keras metrics).
- `optimizers` (`training.optimizers`): `Adam`, `AdamW`, `SGD` with per-group learning rates; the `OneCycle`
  schedule.
- `inference`: whole-image and tiled prediction, the x8 self-ensemble (`inference.tiling`, whose functions are
  the package's own); pictures of results (`inference.pictures`); exported models in their runtimes
  (`inference.runtimes`).
- `training` and `tasks`: the training API (`training.trainer.Trainer`, `training.trainer.fit`,
  `tasks.get_task`); `trainer`, `callbacks` and `visualize` name `training.trainer`, `training.callbacks`
  and `inference.pictures`.
- `export`: a `.keras` model as a TensorFlow SavedModel.
- `errors`: `KxVisionError`, the base of every error the package raises on purpose.

Images: functions that take an image (`psnr`, `ssim`, `inference.predict_*`) accept float RGB in [0, 1] or
uint8 (divided by 255); model calls take float RGB in [0, 1] and refuse integer arrays.

`import kx_vision` registers every public layer, model, loss, metric, optimizer and schedule with Keras, so
`keras.saving.load_model(path)` needs no `custom_objects`. It does so without importing Keras itself (so that
`python -m kx_vision.train --help` stays instant): where Keras is already imported, at once; otherwise as soon
as Keras is imported, by whichever code imports it.
"""

import importlib
import importlib.abc
import sys
import warnings

from kx_vision.version import __version__  # noqa: F401

# Submodules reachable as attributes, imported on first use (module `__getattr__`, PEP 562): name -> module.
SUBMODULES = {name: f"{__name__}.{name}" for name in (
    "backbones", "config", "data", "errors", "export", "inference", "layers", "losses", "metrics", "models",
    "tasks", "training")}
SUBMODULES |= {"callbacks": f"{__name__}.training.callbacks", "optimizers": f"{__name__}.training.optimizers",
               "trainer": f"{__name__}.training.trainer", "visualize": f"{__name__}.inference.pictures"}

# The modules whose import registers every public serializable object, lowest floor first.
_REGISTERING = ("kx_vision.layers", "kx_vision.backbones", "kx_vision.losses", "kx_vision.metrics",
                "kx_vision.models", "kx_vision.training.optimizers")


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(SUBMODULES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))


def _register():
    for module in _REGISTERING:
        importlib.import_module(module)


class _RegisterWhenKerasArrives(importlib.abc.MetaPathFinder):
    """Registers kx_vision's objects once Keras is imported, without importing it first.

    While installed (from `import kx_vision` until Keras is imported), it hands the imports of `keras` and of
    kx_vision's submodules to the other finders and wraps their loaders, so that it sees each module finish.
    Registration runs when Keras is fully imported and no kx_vision module is half-way through its own
    import (a kx_vision module that imports Keras first would otherwise be re-entered before it is
    defined): right after `import keras`, or when the outermost kx_vision import finishes. It then removes
    itself; modules keep their own loaders.
    """

    def __init__(self):
        self.importing = 0  # kx_vision modules whose code is running
        self.keras_ready = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" and not fullname.startswith(f"{__name__}."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WatchedLoader(self, spec.loader, is_keras=fullname == "keras")
                return spec
        return None

    def finished(self, is_keras):
        if is_keras:
            self.keras_ready = True
        if self.keras_ready and self.importing == 0 and self in sys.meta_path:
            sys.meta_path.remove(self)
            try:
                _register()
            except Exception as error:  # noqa: BLE001 - never break the `import keras` of the code that runs this
                warnings.warn(f"kx_vision could not register its Keras objects: {type(error).__name__}: {error}",
                              RuntimeWarning, stacklevel=2)


class _WatchedLoader(importlib.abc.Loader):
    def __init__(self, finder, loader, is_keras):
        self.finder, self.loader, self.is_keras = finder, loader, is_keras

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.finder.importing += not self.is_keras
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.importing -= not self.is_keras
        self.finder.finished(self.is_keras)

    def __getattr__(self, name):  # get_code, get_source, is_package, ... (runpy asks for get_code)
        return getattr(self.loader, name)


if "keras" in sys.modules:
    _register()
elif not any(isinstance(finder, _RegisterWhenKerasArrives) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKerasArrives())
