"""Per-group learning rates under keras.distribution.DataParallel on two (forced) JAX host devices.

The device count is fixed when JAX starts, so this runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, keras
    from kx_vision.training.optimizers import Adam
    devices = keras.distribution.list_devices("cpu")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="early")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
    model.compile(optimizer=Adam(1e-2, group_rates=["early/=0.01"]), loss="mse")
    before = {w.path: np.array(w) for w in model.trainable_weights}
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"),
              batch_size=16, epochs=1, verbose=0)
    sizes = {p: float(np.abs(np.array(w) - before[p]).max()) for p, w in ((w.path, w) for w in model.trainable_weights)}
    print(json.dumps({"devices": len(devices), "sizes": sizes}))
    """
)


def test_group_rates_under_jax_data_parallel():
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["sizes"]["early/kernel"] == pytest.approx(1e-4, rel=0.05)
    assert result["sizes"]["head/kernel"] == pytest.approx(1e-2, rel=0.05)
