"""Typed configs: dataclasses with defaults per task, read from YAML, overridden by `--set key=value`.

Every key is checked: an unknown key, a value of the wrong type or a number outside its declared range
raises `ConfigError` naming the key (with the closest known key as a hint), before any work starts. A
config file may extend another one with a top-level `base: other.yaml` (see `load`).
"""

import dataclasses
import difflib
import math
import os
import types
import typing

import yaml

from kx_vision.errors import ConfigError

BASE_KEY = "base"  # top-level key of a config file naming the file it extends (never a config field)

# The lesson's VGG16 layers for style transfer (style-transfer-net): style from the last conv of blocks 2-5, each
# Gram term with its own weight, content from the third of them. Defaults of the style task's config and a
# choice for `losses.StyleTransferLoss` (re-exported there); defined here, below both, since a config imports
# no Keras (`train --help` stays instant).
LESSON_CONTENT_LAYERS = ("block4_conv3",)
LESSON_STYLE_LAYERS = ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")
LESSON_STYLE_LAYER_WEIGHTS = (0.025, 0.275, 5.0, 0.2)


def option(default, help, choices=None, min=None, max=None, above=None, below=None):
    """A config field with its help text (shown by `--help`), optional allowed values and, for numbers,
    a valid range: `min` / `max` inclusive, `above` / `below` exclusive bounds (for a list of numbers, the
    bounds of each item). `option(0.2, "...", min=0, below=1)` is [0, 1); `option(1e-3, "...", above=0)`
    is > 0."""
    if min is not None and above is not None or max is not None and below is not None:
        raise TypeError("give min or above, max or below, not both")
    bounds = None  # (low, low_open, high, high_open), None where unbounded
    if any(b is not None for b in (min, max, above, below)):
        low = (min, False) if above is None else (above, True)
        high = (max, False) if below is None else (below, True)
        bounds = (*low, *high)
    kwargs = {"metadata": {"help": help, "choices": choices, "bounds": bounds}}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), **kwargs)
    return dataclasses.field(default=default, **kwargs)


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(bounds):
    """`>= 1`, `> 0`, `in [0, 1)`: a range as declared with `option`."""
    low, low_open, high, high_open = bounds
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_number(low)}"
    return f"{'<' if high_open else '<='} {_number(high)}"


def _in_range(value, bounds):
    low, low_open, high, high_open = bounds
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _is_config(tp):
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls):
    return typing.get_type_hints(cls)


