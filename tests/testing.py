"""Shared checks for every public layer, model, loss and metric (like keras-hub's `TestCase`).

- `run_serialization_test(obj)`: `get_config` -> `from_config` gives the same config, through JSON, and the
  object is registered under `kx_vision>ClassName` (so `.keras` files load without `custom_objects`).
- `run_layer_test(layer, x)`: the layer runs eagerly and symbolically with the same output shape
  (`compute_output_shape` where it has one), and it survives a serialization round trip.
- `run_model_saving_test(model, x, tmp_path)`: `.keras` save -> load (no `custom_objects`, `safe_mode` on)
  gives the same class, config and outputs.
- `run_loss_test(loss, y_true, y_pred)` / `run_metric_test(metric, y_true, y_pred)`: finite scalar values,
  unchanged by a serialization round trip of the object.
"""

import json

import keras
import numpy as np
from keras import ops


def _same_config(a, b):
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def run_serialization_test(obj):
    """The object's config round-trips, through JSON, and its class is registered; returns the clone."""
    cls = type(obj)
    name = keras.saving.get_registered_name(cls)
    assert name == f"kx_vision>{cls.__name__}", f"{cls.__name__} is not registered in package kx_vision"
    assert keras.saving.get_registered_object(name) is cls
    config = obj.get_config()
    clone = cls.from_config(json.loads(json.dumps(config)))
    assert _same_config(clone.get_config(), config), (clone.get_config(), config)
    serialized = keras.saving.serialize_keras_object(obj)
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is cls and _same_config(revived.get_config(), config)
    return clone


def run_layer_test(layer, x, expected_shape=None):
    """Eager and symbolic calls agree on the output shape; the config round-trips. Returns the eager output."""
    x = np.asarray(x, "float32")
    out = layer(x)
    shape = tuple(out.shape)
    if expected_shape is not None:
        assert shape == tuple(expected_shape), (shape, expected_shape)
    symbolic = layer(keras.Input(shape=x.shape[1:], batch_size=x.shape[0]))
    assert tuple(symbolic.shape) == shape, (tuple(symbolic.shape), shape)
    try:
        computed = layer.compute_output_shape(x.shape)
    except NotImplementedError:
        computed = None
    if computed is not None:
        assert all(c is None or c == s for c, s in zip(computed, shape)), (computed, shape)
    run_serialization_test(layer)
    return ops.convert_to_numpy(out)


def run_model_saving_test(model, x, tmp_path, atol=1e-6, ignore_keys=()):
    """`.keras` save -> `load_model` (no custom_objects, safe mode) keeps class, config and outputs.
    `ignore_keys`: config entries not compared (a nested backbone's own config may differ in details)."""
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)

    def kept(config):
        return {k: v for k, v in config.items() if k not in ignore_keys}

    assert _same_config(kept(loaded.get_config()), kept(model.get_config()))
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=atol)
    return loaded


def _round_trip(obj):
    return keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(obj))))


def run_loss_test(loss, y_true, y_pred, rtol=1e-5):
    """A finite scalar, the same after a serialization round trip of the loss. Returns the value."""
    value = float(ops.convert_to_numpy(loss(y_true, y_pred)))
    assert np.isfinite(value)
    assert type(_round_trip(loss)) is type(loss)
    np.testing.assert_allclose(float(ops.convert_to_numpy(_round_trip(loss)(y_true, y_pred))), value, rtol=rtol)
    return value


def run_metric_test(metric, y_true, y_pred, rtol=1e-5):
    """A finite result, the same from a metric rebuilt from its config. Returns the value."""
    metric.update_state(y_true, y_pred)
    value = np.asarray(ops.convert_to_numpy(metric.result()))
    assert np.all(np.isfinite(value))
    clone = type(metric).from_config(json.loads(json.dumps(metric.get_config())))
    clone.update_state(y_true, y_pred)
    np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(clone.result())), value, rtol=rtol)
    return value
