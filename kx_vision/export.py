"""Export a `.keras` model for serving: `python -m kx_vision.export MODEL.keras OUT_DIR [--format FORMAT] [--force]`.

Formats:
- `tf_saved_model` (default): a TensorFlow SavedModel folder for TF Serving, from either backend (JAX exports
  through jax2tf).
- `onnx`, `litert`, `openvino`: a folder holding `model.onnx` / `model.tflite` / `model.xml` + `model.bin`, the
  uint8 twin `model_uint8.*`, and `kx_vision.json` (the card: format, task, scale or classes, outputs, input,
  quantisation). Converted by Keras's own `model.export` from the TensorFlow backend (Keras cannot convert these
  models from JAX: one line says so). Inputs take any batch, height and width (LiteRT: through the interpreter's
  input resize); the LiteRT file uses builtin operators only (the pixel shuffle is one DEPTH_TO_SPACE).
  `--quantize float16|dynamic_int8|int8` (LiteRT; float16 also for ONNX and OpenVINO), int8 with
  `--calibration-data FOLDER`. `kx_vision.inference.runtimes` runs them (`predict --runtime`); the converters and
  runtimes are the optional extra `pip install -e ".[export]"`.

Endpoints (any batch, height and width the model takes):
- `serve` (the default signature; `model.*`): float32 RGB in [0, 1], shape `(N, H, W, 3)` — exactly the Keras
  model's input. Image models (EDSR, StyleTransferNet) return the image clipped to [0, 1]; segmentation
  models return their per-pixel class probabilities as they are (already in [0, 1]).
- `serve_uint8` (`model_uint8.*`): uint8 RGB `(N, H, W, 3)` as serving clients send images, divided by 255
  inside. Image models return uint8 images (clipped to [0, 1], times 255, rounded to the nearest integer, ties
  to even); segmentation models return the float32 probabilities.
`outputs="image"` / `"raw"` (`--outputs`) overrides that choice for any model.

The model is loaded with Keras's `safe_mode` on. The export is written to a temporary folder next to `OUT_DIR`
and renamed into place, so a failed export (a full disk, a read-only folder, a conversion error) changes
nothing. `OUT_DIR` may be new or an empty folder; with `--force` it may also be an earlier export (a folder
holding a SavedModel, or an export of the other formats, and nothing else), which is replaced. Any other
existing path is refused, as is a folder holding the model being exported or the current folder. Temporary
folders that killed exports left beside `OUT_DIR` (hidden `.tmp-PID-NAME`, from processes that no longer run) are
removed by the next export there, and an earlier export moved aside (`.old-PID-NAME`) is put back
(`kx_vision.fileio`).

This module imports TensorFlow and Keras only when it exports, so `--help` is instant.
"""

import argparse
import functools
import importlib.util
import json
import os
import re
import sys
import warnings

import numpy as np

from kx_vision import cli
from kx_vision.errors import KxVisionError
from kx_vision.fileio import atomic_folder, remove_stale_temporaries
from kx_vision.inference import runtimes
from kx_vision.version import __version__

FORMATS = ("tf_saved_model",) + runtimes.FORMATS
QUANTIZE = ("none", "float16", "dynamic_int8", "int8")
# What each format can be quantised to (`--quantize`): float16 weights (and LiteRT float16 arithmetic where the
# hardware has it), int8 weights with float activations (dynamic_int8), int8 weights and activations (int8).
QUANTIZE_FOR = {"tf_saved_model": ("none",), "onnx": ("none", "float16"), "litert": QUANTIZE,
                "openvino": ("none", "float16")}
# The packages each format's conversion needs beyond TensorFlow: (module, pip name).
EXPORT_PACKAGES = {"onnx": [("tf2onnx", "tf2onnx"), ("onnx", "onnx")], "openvino": [("openvino", "openvino")]}
CALIBRATION_IMAGES = 32  # images of --calibration-data that int8 quantisation measures, centre crops of
CALIBRATION_SIZE = 128  # at most this many pixels a side
OUTPUTS = ("auto", "image", "raw")
# What `tf.saved_model.save` writes (Keras's ExportArchive: the first four); `--force` replaces a folder
# holding these names only, so that nothing else a user keeps there is ever deleted.
SAVED_MODEL_ENTRIES = frozenset(
    {"saved_model.pb", "variables", "assets", "fingerprint.pb", "saved_model.pbtxt", "assets.extra",
     "keras_metadata.pb"})


