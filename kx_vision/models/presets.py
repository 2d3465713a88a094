"""Pretrained presets: a model's config and weights in a folder, in keras-hub's preset layout.

A preset folder holds `config.json` (the Keras serialized model, without build and compile state),
`model.weights.h5` (float32 or float16, loaded as float32), `metadata.json` (versions, backend, parameter
count, date, weight dtype and the model card's facts: training command, data, device, minutes, scores) and
`README.md` (the model card, written from the same facts).

`EDSR.from_preset(name_or_dir)` loads a preset shipped in the package (`PRESETS`, files in
`kx_vision/presets/<name>/`) or any preset folder; `model.save_to_preset(dir)` writes one, atomically. Asking
by name for a known preset whose weights do not ship (the GPU recipes) says how to train them.
"""

import datetime
import json
import os
import shutil

import keras

from kx_vision.errors import KxVisionError, WeightsUnavailableError
from kx_vision.fileio import atomic_folder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Pictures a model card may show beside its text (`save(..., images=...)`).
CARD_IMAGES = ("psnr_vs_minutes.png", "examples.png")
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, README_FILE, *CARD_IMAGES)
WEIGHT_DTYPES = ("float32", "float16")

# Where the presets shipped with the package live: kx_vision/presets/<name>/ (package data).
PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")

DATA_291 = (
    "The classic 291 training images (as VDSR): T91 (Yang et al. 2010; freely available) and BSDS200, "
    "the 200 train+test images of the Berkeley Segmentation Dataset (Martin et al. 2001), which is licensed "
    "for non-commercial research and educational use only. Validated on Set5."
)


def _edsr(scale, num_blocks, num_filters, description, recipe, output, prefix="", after=""):
    """A registry entry: an EDSR architecture, the config file that trains it and the command."""
    train = f"{prefix}python -m kx_vision.train superres --config {recipe} --output {output}{after}"
    return {"class_name": "EDSR", "description": description, "recipe": recipe, "train": train, "data": DATA_291,
            "config": {"scale": scale, "num_blocks": num_blocks, "num_filters": num_filters, "residual_scale": 0.1}}


# The presets kx_vision knows by name: the architecture, the recipe that trains it, the data it uses.
# `edsr_8x32_*` ship (trained on a 2-core CPU, issue 31); `edsr_baseline_*` are the paper-scale recipes, whose
# weights need a GPU and are not shipped.
_CPU = "KERAS_BACKEND=tensorflow "
PRESETS = {
    "edsr_8x32_x2": _edsr(2, 8, 32, "EDSR of 8 residual blocks x 32 filters (196K parameters, residual scale 0.1, "
                          "pixel shuffle + ICNR), x2, L1 loss, trained on a 2-core CPU within 120 minutes",
                          "configs/presets/edsr_8x32_x2.yaml", "runs/presets/edsr_8x32_x2", _CPU),
    "edsr_8x32_x4": _edsr(4, 8, 32, "EDSR of 8 residual blocks x 32 filters, x4, grown from edsr_8x32_x2 (the "
                          "lesson's progressive resizing: body transferred, a new ICNR upsampling stage), L1 loss, "
                          "2-core CPU", "configs/presets/edsr_8x32_x4.yaml", "runs/presets/edsr_8x32_x4", _CPU),
    "edsr_baseline_x2": _edsr(2, 16, 64, "EDSR baseline (Lim et al. 2017: 16 blocks, 64 filters, residual scale "
                              "0.1), x2, L1 loss", "configs/edsr_baseline_x2.yaml", "runs/edsr_x2"),
    "edsr_baseline_x4": _edsr(4, 16, 64, "EDSR baseline (16 blocks, 64 filters, residual scale 0.1), x4, grown from "
                              "the x2 model", "configs/edsr_baseline_x4.yaml", "runs/edsr_x4",
                              after=" (after the x2 recipe, whose runs/edsr_x2/model.keras it starts from)"),
}

# What the card of a preset shipped in the package must state (`shipped_card_problems`).
SHIPPED_CARD_KEYS = ("training_command", "data", "device", "training_minutes", "results")
SHIPPED_RESULT_SETS = ("Set5", "Set14")


def known_presets():
    return sorted(PRESETS)


