"""Exported models in their own runtimes: ONNX Runtime, LiteRT and OpenVINO.

`python -m kx_vision.export MODEL OUT --format onnx|litert|openvino` writes a folder holding the model
(`model.onnx`; `model.tflite`; `model.xml` + `model.bin`), its uint8 twin (`model_uint8.*`) unless
`--no-uint8-endpoint`, and `kx_vision.json`, the card: format, task, scale or classes, what the outputs are,
the input (any height and width), the quantisation. `load(path)` turns such a folder into a NumPy-in, NumPy-out
callable for a float32 batch `(N, H, W, C)` in [0, 1], the contract of `inference.as_predict_fn`, so tiled
prediction, the self-ensemble and scoring work as for a Keras model; `resolve` and `resolve_superres` add the
checks that `predict` and `evaluate` make of a Keras model.

`predict --runtime auto` on a `.keras` file or a preset (`select`, `fastest`) runs it in the first runtime of
`FASTEST_FIRST` that is installed: the model is exported once, by a `kx-vision export` subprocess on the
TensorFlow backend, into the cache (`cache_folder()`: `$KX_VISION_CACHE`, else `$XDG_CACHE_HOME/kx_vision`, else
`~/.cache/kx_vision`), `exports/<name>-<hash of the weights>/<format>/`, written atomically (a temporary folder
renamed into place: never half an entry) and reused by every later call. Without a runtime, without TensorFlow,
or when the export fails, one line says so and Keras runs the model.

The runtimes are optional (`pip install -e ".[export]"`), each imported when it is used. No Keras, TensorFlow or
JAX is imported here (`fastest` reads a preset's files through `kx_vision.models.presets`, which imports Keras).
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np

from kx_vision.errors import ArgumentError, KxVisionError
from kx_vision.version import __version__

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
# `predict --runtime auto` on a .keras file or a preset runs it in the first of these that is installed; "keras"
# ends the list (a runtime ranked after it is never chosen). The order is BENCHMARKS.md's deploy speed table
# (`python -m benchmarks.deploy_speed`: output megapixels/s of each path on the same 2 CPU cores), fastest first.
FASTEST_FIRST = ("openvino", "litert", "onnx", "keras")
# What exporting to each format needs besides TensorFlow (the converters of `kx_vision.export.EXPORT_PACKAGES`).
CONVERTERS = {"onnx": ("tf2onnx", "onnx"), "litert": (), "openvino": ("openvino",)}
CACHE_ENV = "KX_VISION_CACHE"  # the cache folder, instead of $XDG_CACHE_HOME/kx_vision or ~/.cache/kx_vision


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


def installed(module):
    """Whether `module` (its top-level package) can be imported, without importing it."""
    top = module.partition(".")[0]
    if top in sys.modules:
        return sys.modules[top] is not None  # None: made unimportable on purpose (tests, `import` guards)
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


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


def select(path, runtime=None, say=print):
    """The export folder that `predict --runtime RUNTIME --model PATH` runs, or None for the Keras path.

    `None` (the default): an export folder in its own runtime, anything else (a .keras file, a preset,
    `bicubic`) in Keras. `keras`: Keras. `onnx`, `litert`, `openvino`: an export folder in that runtime. `auto`:
    an export folder in its own runtime; a .keras file or a preset in the fastest installed runtime (`fastest`,
    which calls `say` with one line saying which)."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ArgumentError(f"runtime={runtime!r} is unknown: choose one of {', '.join(RUNTIMES)}", ["runtime"])
    path = os.fspath(path)
    if runtime == "keras":
        if is_export(path):
            found = read_export(path).format
            raise ArgumentError(f"{path} is an export for {NAMES[found]}; runtime=keras runs .keras models and "
                                f"presets: pass runtime={found} (or auto)", ["runtime"])
        return None
    if runtime in FORMATS or is_export(path):
        return path  # `load` checks that the export is of that format
    if runtime == "auto" and path != "bicubic":
        return fastest(path, say)
    return None