def clean_stale_temporaries(folder):
    """Remove what exports killed before they finished left in `folder` (`.tmp-PID-NAME`, whose process no
    longer runs); an export killed between its two renames left the previous export in `.old-PID-NAME` and
    nothing at `NAME`: that folder is renamed back to `NAME`. Returns one line per folder removed or restored."""
    lines = []
    remove_stale_temporaries(folder, report=lines.append, what="an export")
    return lines


def _inside(path, folder):
    """Whether `path` is `folder` or lies under it (both given as absolute paths)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def check_output_folder(out_dir, force=False, source=None):
    """Refuse an `out_dir` that an export must not write (see the module's docstring), with one message.
    `source`: the `.keras` file being exported, which `out_dir` must not contain."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    real = os.path.realpath(out_dir)
    if source is not None:
        source = os.fspath(source)
        if any(_inside(path, folder) for path in {os.path.abspath(source), os.path.realpath(source)}
               for folder in {out_dir, real}):
            raise KxVisionError(f"{out_dir} holds the model being exported ({source}); choose another output "
                                "folder")
    if _inside(os.getcwd(), real) or _inside(os.path.realpath(os.getcwd()), real):
        raise KxVisionError(f"{out_dir} is or holds the current folder; choose another output folder")
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir):
        raise KxVisionError(f"{out_dir} is a symbolic link; give the folder it points to, or another one")
    if not os.path.isdir(out_dir):
        raise KxVisionError(f"{out_dir} exists and is not a folder; choose another output folder")
    try:
        entries = set(os.listdir(out_dir))
    except OSError as error:
        raise KxVisionError(f"cannot read the output folder {out_dir}: {error.strerror or error}") from error
    if not entries:
        return
    if "saved_model.pb" in entries:
        kind, allowed = "a SavedModel", SAVED_MODEL_ENTRIES
    elif runtimes.CARD in entries:  # an ONNX, LiteRT or OpenVINO export
        kind, allowed = "an export", runtimes.export_entries()
    else:
        raise KxVisionError(
            f"{out_dir} exists and is not an exported SavedModel (no saved_model.pb) nor an export of another "
            f"format (no {runtimes.CARD}); --force replaces only an earlier export or an empty folder: choose "
            "another output folder")
    others = sorted(entries - allowed)
    if others:
        raise KxVisionError(
            f"{out_dir} holds {kind} but also {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}, "
            "which replacing it would delete; move them or choose another output folder")
    if not force:
        raise KxVisionError(f"{out_dir} exists; pass --force (force=True) to replace that earlier export")


def _write_error(error):
    """The reason of a failed write, in a few words: the OS's, or the end of TensorFlow's message."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    reason = str(getattr(error, "message", error)).split("\n")[0]
    reason = re.sub(r"\s*\[Op:\w+\]\s*$", "", reason).split("; ")[-1].strip()
    return reason or type(error).__name__


def _make_folders(folder):
    """`os.makedirs(folder)`; returns the folders it created, outermost first."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing[::-1]


def output_kind(model):
    """"image" for the models whose output is an image in [0, 1] (EDSR, StyleTransferNet), else "raw"."""
    from kx_vision.models import EDSR, StyleTransferNet

    return "image" if isinstance(model, (EDSR, StyleTransferNet)) else "raw"


