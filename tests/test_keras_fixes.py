"""`kx_vision.training.keras_fixes`: each workaround is still needed, guarded by its Keras versions, and pinned.

When Keras fixes one of these upstream, its "still needed" test fails: delete the workaround then.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from kx_vision.training import keras_fixes

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_pins_the_versions_the_workarounds_were_written_for():
    text = (REPO / "pyproject.toml").read_text()
    low, high = re.search(r'"keras>=(\d+\.\d+),<(\d+\.\d+)"', text).groups()
    (first, last) = keras_fixes.WRITTEN_FOR
    assert low == f"{first[0]}.{first[1]}"
    assert high == f"{last[0]}.{last[1] + 1}"
    assert first <= keras_fixes.keras_version() <= last  # the installed Keras is one they were written for


def test_another_keras_version_gets_no_workaround_and_one_warning(monkeypatch):
    monkeypatch.setattr(keras_fixes, "keras_version", lambda: (3, 99))
    monkeypatch.setattr(keras_fixes, "_warned", set())
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4, 4, 3))
    with pytest.warns(UserWarning, match="written for Keras 3.14 to 3.15, not 3.99: it is not applied"):
        keras_fixes.two_pass_batchnorm(layer)
    assert "_moments" not in vars(layer)  # the layer keeps Keras's own method
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert keras_fixes.MultiWorkerFit.apply(model, strategy=None) is model
    assert "_maybe_symbolic_build" not in vars(model)


_SYNC_BN_CHECK = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kx_vision.training import keras_fixes
strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
rng = np.random.default_rng(0)
x = (1000.0 + 0.01 * rng.standard_normal((2, 8, 6, 6, 4))).astype("float32")  # |mean| >> std
exact = x.astype("float64").reshape(-1, 4).var(axis=0)
with strategy.scope():
    keras_bn = keras.layers.BatchNormalization(synchronized=True)
    ours = keras.layers.BatchNormalization()
    for layer in (keras_bn, ours):
        layer.build((None, 6, 6, 4))
keras_fixes.two_pass_batchnorm(ours)
inputs = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group]))
errors = {}
for name, layer in (("keras", keras_bn), ("ours", ours)):
    out = strategy.run(tf.function(lambda t, layer=layer: layer._moments(t, None)), args=(inputs,))
    variance = strategy.experimental_local_results(out[1])[0].numpy()
    errors[name] = float(np.max(np.abs(variance - exact) / exact))
print(json.dumps(errors))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's synchronized BatchNorm")
def test_keras_synchronized_batchnorm_still_loses_digits():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_SYNC_BN_CHECK)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors["ours"] < 1e-3, errors  # two passes: float32 rounding of the deviations only
    # Keras's one-pass E[x^2] - E[x]^2 cancels catastrophically here. If this fails, Keras computes the
    # variance well now: drop keras_fixes.two_pass_batchnorm and use synchronized=True.
    assert errors["keras"] > 0.1, errors
