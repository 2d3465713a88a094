"""Loading saved models safely, and moving weights between models by layer name."""

import os

import keras

from kx_vision.errors import KxVisionError


def load_model(path):
    """Load a `.keras` file for inference with Keras's `safe_mode` on (a file can never run code,
    e.g. a `Lambda`) and without its compile state (no loss or optimizer is rebuilt)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KxVisionError(f"model file not found: {path}")
    if not path.endswith(".keras"):
        raise KxVisionError(f"{path}: expected a .keras model file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any failure becomes one message naming the file
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise KxVisionError(
                f"{path} contains code (e.g. a Lambda layer); refusing to load it with "
                "safe_mode on"
            ) from error
        raise KxVisionError(f"cannot load model {path}: {type(error).__name__}: {error}") from error


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