def _onnx(path, threads):
    ort = require("onnxruntime", "onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _litert(path, threads):
    litert = require("ai_edge_litert.interpreter", "ai-edge-litert", "running a LiteRT export")
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


def _import_openvino():
    """`import openvino`, without its usage telemetry: importing it (its converter, `openvino.tools.ovc`) reports
    the import to Google Analytics from a forked process, which in a multithreaded process (JAX's) may deadlock,
    as Python warns. Without the optional package `openvino_telemetry`, OpenVINO uses its own no-op stub."""
    if "openvino" in sys.modules or "openvino_telemetry" in sys.modules:
        return require("openvino", "openvino", "running an OpenVINO export")
    sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` raises ImportError
    try:
        return require("openvino", "openvino", "running an OpenVINO export")
    finally:
        if sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]


def _openvino(path, threads):
    ov = _import_openvino()
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
    """`(predict, export)`: `predict(batch)` runs the export at `path` in its runtime (`runtime`: its format,
    `auto` or None) on a NumPy batch (float32 in [0, 1] for `serve`, uint8 for `serve_uint8`) and returns a NumPy
    array."""
    export = read_export(path)
    if runtime not in (None, "auto", export.format):
        raise ArgumentError(f"{path} is an export for {NAMES[export.format]}, not {NAMES.get(runtime, runtime)}: "
                            f"pass runtime={export.format} (or auto)", ["runtime"])
    run = RUNNERS[export.format](export.file(endpoint), threads)
    dtype = np.uint8 if endpoint == "serve_uint8" else np.float32

    def predict(batch):
        return np.asarray(run(np.ascontiguousarray(batch, dtype)))

    return predict, export


def _what(found, path, name):
    """How a refusal names the model: `PATH is an export of a unet model`, or, for a cached export of the
    model the user named, `NAME is a unet model`."""
    return f"{path} is an export of a {found} model" if name == path else f"{name} is a {found} model"


def resolve(path, task, runtime, command, name=None):
    """`(predict, card)` for `predict segmentation|style` on an export: its outputs checked as a Keras model's
    are (`inference.checked_output`); an export of another task is refused naming the model (`name`: what the
    user gave, when `path` is its export in the cache)."""
    from kx_vision.inference.tiling import EXPECTED, checked_output

    name = path if name is None else name
    predict, export = load(path, runtime)
    found = export.card.get("task")
    if found is not None and found != task:
        raise KxVisionError(f"{_what(found, path, name)}; `{command}` expects {EXPECTED[task]}")
    channels = export.card.get("num_classes") if task == "segmentation" else 3
    return checked_output(predict, name, task, channels=channels), export.card


def resolve_superres(path, scale, runtime, command="predict superres", name=None):
    """`(predict, scale)` for an exported super-resolution model, as `inference.resolve_superres_model` gives
    for a Keras one (`scale`, when given, must be the export's; `name`: as for `resolve`)."""
    from kx_vision.inference.tiling import EXPECTED, checked_output

    name = path if name is None else name
    predict, export = load(path, runtime)
    found, model_scale = export.card.get("task"), export.card.get("scale")
    if found != "superres" or not model_scale:
        raise KxVisionError(f"{_what(found or 'non-kx_vision', path, name)}; `{command}` expects "
                            f"{EXPECTED['superres']}")
    if scale is not None and scale != model_scale:
        raise ArgumentError(f"{name} is a x{model_scale} model but scale={scale}", ["scale"])
    return checked_output(predict, name, "superres", model_scale), model_scale


# --- `--runtime auto`: the fastest installed runtime, on an export made once into the cache ---


def cache_folder():
    """Where kx_vision keeps what it makes once and reuses: `$KX_VISION_CACHE`, else `$XDG_CACHE_HOME/kx_vision`,
    else `~/.cache/kx_vision`."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "kx_vision")


def _model_files(spec):
    """`(name, files)`: the files that define the model `spec` names (a .keras file; a preset's config and
    weights), or None when `spec` names no model (the Keras path then says why, as it does without `auto`)."""
    if os.path.isfile(spec):
        return os.path.splitext(os.path.basename(spec))[0], [spec]
    from kx_vision.models import presets

    try:
        directory = presets.resolve(spec)
    except KxVisionError:
        return None
    name = spec if spec in presets.PRESETS else os.path.basename(os.path.abspath(spec))
    return name, [os.path.join(directory, file) for file in presets.REQUIRED_FILES]


def cache_entry(spec, format):
    """The cache folder of `spec`'s export for `format`: `exports/<name>-<hash>/<format>`, the hash taken over
    the model's files and kx_vision's version (a new model or a new kx_vision is exported anew); None when `spec`
    names no model."""
    found = _model_files(spec)
    if found is None:
        return None
    name, files = found
    digest = hashlib.sha256(f"kx_vision {__version__}\n".encode())
    for path in files:
        digest.update(f"{os.path.basename(path)}\n".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "model"
    return os.path.join(cache_folder(), "exports", f"{name}-{digest.hexdigest()[:16]}", format)


def _complete(folder):
    """Whether `folder` holds a whole export (its card and its float endpoint's files)."""
    try:
        export = read_export(folder)
        path = export.file("serve")
    except KxVisionError:
        return False
    weights = os.path.splitext(path)[0] + ".bin"
    return os.path.isfile(path) and (export.format != "openvino" or os.path.isfile(weights))


def export_in_subprocess(spec, folder, format, force=False):
    """`kx-vision export SPEC FOLDER --format FORMAT` on the TensorFlow backend, in a process of its own (the only
    backend Keras converts these formats from; the .keras file is the same on every backend), CPU only. The export
    is atomic. Returns None when it succeeded, else the export's error line."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the kx_vision this process runs
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "kx_vision.export", "--format", format, "--no-uint8-endpoint",
               *(["--force"] if force else []), "--", spec, folder]
    done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [f"exit status {done.returncode}"])[-1].removeprefix("error: ")


def fastest(spec, say=print):
    """The export folder of `spec` (a .keras file or a preset) for the first runtime of `FASTEST_FIRST` that is
    installed, exported into the cache the first time (`cache_entry`), or None for Keras; `say` gets one line
    saying which runtime runs the model (and, before an export, that it is exported once)."""
    absent, unexportable = [], {}
    for format in FASTEST_FIRST:
        if format == "keras":
            break
        if not installed(PACKAGES[format][0]):
            absent.append(NAMES[format])
            continue
        folder = cache_entry(spec, format)
        if folder is None:
            return None  # no such model: the Keras path says so
        if _complete(folder):
            say(f"runtime auto: {NAMES[format]}, with the export of {spec} cached in {folder}")
            return folder
        if not installed("tensorflow"):  # e.g. a JAX-only machine
            unexportable["tensorflow"] = "exporting needs TensorFlow, which is not installed (pip install tensorflow)"
            continue
        missing = [m for m in CONVERTERS[format] if not installed(m)]
        if missing:
            unexportable[format] = f"exporting for {NAMES[format]} needs {', '.join(missing)} ({EXTRA})"
            continue
        say(f"runtime auto: {NAMES[format]}; exporting {spec} once, into {folder} (later runs reuse it)")
        error = export_in_subprocess(spec, folder, format, force=os.path.exists(folder))
        if _complete(folder):  # also when a concurrent call exported it first
            return folder
        say(f"runtime auto: Keras, since exporting {spec} for {NAMES[format]} failed: {error}")
        return None
    what = f"{absent[0]} is not installed" if len(absent) == 1 else f"none of {', '.join(absent)} is installed"
    reasons = ([f"{what} ({EXTRA})"] if absent else []) + list(unexportable.values())
    say(f"runtime auto: Keras, since {'; '.join(reasons)}" if reasons else
        "runtime auto: Keras, which ranks first (kx_vision.inference.runtimes.FASTEST_FIRST)")
    return None