def check_format(format, quantize="none", calibration_data=None, backend="tensorflow"):
    """Refuse, in one line naming the flag, a format, quantisation or calibration folder that cannot be used from
    `backend`, and a converter package that is not installed, before any model is loaded."""
    if format not in FORMATS:
        raise KxVisionError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        raise KxVisionError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if quantize not in QUANTIZE_FOR[format]:
        raise KxVisionError(f"--quantize {quantize} is not available for --format {format}, which takes "
                            f"{', '.join(QUANTIZE_FOR[format])} (every quantisation: --format litert)")
    if quantize == "int8" and calibration_data is None:
        raise KxVisionError("--quantize int8 needs --calibration-data FOLDER: a few training images, from which "
                            "the converter measures the range of every layer's values")
    if quantize != "int8" and calibration_data is not None:
        raise KxVisionError(f"--calibration-data is used by --quantize int8 only (not {quantize})")
    if format != "tf_saved_model" and backend != "tensorflow":
        # Keras 3.15 converts for LiteRT from TensorFlow (or PyTorch) only; from JAX, its ONNX path (jax2onnx)
        # fails on the pixel shuffle's reshape of unknown sizes and its OpenVINO path meets jax2tf's XlaCallModule.
        raise KxVisionError(f"--format {format} needs the TensorFlow backend (Keras cannot convert this model to "
                            f"{runtimes.NAMES[format]} from {backend}); the .keras file is the same on both "
                            f"backends: run KERAS_BACKEND=tensorflow kx-vision export MODEL OUT --format {format}")
    packages = EXPORT_PACKAGES.get(format, []) + (
        [("onnxconverter_common", "onnxconverter-common")] if format == "onnx" and quantize == "float16" else [])
    for module, package in packages:
        if importlib.util.find_spec(module) is None:
            raise KxVisionError(f"--format {format} needs the package {package}, which is not installed: "
                                f"{runtimes.EXTRA} (or pip install {package})")