def default_card(name):
    """The card facts the registry knows for preset `name` (description, training command, data); the
    measured ones (device, minutes, results) are added by whoever trained and measured the weights."""
    if name not in PRESETS:
        raise unknown_preset_error(name)
    entry = PRESETS[name]
    return {"description": entry["description"], "training_command": entry["train"], "data": entry["data"]}


def shipped_presets():
    """Names of the presets whose folders ship in the package."""
    if not os.path.isdir(PRESETS_DIR):
        return []
    return sorted(n for n in os.listdir(PRESETS_DIR) if os.path.isdir(os.path.join(PRESETS_DIR, n)))


def unknown_preset_error(name):
    return KxVisionError(
        f"unknown preset {name!r}: known presets are {', '.join(known_presets())}; or pass a preset "
        "directory (written by save_to_preset)"
    )


def _missing(directory, files=REQUIRED_FILES):
    return [name for name in files if not os.path.isfile(os.path.join(directory, name))]


def resolve(preset):
    """The folder of `preset`: a known preset name (shipped in the package) or a preset directory.

    A known name is looked up first, so a local folder of the same name is reached as `./NAME`.
    """
    preset = os.fspath(preset)
    if preset in PRESETS:
        directory = os.path.join(PRESETS_DIR, preset)
        if _missing(directory):
            entry = PRESETS[preset]
            raise WeightsUnavailableError(
                f"no pretrained weights are available yet for preset {preset!r} (this installation ships "
                f"{', '.join(shipped_presets()) or 'none'}). Train them with the recipe {entry['recipe']}: "
                f"{entry['train']}; then pass the trained model.keras as --model, or a preset directory written "
                "by EDSR.save_to_preset"
            )
        return directory
    if os.path.isdir(preset):
        missing = _missing(preset)
        if missing:
            raise KxVisionError(f"preset directory {preset} has no {missing[0]} (a preset holds {CONFIG_FILE}, "
                                f"{WEIGHTS_FILE} and {METADATA_FILE}, as written by save_to_preset)")
        return preset
    if os.path.exists(preset):
        raise KxVisionError(f"{preset} is a file, not a preset directory")
    raise unknown_preset_error(preset)


def read_json(directory, name):
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as error:
        raise KxVisionError(f"{path} not found") from error
    except (OSError, ValueError) as error:
        raise KxVisionError(f"{path} is not a valid JSON file: {error}") from error


def preset_class(directory, config):
    """The registered model class that `config`, read from `directory`'s config.json, describes."""
    path = os.path.join(directory, CONFIG_FILE)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "class_name" not in config:
        raise KxVisionError(f"{path} is not a Keras serialized model config (no class_name / config)")
    registered = config.get("registered_name") or config["class_name"]
    target = keras.saving.get_registered_object(registered)
    if not (isinstance(target, type) and issubclass(target, keras.Model)):
        raise KxVisionError(f"{path} describes {registered!r}, which is not a registered kx_vision model")
    return target


def load(preset, cls=None):
    """Build the model of `preset` (a known name or a preset directory) and load its weights, float32.

    With `cls` (e.g. `EDSR`), the preset must be a model of that class. Nothing in a preset runs code: the
    class must be a registered model and the config is deserialized with `safe_mode` on.
    """
    directory = resolve(preset)
    config = read_json(directory, CONFIG_FILE)
    target = preset_class(directory, config)
    config_path = os.path.join(directory, CONFIG_FILE)
    if cls is not None and not issubclass(target, cls):
        raise KxVisionError(f"preset {preset} holds a model of class {target.__name__}, not {cls.__name__} "
                            f"({config_path})")
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - a bad argument in the config becomes one message naming the file
        raise KxVisionError(f"cannot build the model of {config_path}: {type(error).__name__}: {error}") from error
    weights = os.path.join(directory, WEIGHTS_FILE)
    try:
        model.load_weights(weights)
    except Exception as error:  # noqa: BLE001 - a weights file of another model becomes one message
        raise KxVisionError(
            f"{weights} does not fit the model of its {CONFIG_FILE}: {type(error).__name__}: {error}"
        ) from error
    return model