def flatten(config, prefix=""):
    """`{"dotted.key": value}` for every leaf of a config."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def describe(cls, prefix=""):
    """Lines `key = default  (type, range; help)` for every key of a config class, for `--help`."""
    lines = []
    types_ = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if _is_config(tp):
            lines.extend(describe(tp, f"{prefix}{f.name}."))
            continue
        meta = f.metadata
        bounds = meta.get("bounds")
        kind = _type_name(tp)
        if bounds:
            kind += f", {'each ' if typing.get_origin(_strip_optional(tp)) is list else ''}{range_text(bounds)}"
        choices = f" one of {', '.join(map(str, meta['choices']))};" if meta.get("choices") else ""
        default = getattr(instance, f.name)
        lines.append(f"  {prefix}{f.name} = {default!r}  ({kind};{choices} {meta.get('help', '')})")
    return lines


def _type_name(tp):
    if _is_optional(tp):
        return f"{_type_name(_strip_optional(tp))} or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp):
    origin = typing.get_origin(tp)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp):
    if not _is_optional(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0]


def _coerce(key, value, tp, meta=None):
    """`value` as type `tp`, checked against the field's `meta` (`choices`, `bounds`), or `ConfigError`
    naming `key`."""
    meta = meta or {}
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, value, _strip_optional(tp), meta)
    bounds = meta.get("bounds")
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list of {_type_name(item)}, got {value!r}")
        result = [_coerce(key, v, item) for v in value]
        if bounds and not all(_in_range(v, bounds) for v in result):
            raise ConfigError(f"config key '{key}' must have every item {range_text(bounds)}, got {result}")
        return result
    result = _coerce_scalar(key, value, tp)
    choices = meta.get("choices")
    if choices and result not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {result!r}")
    if bounds and not _in_range(result, bounds):
        raise ConfigError(f"config key '{key}' must be {range_text(bounds)}, got {_number(result)}")
    return result


def _coerce_scalar(key, value, tp):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ConfigError(f"config key '{key}' expects a finite number, got {value!r}")
        return result
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for '{key}'")


def from_dict(cls, data, prefix="", root=None):
    """Build config `cls` from a (nested) dict, checking every key, type and range. `prefix` and `root`
    (the top-level config class) place a section inside its config, for the messages."""
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(_unknown_key_message(root, key))
        tp = types_[name]
        if _is_config(tp):
            kwargs[name] = from_dict(tp, value if value is not None else {}, f"{key}.", root)
        else:
            kwargs[name] = _coerce(key, value, tp, fields[name].metadata)
    return cls(**kwargs)


def validate(config):
    """Check every value of a config built in Python (not read by `load`) for type and range, as `load`
    does; returns the config. Tasks call it from their `check_config`."""
    from_dict(type(config), to_dict(config))
    return config


def _unknown_key_message(cls, key):
    """`unknown config key ...` with a hint: the closest key of the section it was typed in (never
    the section itself), else that section's keys."""
    leaves = list(flatten(cls()))
    sections = {".".join(k.split(".")[:i]) for k in leaves for i in range(1, k.count(".") + 1)}
    end = "; `--help` lists every key"
    if key in sections:
        members = ", ".join(k for k in leaves if k.startswith(f"{key}."))
        return f"config key '{key}' is a section, not a value: set one of its keys ({members})"
    parts = key.split(".")
    depth = 0  # parts[:depth] is the deepest existing section the key is in ("" = the top level)
    while depth < len(parts) - 1 and ".".join(parts[: depth + 1]) in sections:
        depth += 1
    section = ".".join(parts[:depth])
    if ".".join(parts[: depth + 1]) in leaves:
        return f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is a value, not a section{end}"
    name, rest = parts[depth], parts[depth + 1:]
    dotted = f"{section}." if section else ""
    children = sorted({k[len(dotted):].split(".")[0] for k in leaves if k.startswith(dotted)})
    close = difflib.get_close_matches(name, children, n=1)
    if close:
        guess = ".".join([dotted + close[0], *rest])
        return f"unknown config key '{key}' (did you mean '{guess if guess in leaves else dotted + close[0]}'?){end}"
    elsewhere = [k for k in leaves if k.rsplit(".", 1)[-1] == ".".join([name, *rest])]
    if elsewhere:
        return f"unknown config key '{key}' (did you mean '{elsewhere[0]}'?){end}"
    if not section:
        close = difflib.get_close_matches(key, leaves, n=1)  # a key typed without its section
        return f"unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "") + end
    members = ", ".join(k for k in leaves if k.startswith(dotted))
    return f"unknown config key '{key}'; the keys of section '{section}' are: {members}"


def to_dict(config):
    return dataclasses.asdict(config)


def override(config, assignments):
    """A copy of `config` with `key=value` assignments applied (values parsed as YAML scalars)."""
    data = to_dict(config)
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        key, raw = assignment.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(_unknown_key_message(type(config), key))
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(_unknown_key_message(type(config), key))
        node[parts[-1]] = value
    return from_dict(type(config), data)


def load(cls, path=None, assignments=()):
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by `assignments`.

    A file whose top level has `base: other.yaml` (a path relative to that file) extends it: the base
    is read first (itself possibly extending another), then this file's values are merged over it,
    section by section and key by key (a list is replaced whole). A cycle of bases is refused.
    """
    config = cls()
    if path is not None:
        defaults = to_dict(config)
        data = {}
        for file, values in _read_chain(path):
            try:
                from_dict(cls, _merge(defaults, values, file))  # each file's own values, named by file
            except ConfigError as error:
                raise ConfigError(f"config file {file}: {error}") from None
            data = _merge(data, values, file)
        config = from_dict(cls, _merge(defaults, data, path))
    return override(config, list(assignments))


def _read_chain(path, extended_by=()):
    """`[(file, values)]` for `path` and the files it extends (`base:`), the deepest base first."""
    if os.path.realpath(path) in map(os.path.realpath, extended_by):
        cycle = " -> ".join(os.path.normpath(p) for p in (*extended_by, path))
        raise ConfigError(f"config files extend each other in a cycle (base:): {cycle}")
    if not os.path.isfile(path):
        if extended_by:
            raise ConfigError(f"config file {extended_by[-1]}: base file not found: {os.path.normpath(path)}")
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must be a mapping of config keys, got {type(values).__name__}")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return [(path, values)]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: '{BASE_KEY}' must be the path of the config file it extends, "
                          f"got {base!r}")
    base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
    return _read_chain(base_path, (*extended_by, path)) + [(path, values)]


def _merge(base, update, path, prefix=""):
    if not isinstance(update, dict):
        raise ConfigError(f"config file {path}: section '{prefix or '<top>'}' must be a mapping")
    out = dict(base)
    for key, value in update.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, path, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def dump(config, path):
    """Write `config` as YAML atomically."""
    from kx_vision.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