def calibration_images(folder, count=CALIBRATION_IMAGES, size=CALIBRATION_SIZE):
    """Up to `count` images spread over `folder`'s sorted list, each a centre crop of at most `size` x `size`,
    as float32 batches of one in [0, 1]: what full-integer quantisation measures the values of layers on."""
    from kx_vision.data.images import list_images, read_image

    paths = list_images([folder])  # one DataError naming the folder if it is missing or holds no image
    batches = []
    for path in paths[:: max(1, len(paths) // count)][:count]:
        image, _ = read_image(path)
        height, width = min(image.shape[0], size), min(image.shape[1], size)
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        batches.append(image[None, top : top + height, left : left + width].astype(np.float32) / 255.0)
    return batches


def export_model(model, out_dir, force=False, format="tf_saved_model", uint8_endpoint=True, outputs="auto",
                 source=None, quantize="none", calibration_data=None):
    """Export a Keras image model (input `(N, H, W, C)` float in [0, 1]) to the folder `out_dir`, atomically.

    `format`: "tf_saved_model" (a SavedModel with `serve` and `serve_uint8` signatures), "onnx", "litert" or
    "openvino" (a folder with `model.<ext>`, `model_uint8.<ext>` and the card `kx_vision.json`; see
    `kx_vision.inference.runtimes`). `outputs`: "image" clips the float endpoint's output to [0, 1] and makes the
    uint8 one return rounded uint8 images; "raw" returns the model's output unchanged from both; "auto" (default) is
    "image" for EDSR and StyleTransferNet, "raw" otherwise (segmentation probabilities are in [0, 1] already).
    `quantize`: see `QUANTIZE_FOR`; "int8" measures value ranges on `calibration_data`, a folder of images.
    `source`: the file the model came from, refused as part of `out_dir`. Returns the absolute `out_dir`."""
    import keras

    check_format(format, quantize, calibration_data, keras.backend.backend())
    if outputs not in OUTPUTS:
        raise KxVisionError(f"unknown outputs {outputs!r}; choose one of {', '.join(OUTPUTS)}")
    shape = [tuple(x.shape) for x in model.inputs]
    if len(shape) != 1 or len(shape[0]) != 4 or shape[0][-1] is None:
        raise KxVisionError(f"export takes image models with one (N, H, W, C) input; this model takes "
                            f"{', '.join(map(str, shape)) or 'no input'}")
    if outputs == "auto":
        outputs = output_kind(model)
    out_dir = os.path.abspath(os.fspath(out_dir))
    for line in clean_stale_temporaries(os.path.dirname(out_dir)):
        warnings.warn(line, stacklevel=2)
    check_output_folder(out_dir, force=force, source=source)
    if format == "tf_saved_model":
        write = functools.partial(_write_saved_model, model, outputs=outputs, uint8_endpoint=uint8_endpoint)
    else:
        calibration = calibration_images(calibration_data) if quantize == "int8" else None
        write = functools.partial(_write_runtime_export, model, format=format, outputs=outputs,
                                  uint8_endpoint=uint8_endpoint, quantize=quantize, calibration=calibration)
    _write_atomically(out_dir, write, force, source)
    return out_dir


def _write_atomically(out_dir, write, force, source):
    """`write(folder)` into a temporary folder beside `out_dir`, then rename it into place (replacing an earlier
    export that `check_output_folder` accepts); a failure removes it and the folders made for it."""
    import tensorflow as tf

    parent = os.path.dirname(out_dir)

    def failed(error, what="write"):
        return KxVisionError(f"cannot {what} the export {out_dir}: {_write_error(error)} (in {parent}); "
                             "nothing was changed")

    try:
        created = _make_folders(parent)
    except OSError as error:
        raise failed(error, "create the folder of") from error
    try:
        with atomic_folder(out_dir) as tmp:
            write(tmp)
            check_output_folder(out_dir, force=force, source=source)  # again: the folder may have changed since
    except BaseException as error:
        for folder in reversed(created):  # folders this export made for itself go too
            try:
                os.rmdir(folder)
            except OSError:
                break
        if isinstance(error, (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError)):
            raise failed(error) from error
        raise


def _write_saved_model(model, folder, outputs, uint8_endpoint):
    """The SavedModel with its `serve` (and `serve_uint8`) signatures, from either backend."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    channels = model.inputs[0].shape[-1]
    float_spec = tf.TensorSpec((None, None, None, channels), tf.float32, name="images")
    # Serving needs no gradients (jax2tf cannot differentiate "same" convolutions of symbolic sizes),
    # and a JAX export runs only on the platforms it was lowered for: CPU and CUDA serving.
    backend_kwargs = ({"jax2tf_kwargs": {"with_gradient": False, "native_serialization_platforms": ("cpu", "cuda")}}
                      if keras.backend.backend() == "jax" else {})
    image = outputs == "image"

    def serve(images):
        result = model(images)
        return keras.ops.clip(result, 0.0, 1.0) if image else result

    archive.add_endpoint("serve", serve, input_signature=[float_spec], **backend_kwargs)
    if uint8_endpoint:
        uint8_spec = tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")

        def serve_uint8(images):
            result = model(keras.ops.cast(images, "float32") / 255.0)
            if not image:
                return result
            return keras.ops.cast(keras.ops.round(keras.ops.clip(result, 0.0, 1.0) * 255.0), "uint8")

        archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec], **backend_kwargs)
    archive.write_out(folder, verbose=False)


def _nearest_as_depth_to_space(model):
    """`model` with each square channels-last `UpSampling2D(interpolation="nearest")` computed as the pixel
    shuffle of its input's channels tiled `size**2` times: the same numbers (every sub-pixel of a block reads the
    same pixel), other layers and weights shared. Keras's layer is `tf.repeat` on TensorFlow, a rank-5 tile and a
    reshape whose channels the LiteRT converter cannot infer for images of unknown size (the next convolution
    then needs a Flex op); this way it is one DEPTH_TO_SPACE of rank 4. The model itself is left as it is."""
    import keras
    from keras import ops

    class NearestUpSampling(keras.layers.Layer):
        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = size

        def call(self, inputs):
            return ops.depth_to_space(ops.concatenate([inputs] * self.size**2, axis=-1), self.size)

    def swap(layer):
        if (isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest"
                and layer.size[0] == layer.size[1] and layer.data_format == "channels_last"):
            return NearestUpSampling(layer.size[0], name=layer.name, dtype=layer.dtype_policy)
        return layer

    if not any(swap(layer) is not layer for layer in model.layers):  # the model's own layers (not a backbone's)
        return model
    return keras.models.clone_model(keras.Model(model.input, model.output), clone_function=swap)


def endpoint_model(model, outputs, dtype="float32", litert=False):
    """What an endpoint computes, as a functional Keras model (what Keras's `model.export` converts): the float
    endpoint returns image outputs clipped to [0, 1]; the uint8 one divides its input by 255 and returns rounded
    uint8 images (`outputs="raw"`: the model's outputs as they are, from both). `litert`: nearest-neighbour
    upsampling as DEPTH_TO_SPACE (`_nearest_as_depth_to_space`)."""
    import keras
    from keras import ops

    if litert:
        model = _nearest_as_depth_to_space(model)
    images = keras.Input(tuple(model.inputs[0].shape[1:]), dtype=dtype, name="images")
    result = model(images if dtype == "float32" else ops.cast(images, "float32") / 255.0)
    if outputs == "image":
        result = ops.clip(result, 0.0, 1.0)
        if dtype == "uint8":
            result = ops.cast(ops.round(result * 255.0), "uint8")
    return keras.Model(images, result, name=f"{model.name}_{'serve' if dtype == 'float32' else 'serve_uint8'}")


def _write_runtime_export(model, folder, format, outputs, uint8_endpoint, quantize, calibration):
    """`model.<ext>` (and `model_uint8.<ext>`) converted by Keras's own `model.export`, and the card."""
    import tensorflow as tf

    endpoints = {}
    for endpoint, dtype in [("serve", "float32")] + ([("serve_uint8", "uint8")] if uint8_endpoint else []):
        path = os.path.join(folder, runtimes.model_file(format, endpoint))
        spec = tf.TensorSpec((None, None, None, model.inputs[0].shape[-1]), dtype, name="images")
        samples = None if calibration is None else [
            x if dtype == "float32" else np.round(x * 255).astype(np.uint8) for x in calibration]
        try:
            wrapper = endpoint_model(model, outputs, dtype, litert=format == "litert")
            WRITERS[format](wrapper, path, spec, quantize, samples)
        except (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError):
            raise
        except Exception as error:  # the converter's own failure: one line, nothing written
            reason = str(error).strip().split("\n")[0][:300] or type(error).__name__
            raise KxVisionError(f"cannot convert the model for {runtimes.NAMES[format]}: {reason}; nothing was "
                                "written") from error
        endpoints[endpoint] = os.path.basename(path)
    card = export_card(model, format, outputs, quantize, endpoints, calibration)
    with open(os.path.join(folder, runtimes.CARD), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def export_card(model, format, outputs, quantize, endpoints, calibration=None):
    """What `kx_vision.inference.runtimes` (and a reader) needs to know of an export: `kx_vision.json`."""
    import keras

    from kx_vision.inference.tiling import model_task
    from kx_vision.models import StyleTransferNet

    task = model_task(model)
    card = {"format": format, "task": task, "outputs": outputs, "endpoints": endpoints,
            "input": {"shape": [None, None, None, model.inputs[0].shape[-1]], "range": [0, 1],
                      "note": "any batch, height and width (LiteRT: resized by the interpreter)"},
            "quantize": quantize, "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            "kx_vision": __version__, "model_class": type(model).__name__}
    if task == "superres":
        card["scale"] = int(model.scale)
    elif task == "segmentation":
        card["num_classes"] = int(model.num_classes)
    elif task == "style":
        card["min_size"] = StyleTransferNet.min_size(getattr(model, "num_blocks", 5))
    if calibration is not None:
        card["calibration_images"] = len(calibration)
    return card


def _write_onnx(endpoint, path, spec, quantize, samples):
    endpoint.export(path, format="onnx", input_signature=[spec], verbose=False)
    if quantize == "float16":
        # Keras writes float32; onnxconverter-common stores weights and computes in float16 (inputs and outputs
        # keep their types, so a caller feeds the same arrays).
        import onnx
        from onnxconverter_common import float16

        onnx.save(float16.convert_float_to_float16(onnx.load(path), keep_io_types=True), path)


def _write_litert(endpoint, path, spec, quantize, samples):
    import tensorflow as tf

    # Builtin operators only: Keras's exporter also allows SELECT_TF_OPS ("Flex" ops), which most LiteRT builds
    # and every delegate lack. The pixel shuffle becomes DEPTH_TO_SPACE.
    settings = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]  # alone: int8 weights, float activations
    if quantize == "float16":
        settings["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":  # int8 weights and activations, float (or uint8) inputs and outputs
        settings["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                    tf.lite.OpsSet.TFLITE_BUILTINS]
        settings["representative_dataset"] = lambda: ([x] for x in samples)
    endpoint.export(path, format="litert", input_signature=[spec], verbose=False, **settings)


def _write_openvino(endpoint, path, spec, quantize, samples):
    endpoint.export(path, format="openvino", input_signature=[spec], verbose=False)
    if quantize == "float16":
        # Keras serialises float32 weights; OpenVINO's own compression stores them as float16 (computed in
        # float32 on CPUs without float16 arithmetic). Saved under another name: the first .bin is memory-mapped.
        import openvino as ov

        half = path[: -len(".xml")] + ".f16.xml"
        ov.save_model(ov.Core().read_model(path), half, compress_to_fp16=True)
        os.replace(half, path)
        os.replace(half[: -len(".xml")] + ".bin", path[: -len(".xml")] + ".bin")


WRITERS = {"onnx": _write_onnx, "litert": _write_litert, "openvino": _write_openvino}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m kx_vision.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a .keras model for serving: a TensorFlow SavedModel for TF Serving, or a model for ONNX "
                    "Runtime, LiteRT or OpenVINO.",
        epilog="endpoints: serve takes float32 RGB in [0, 1], shape (N, H, W, 3); serve_uint8 takes uint8 RGB.\n"
               "Image models (EDSR, style) return images clipped to [0, 1] from serve and rounded uint8 images\n"
               "from serve_uint8; segmentation models return per-pixel probabilities from both.\n"
               "onnx, litert, openvino: OUT_DIR holds model.<ext> (serve), model_uint8.<ext> (serve_uint8) and\n"
               "kx_vision.json; made from the TensorFlow backend; they need pip install -e \".[export]\".\n"
               "A failed export (full disk, read-only folder, conversion error) changes nothing.")
    parser.add_argument("model", help="a .keras model file (loaded with Keras's safe_mode on), a preset folder or "
                                      "a preset's name")
    parser.add_argument("out_dir", help="the folder to write: a new or empty folder (an earlier export with --force)")
    parser.add_argument("--format", default="tf_saved_model", choices=FORMATS,
                        help="what to write. tf_saved_model: a TensorFlow SavedModel folder with the serve and "
                             "serve_uint8 signatures, for TF Serving, tf.saved_model.load and keras.layers.TFSMLayer; "
                             "onnx: ONNX Runtime; litert: LiteRT (TensorFlow Lite), builtin operators only; openvino: "
                             "OpenVINO IR (default: %(default)s)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="float16: weights in float16 (litert, onnx, openvino); dynamic_int8: int8 weights, float "
                             "activations (litert); int8: int8 weights and activations, measured on "
                             "--calibration-data (litert) (default: %(default)s)")
    parser.add_argument("--calibration-data", metavar="FOLDER",
                        help=f"with --quantize int8: a folder of training images (up to {CALIBRATION_IMAGES}, centre "
                             f"crops of {CALIBRATION_SIZE} px, are used)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_DIR if it is an earlier export (a SavedModel folder, or an export of the "
                             "other formats, and nothing else); any other existing folder is refused")
    parser.add_argument("--outputs", default="auto", choices=OUTPUTS,
                        help="image: clip serve's output to [0, 1], serve_uint8 returns rounded uint8 images; raw: "
                             "the model's output as it is; auto: image for EDSR and StyleTransferNet, raw for "
                             "segmentation models and any other (default: %(default)s)")
    parser.add_argument("--no-uint8-endpoint", action="store_true", help="export only the float `serve` endpoint")
    cli.add_verbose_argument(parser)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    return cli.run(lambda: _command(args))


def _command(args):
    out_dir = os.path.abspath(args.out_dir)
    for line in clean_stale_temporaries(os.path.dirname(out_dir)):
        print(line, file=sys.stderr)
    # Refuse a bad format, quantisation or output folder before the (slow) model loading.
    if args.format != "tf_saved_model":
        import keras

        check_format(args.format, args.quantize, args.calibration_data, keras.backend.backend())
    else:
        check_format(args.format, args.quantize, args.calibration_data)
    check_output_folder(out_dir, force=args.force, source=args.model)

    from kx_vision.models.loading import load_model_or_preset

    model = load_model_or_preset(args.model)  # a .keras file (safe_mode on), a preset folder or a preset's name
    path = export_model(model, out_dir, force=args.force, format=args.format,
                        uint8_endpoint=not args.no_uint8_endpoint, outputs=args.outputs, source=args.model,
                        quantize=args.quantize, calibration_data=args.calibration_data)
    endpoints = "serve" if args.no_uint8_endpoint else "serve, serve_uint8"
    quantized = "" if args.quantize == "none" else f", quantised: {args.quantize}"
    print(f"exported {args.model} to {path} ({args.format}; endpoints: {endpoints}{quantized})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
