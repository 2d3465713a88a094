"""Typed configs: dataclasses with defaults per task, read from YAML, overridden by `--set key=value`.

Every key is checked: an unknown key or a value of the wrong type raises `ConfigError` naming the
key (with the closest known key as a hint), before any work starts.
"""

import dataclasses
import difflib
import os
import types
import typing

import yaml

from kx_vision.errors import ConfigError


def option(default, help, choices=None):
    """A config field with its help text (shown by `--help`) and optional allowed values."""
    kwargs = {"metadata": {"help": help, "choices": choices}}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), **kwargs)
    return dataclasses.field(default=default, **kwargs)


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
    """Lines `key (type, default): help` for every key of a config class, for `--help`."""
    lines = []
    types_ = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if _is_config(tp):
            lines.extend(describe(tp, f"{prefix}{f.name}."))
            continue
        meta = f.metadata
        choices = f" one of {', '.join(map(str, meta['choices']))};" if meta.get("choices") else ""
        default = getattr(instance, f.name)
        lines.append(f"  {prefix}{f.name} = {default!r}  ({_type_name(tp)};{choices} {meta.get('help', '')})")
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
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0]


def _coerce(key, value, tp, choices=None):
    """`value` as type `tp`, or `ConfigError` naming `key`."""
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, value, _strip_optional(tp), choices)
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list of {_type_name(item)}, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            result = value.lower() in ("true", "yes", "1")
        else:
            raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        try:
            result = int(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from None
    elif tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
    elif tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        result = str(value)
    else:
        raise TypeError(f"unsupported config type {tp} for '{key}'")
    if choices and result not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {result!r}")
    return result


def from_dict(cls, data, prefix=""):
    """Build config `cls` from a (nested) dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(_unknown_key_message(cls, key, prefix))
        tp = types_[name]
        if _is_config(tp):
            kwargs[name] = from_dict(tp, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, tp, fields[name].metadata.get("choices"))
    return cls(**kwargs)


def _unknown_key_message(cls, key, prefix):
    known = [k for k in flatten(cls())]
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    close = difflib.get_close_matches(key, known + sorted(sections), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{hint}; `--help` lists every key"


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
                raise ConfigError(_unknown_key_message(type(config), key, ""))
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(_unknown_key_message(type(config), key, ""))
        node[parts[-1]] = value
    return from_dict(type(config), data)


def load(cls, path=None, assignments=()):
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by `assignments`."""
    config = cls()
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        merged = _merge(to_dict(config), data, path)
        config = from_dict(cls, merged)
    return override(config, list(assignments))


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
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    os.replace(tmp, path)
