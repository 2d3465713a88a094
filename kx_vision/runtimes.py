"""Exported models in their own runtimes: ONNX Runtime, LiteRT and OpenVINO.

`python -m kx_vision.export MODEL OUT --format onnx|litert|openvino` writes a folder holding the model
(`model.onnx`; `model.tflite`; `model.xml` + `model.bin`), its uint8 twin (`model_uint8.*`) unless
`--no-uint8-endpoint`, and `kx_vision.json`, the card: format, task, scale or classes, what the outputs are,
the input (any height and width), the quantisation. `load(path)` turns such a folder into a NumPy-in, NumPy-out
callable for a float32 batch `(N, H, W, C)` in [0, 1], the contract of `inference.as_predict_fn`, so tiled
prediction, the self-ensemble and scoring work as for a Keras model; `resolve` and `resolve_superres` add the
checks that `predict` and `evaluate` make of a Keras model.

The runtimes are optional (`pip install -e ".[export]"`), each imported when it is used. No Keras, TensorFlow or
JAX is imported here.
"""

import dataclasses
import importlib
import json
import os

import numpy as np

from kx_vision.errors import KxVisionError

CARD = "kx_vision.json"
FORMATS = ("onnx", "litert", "openvino")
RUNTIMES = ("keras", "auto") + FORMATS  # the choices of `predict --runtime`
EXTRA = 'pip install -e ".[export]"'
NAMES = {"onnx": "ONNX Runtime", "litert": "LiteRT", "openvino": "OpenVINO"}
# The file of each endpoint; OpenVINO keeps its weights beside the .xml in a .bin of the same name.
SUFFIX = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
PACKAGES = {"onnx": ("onnxruntime", "onnxruntime"), "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
            "openvino": ("openvino", "openvino")}
ENDPOINTS = ("serve", "serve_uint8")


def model_file(format, endpoint="serve"):
    """`model.onnx` for the float endpoint, `model_uint8.onnx` for the uint8 one."""
    return ("model" if endpoint == "serve" else "model_uint8") + SUFFIX[format]


def export_entries():
    """Every name an export folder of these formats may hold (what `export --force` may replace)."""
    names = {CARD}
    for format in FORMATS:
        for endpoint in ENDPOINTS:
            names.add(model_file(format, endpoint))
    return names | {name[: -len(".xml")] + ".bin" for name in names if name.endswith(".xml")}


def require(module, package, what):
    """Import `module`, or say in one line which package (and extra) `what` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise KxVisionError(f"{what} needs the package {package}, which is not installed: {EXTRA} "
                            f"(or pip install {package})") from error


@dataclasses.dataclass
class Export:
    """An export folder: its format, its card and the path of each endpoint's model file."""

    folder: str
    card: dict

    @property
    def format(self):
        return self.card["format"]

    def file(self, endpoint="serve"):
        name = self.card.get("endpoints", {}).get(endpoint)
        if name is None:
            raise KxVisionError(f"{self.folder} has no {endpoint} endpoint (it has "
                                f"{', '.join(self.card.get('endpoints', {})) or 'none'})")
        return os.path.join(self.folder, name)


