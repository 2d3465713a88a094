"""Inference: trained models run on images, and the pictures of what they make; the floor above the models
and the data, below the tasks (ARCHITECTURE.md).

- `tiling`: whole-image and tiled prediction, the x8 self-ensemble, the checks that a model is the one a
  command needs (`as_predict_fn`, `predict_whole`, `predict_tiled`, `self_ensemble`, `resolve_superres_model`).
- `pictures`: captioned grids, class colours, zoomed crops, the confusion-matrix plot (NumPy and Pillow).
- `runtimes`: exported models in ONNX Runtime, LiteRT and OpenVINO, behind the same NumPy-in, NumPy-out call.

`tiling`'s functions are this package's too (`kx_vision.inference.predict_tiled`). Importing the package imports
none of its modules (nor Keras, nor a runtime): each loads on first use.
"""

import importlib
import types

SUBMODULES = ("pictures", "runtimes", "tiling")


def _tiling_names():
    """`tiling`'s own public names (not what it imports)."""
    tiling = importlib.import_module(f"{__name__}.tiling")
    return {name: value for name, value in vars(tiling).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and getattr(value, "__module__", tiling.__name__) == tiling.__name__}


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_") and name in (names := _tiling_names()):
        return names[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES) | set(_tiling_names()))
