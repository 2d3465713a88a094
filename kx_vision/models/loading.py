"""Loading saved models and presets safely, and moving weights between models by layer name."""

import json
import os
import zipfile
import zlib

import keras

from kx_vision.errors import KxVisionError


def _not_a_keras_file(path):
    """Why `path` is not a `.keras` archive Keras can read (a zip holding `config.json` and the
    weights), or None if it looks like one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        return "not a zip archive: truncated, or not a saved Keras model"
    except OSError as error:
        return f"cannot read it: {error.strerror or error}"
    if "config.json" not in names:
        return "no config.json in the archive"
    if not names & {"model.weights.h5", "model.weights.npz"}:
        return "no model.weights.h5 in the archive"
    return None


def load_model(path):
    """Load a `.keras` file for inference with Keras's `safe_mode` on (a file can never run code,
    e.g. a `Lambda`) and without its compile state (no loss or optimizer is rebuilt)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KxVisionError(f"model file not found: {path}")
    if not path.endswith(".keras"):
        raise KxVisionError(f"{path}: expected a .keras model file")
    problem = _not_a_keras_file(path)
    if problem:
        raise KxVisionError(f"{path} is not a valid .keras file ({problem})")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any failure becomes one message naming the file
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise KxVisionError(
                f"{path} contains code (e.g. a Lambda layer); refusing to load it with "
                "safe_mode on"
            ) from error
        if isinstance(error, (zipfile.BadZipFile, zlib.error, json.JSONDecodeError, EOFError)) or (
                isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError))):
            # A damaged archive: a corrupt member, a config that is not JSON, truncated weights (h5py's OSError).
            raise KxVisionError(f"{path} is not a valid .keras file ({type(error).__name__}: {error})") from error
        raise KxVisionError(f"cannot load model {path}: {type(error).__name__}: {error}") from error


def load_model_or_preset(spec):
    """A model for inference from `spec`: a `.keras` file (`load_model`), a preset directory, or the name of a
    preset shipped in the package (`kx_vision.models.presets`; a known name is looked up first, so a local
    folder of that name is reached as `./NAME`)."""
    from kx_vision.models import presets

    spec = os.fspath(spec)
    if os.path.isfile(spec) or spec.endswith(".keras"):
        return load_model(spec)
    if spec in presets.PRESETS or os.path.isdir(spec):
        return presets.load(spec)
    raise KxVisionError(
        f"model {spec!r} is not a .keras file, a preset directory, or a known preset "
        f"({', '.join(presets.known_presets())})"
    )


def transfer_weights(source, target):
    """Copy weights from `source` into `target` layer by layer, matched by layer *name*.

    Keras 3 `.weights.h5` files load by position, so a layer inserted in the middle (the new x4
    upsampling stage) would shift everything after it; matching by name avoids that. A layer is
    "transferred" when every weight shape matches, "reinitialised" when the name matches but a
    shape differs (it keeps its fresh initialisation), and "new" when the source has no such
    layer. Returns a report dict of layer-name lists (plus "unused" source layers).
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    report = {"transferred": [], "new": [], "reinitialised": [], "unused": []}
    for layer in target.layers:
        if not layer.weights:
            continue
        match = source_layers.pop(layer.name, None)
        if match is None:
            report["new"].append(layer.name)
        elif [tuple(w.shape) for w in match.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(match.get_weights())
            report["transferred"].append(layer.name)
        else:
            report["reinitialised"].append(layer.name)
    report["unused"] = sorted(source_layers)
    return report


def format_transfer_report(report):
    lines = [f"weight transfer: {len(report['transferred'])} layers transferred"]
    for key in ("new", "reinitialised", "unused"):
        if report[key]:
            lines.append(f"  {key}: {', '.join(report[key])}")
    return "\n".join(lines)