def _folder_of(path):
    """The export folder `path` names: the folder itself, or the folder of one of its model files."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.splitext(path)[1] in SUFFIX.values():
        return os.path.dirname(os.path.abspath(path))
    return path


def is_export(path):
    """Whether `path` is an export folder of these formats (or a model file inside one)."""
    return os.path.isfile(os.path.join(_folder_of(path), CARD))


def read_export(path):
    """The `Export` at `path`; one clear error when it is none."""
    folder = _folder_of(path)
    card_path = os.path.join(folder, CARD)
    if not os.path.isfile(card_path):
        raise KxVisionError(f"{path} is not an exported model: no {CARD} in {folder} (make one with "
                            "kx-vision export MODEL OUT --format onnx|litert|openvino)")
    try:
        with open(card_path) as f:
            card = json.load(f)
    except (OSError, ValueError) as error:
        raise KxVisionError(f"cannot read {card_path}: {getattr(error, 'strerror', None) or error}") from error
    if not isinstance(card, dict) or card.get("format") not in FORMATS:
        raise KxVisionError(f"{card_path} is not a kx_vision export card (format: one of {', '.join(FORMATS)})")
    return Export(folder, card)


def chosen(path, runtime):
    """Whether `predict --runtime RUNTIME --model PATH` runs an export (else the Keras path). `auto`: an export
    folder runs in its own runtime, anything else (a .keras file, a preset) in Keras."""
    if runtime not in RUNTIMES:
        raise KxVisionError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "keras":
        if is_export(path):
            found = read_export(path).format
            raise KxVisionError(f"{path} is an export for {NAMES[found]}; --runtime keras runs .keras models and "
                                f"presets: pass --runtime {found} (or auto)")
        return False
    return runtime != "auto" or is_export(path)


def _onnx(path, threads):
    ort = require("onnxruntime", "onnxruntime", "--runtime onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _litert(path, threads):
    litert = require("ai_edge_litert.interpreter", "ai-edge-litert", "--runtime litert")
    interpreter = litert.Interpreter(model_path=path, num_threads=threads or None)
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    allocated = [None]

    def run(batch):
        # Exports take any size: the interpreter is resized (and its buffers planned) when the shape changes.
        if allocated[0] != batch.shape:
            interpreter.resize_tensor_input(index, batch.shape, strict=True)
            interpreter.allocate_tensors()
            allocated[0] = batch.shape
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        return interpreter.get_tensor(output).copy()

    return run


def _openvino(path, threads):
    ov = require("openvino", "openvino", "--runtime openvino")
    core = ov.Core()
    # f32: OpenVINO's CPU plugin would otherwise compute in bfloat16 on CPUs that have it (not the Keras model's
    # numbers); float16-compressed weights are still computed in float32.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda batch: request.infer({0: batch})[output].copy()


RUNNERS = {"onnx": _onnx, "litert": _litert, "openvino": _openvino}


def load(path, runtime="auto", endpoint="serve", threads=None):
    """`(predict, export)`: `predict(batch)` runs the export at `path` in its runtime (`runtime`: its format, or
    `auto`) on a NumPy batch (float32 in [0, 1] for `serve`, uint8 for `serve_uint8`) and returns a NumPy array."""
    export = read_export(path)
    if runtime not in ("auto", export.format):
        raise KxVisionError(f"{path} is an export for {NAMES[export.format]}, not {NAMES.get(runtime, runtime)}: "
                            f"pass --runtime {export.format} (or auto)")
    run = RUNNERS[export.format](export.file(endpoint), threads)
    dtype = np.uint8 if endpoint == "serve_uint8" else np.float32

    def predict(batch):
        return np.asarray(run(np.ascontiguousarray(batch, dtype)))

    return predict, export


def resolve(path, task, runtime, command):
    """`(predict, card)` for `predict segmentation|style` on an export: its outputs checked as a Keras model's
    are (`inference.checked_output`); an export of another task is refused naming the folder."""
    from kx_vision.inference import EXPECTED, checked_output

    predict, export = load(path, runtime)
    found = export.card.get("task")
    if found is not None and found != task:
        raise KxVisionError(f"{path} is an export of a {found} model; `{command}` expects {EXPECTED[task]}")
    channels = export.card.get("num_classes") if task == "segmentation" else 3
    return checked_output(predict, path, task, channels=channels), export.card


def resolve_superres(path, scale, runtime, command="predict superres"):
    """`(predict, scale)` for an exported super-resolution model, as `inference.resolve_superres_model` gives
    for a Keras one (`scale`, when given, must be the export's)."""
    from kx_vision.inference import EXPECTED, checked_output

    predict, export = load(path, runtime)
    found, model_scale = export.card.get("task"), export.card.get("scale")
    if found != "superres" or not model_scale:
        raise KxVisionError(f"{path} is an export of a {found or 'non-kx_vision'} model; `{command}` expects "
                            f"{EXPECTED['superres']}")
    if scale is not None and scale != model_scale:
        raise KxVisionError(f"{path} is a x{model_scale} model but --scale is {scale}")
    return checked_output(predict, path, "superres", model_scale), model_scale
