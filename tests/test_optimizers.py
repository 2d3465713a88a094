import keras
import numpy as np
import pytest
from keras import ops
from testing import run_serialization_test

from kx_vision.training.optimizers import SGD, Adam, OneCycle, one_cycle


def numpy_one_cycle(step, start, peak, end, total, pct):
    up = pct * total
    if step < up:
        t = step / up
        return start + (peak - start) * (1 - np.cos(np.pi * t)) / 2
    t = min((step - up) / (total - up), 1.0)
    return peak + (end - peak) * (1 - np.cos(np.pi * t)) / 2


def test_one_cycle_matches_numpy_reference():
    lr, mom = one_cycle(1e-2, total_steps=100, pct_start=0.3)
    for step in [0, 1, 15, 29, 30, 31, 64, 99, 100, 150]:
        assert float(lr(step)) == pytest.approx(numpy_one_cycle(step, 4e-4, 1e-2, 4e-8, 100, 0.3), rel=1e-3, abs=1e-9)
        assert float(mom(step)) == pytest.approx(numpy_one_cycle(step, 0.95, 0.85, 0.95, 100, 0.3), rel=1e-6)
    assert float(lr(30)) == pytest.approx(1e-2) and float(mom(30)) == pytest.approx(0.85)
    linear = OneCycle(0.0, 1.0, 0.0, 10, pct_start=0.5, anneal="linear")
    np.testing.assert_allclose([float(linear(s)) for s in range(11)], [0, .2, .4, .6, .8, 1, .8, .6, .4, .2, 0], atol=1e-6)
    run_serialization_test(linear)


def _model():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="early")(inputs)
    x = keras.layers.Dense(4, name="late")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


def _update_sizes(optimizer, rng):
    model = _model()
    model.compile(optimizer=optimizer, loss="mse")
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    before = {w.path: ops.convert_to_numpy(w).copy() for w in model.trainable_weights}
    model.train_on_batch(x, y)
    return {p: np.abs(ops.convert_to_numpy(w) - before[p]).max()
            for p, w in ((w.path, w) for w in model.trainable_weights)}


def test_group_rates_scale_each_groups_update(rng):
    # Adam's first step moves every weight by ~lr (sign of the gradient), so update sizes show the rate.
    sizes = _update_sizes(Adam(1e-2, group_rates=["early/=0.01", "late/=0.1"]), rng)
    assert sizes["early/kernel"] == pytest.approx(1e-4, rel=0.05)
    assert sizes["late/kernel"] == pytest.approx(1e-3, rel=0.05)
    assert sizes["head/kernel"] == pytest.approx(1e-2, rel=0.05)
    frozen = _update_sizes(Adam(1e-2, group_rates={"early/": 0.0}), rng)
    assert frozen["early/kernel"] == 0 and frozen["head/kernel"] > 0


def test_group_rates_with_sgd_are_exact(rng):
    model = _model()
    model.compile(optimizer=SGD(0.1, group_rates=["late/=0.5"]), loss="mse")
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    reference = _model()
    reference.set_weights(model.get_weights())
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    reference.train_on_batch(x, y)
    model.train_on_batch(x, y)
    for w, b, r in zip(model.trainable_weights, before, reference.trainable_weights):
        full = ops.convert_to_numpy(r) - b
        got = ops.convert_to_numpy(w) - b
        np.testing.assert_allclose(got, full * (0.5 if w.path.startswith("late/") else 1.0), rtol=1e-4, atol=1e-7)


def test_momentum_cycles_and_optimizer_serializes():
    lr, mom = one_cycle(1e-3, 50)
    opt = Adam(lr, beta_1_schedule=mom, group_rates=["backbone/=0.1"])
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, Adam) and restored.group_rates == [("backbone/", 0.1)]
    assert isinstance(restored.beta_1_schedule, OneCycle)
    model = _model()
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 1), "float32"), epochs=2, verbose=0)
    assert opt.beta_1 == 0.9  # the constant is restored after each step
    assert int(opt.iterations) == 2


def test_group_rates_under_mirrored_strategy(rng):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("MirroredStrategy is TensorFlow's; JAX distribution is tested in tests/test_distribution.py")
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2  # conftest splits the CPU
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        sizes = _update_sizes(Adam(1e-2, group_rates=["early/=0.01"]), rng)
    assert sizes["early/kernel"] == pytest.approx(1e-4, rel=0.05)
    assert sizes["head/kernel"] == pytest.approx(1e-2, rel=0.05)