def save(model, directory, dtype="float32", card=None, overwrite=False, images=None):
    """Write `model` as a preset folder `directory`, atomically: a failure leaves nothing behind, and an
    existing preset is replaced whole (with `overwrite=True`) or not at all; a folder holding anything other
    than a preset's files is never replaced.

    `dtype="float16"` stores the weights at half size (they load back as float32). `card`: JSON-serialisable
    model-card facts, e.g. `{"training_command": ..., "data": ..., "device": ..., "training_minutes": ...,
    "results": {"Set5": {"psnr": ..., "ssim": ...}}}` (`default_card(name)` gives a known preset's command
    and data), written into metadata.json and README.md. `images`: `{name: path}` of PNGs for the card
    (names from `CARD_IMAGES`).
    """
    if dtype not in WEIGHT_DTYPES:
        raise KxVisionError(f"preset weights dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
    images = dict(images or {})
    unknown = sorted(set(images) - set(CARD_IMAGES))
    if unknown:
        raise KxVisionError(f"preset card images must be named {', '.join(CARD_IMAGES)}; got {', '.join(unknown)}")
    directory = os.path.abspath(os.fspath(directory))
    _check_target(directory, overwrite)
    config = keras.saving.serialize_keras_object(model)
    for key in ("build_config", "compile_config"):
        config.pop(key, None)
    metadata = _metadata(model, dtype, dict(card or {}), images)
    try:
        config_text = json.dumps(config, indent=2)
        metadata_text = json.dumps(metadata, indent=2)
    except (TypeError, ValueError) as error:
        raise KxVisionError(f"preset config or card is not JSON-serialisable: {error}") from error

    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with atomic_folder(directory) as tmp:
        _write_text(os.path.join(tmp, CONFIG_FILE), config_text + "\n")
        model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        if dtype == "float16":
            _store_float16(os.path.join(tmp, WEIGHTS_FILE))
        _write_text(os.path.join(tmp, METADATA_FILE), metadata_text + "\n")
        for name, path in images.items():
            shutil.copyfile(path, os.path.join(tmp, name))
        _write_text(os.path.join(tmp, README_FILE), model_card(os.path.basename(directory), config, metadata))
    return directory


def _check_target(directory, overwrite):
    """Refuse to replace anything but nothing, an empty folder, or (with `overwrite`) a preset folder."""
    if not os.path.lexists(directory):
        return
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise KxVisionError(f"{directory} exists and is not a folder; refusing to replace it with a preset")
    entries = set(os.listdir(directory))
    if entries and not overwrite:
        raise KxVisionError(f"{directory} exists; pass overwrite=True to replace it")
    if not entries <= set(PRESET_FILES):
        raise KxVisionError(
            f"{directory} holds files that are not a preset's ({', '.join(sorted(entries - set(PRESET_FILES)))}); "
            "refusing to replace it"
        )


def _metadata(model, dtype, card, images):
    from kx_vision.version import __version__

    return {
        "class_name": type(model).__name__,
        "kx_vision_version": __version__,
        "keras_version": keras.version(),
        "backend": keras.backend.backend(),
        "parameter_count": int(model.count_params()),
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights_dtype": dtype,
        "card": card,
        "images": sorted(images),
    }


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _store_float16(path):
    """Rewrite a `.weights.h5` file with every float32/float64 array as float16 (Keras casts back to the
    variables' dtype on loading). Copied into a fresh file: HDF5 does not give back the space of deleted arrays."""
    import h5py
    import numpy as np

    limit = float(np.finfo(np.float16).max)
    half = f"{path}.float16"
    with h5py.File(path, "r") as source, h5py.File(half, "w") as target:
        target.attrs.update(dict(source.attrs))

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                target.require_group(name).attrs.update(dict(obj.attrs))
                return
            data = obj[()]
            if obj.dtype in (np.float32, np.float64):
                if data.size and float(np.max(np.abs(data))) > limit:
                    raise KxVisionError(f"weight {name} exceeds the float16 range ({limit:g}); save it as float32")
                data = data.astype(np.float16)
            target.create_dataset(name, data=data).attrs.update(dict(obj.attrs))

        source.visititems(copy)
    os.replace(half, path)


# The card facts with a place of their own in README.md; any other goes under "Notes".
_CARD_SECTIONS = ("description", "training_command", "data", "device", "training_minutes", "results", "comparison")


def _number(value, digits):
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _table(heading, first, rows, note=None):
    """A README.md section: a table of `rows` (`{name: {column: value}}`), columns in order of appearance,
    scores to 2 decimals (4 for SSIM)."""
    if not rows:
        return []
    columns = list(dict.fromkeys(c for cells in rows.values() for c in cells))
    lines = ["", f"## {heading}", "", *([note, ""] if note else []),
             f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, cells in rows.items():
        values = [_number(cells[c], 4 if "ssim" in c else 2) if c in cells else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return lines


def model_card(name, config, metadata):
    """README.md of a preset: what it is, how to load it, how it was trained, on what, and its scores."""
    card = metadata.get("card") or {}
    model_config = config.get("config", {})
    lines = [f"# {name}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    stored = "float16 (loaded as float32)" if metadata["weights_dtype"] == "float16" else metadata["weights_dtype"]
    spec = name if name in PRESETS else f"path/to/{name}"
    lines += [
        f"A kx_vision `{metadata['class_name']}` preset: {metadata['parameter_count']:,} parameters, weights stored "
        f"as {stored}. Runs on the TensorFlow and JAX backends.",
        "",
        "```python",
        "from kx_vision.models import " + metadata["class_name"],
        f"model = {metadata['class_name']}.from_preset(\"{spec}\")",
        "```",
        "",
        "## Training",
        "",
    ]
    command = card.get("training_command")
    if isinstance(command, (list, tuple)):
        command = "\n".join(command)
    lines += ["```bash", command or "(not recorded)", "```", ""]
    for key, label in (("data", "Data"), ("device", "Device"), ("training_minutes", "Training time (minutes)")):
        lines.append(f"- {label}: {card.get(key, '(not recorded)')}")
    lines += _table("Results", "set", card.get("results"),
                    "Y channel (BT.601), `scale` border pixels shaved, predictions rounded to 8 bits "
                    "(`python -m kx_vision.evaluate superres`).")
    lines += _table("Compared (Y-PSNR, dB)", "method", card.get("comparison"))
    captions = {"psnr_vs_minutes.png": "Set5 Y-PSNR against training minutes",
                "examples.png": "bicubic | model | ground truth"}
    for image in metadata.get("images", []):
        lines += ["", f"![{captions.get(image, image)}]({image})"]
    others = {k: v for k, v in card.items() if k not in _CARD_SECTIONS}
    if others:
        lines += ["", "## Notes", ""] + [f"- {k}: {v}" for k, v in others.items()]
    lines += ["", "## Config", ""] + [f"- `{k}`: {v}" for k, v in model_config.items()
                                      if k not in ("name", "trainable")]
    lines += ["", f"Saved {metadata['date_saved']} with kx_vision {metadata['kx_vision_version']}, Keras "
              f"{metadata['keras_version']} ({metadata['backend']} backend).", ""]
    return "\n".join(lines)


def shipped_card_problems(directory, name=None):
    """What keeps the preset folder `directory` from shipping in the package, as a list of sentences (empty:
    fine): it must be a known preset with that architecture, and its card must state the training command,
    the data (with the BSDS licence when BSDS is used), the device, the minutes, and the Set5 and Set14 PSNR
    measured with these very weights."""
    name = name or os.path.basename(os.path.normpath(directory))
    if name not in PRESETS:
        return [f"{name} is not a known preset ({', '.join(known_presets())})"]
    missing = _missing(directory, (*REQUIRED_FILES, METADATA_FILE, README_FILE))
    if missing:
        return [f"{file} is missing" for file in missing]
    problems = []
    config = read_json(directory, CONFIG_FILE)
    entry = PRESETS[name]
    if config.get("class_name") != entry["class_name"]:
        problems.append(f"config.json is a {config.get('class_name')}, not an {entry['class_name']}")
    for key, value in entry["config"].items():
        if config.get("config", {}).get(key) != value:
            problems.append(f"config.json has {key}={config.get('config', {}).get(key)!r}, expected {value!r}")
    card = read_json(directory, METADATA_FILE).get("card") or {}
    problems += [f"the card has no {key}" for key in SHIPPED_CARD_KEYS if not card.get(key)]
    if "BSD" in str(card.get("data", "")) and "non-commercial" not in str(card.get("data", "")):
        problems.append("the card's data uses BSDS but does not say it is for non-commercial research only")
    results = card.get("results") or {}
    for set_name in SHIPPED_RESULT_SETS:
        if not isinstance(results.get(set_name, {}).get("psnr"), (int, float)):
            problems.append(f"the card has no measured {set_name} psnr")
    return problems
