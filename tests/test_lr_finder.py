import json

import keras
import numpy as np
import pytest

from kx_vision.training.lr_finder import LRFinder, find_lr, save_plot, suggest_lr


def _problem(rng):
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(512, 1))).astype("float32")
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)  # non-trainable statistics must be restored too
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    return model, x, y


def test_suggestion_is_where_loss_falls_fastest_and_weights_are_restored(rng, tmp_path):
    tf = pytest.importorskip("tensorflow")
    model, x, y = _problem(rng)
    before = [np.array(w) for w in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(256)
    result = find_lr(model, dataset, "mse", num_steps=100, min_lr=1e-4, max_lr=10.0)
    for a, w in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, w)  # bit for bit, BN statistics included
    lrs, losses = np.array(result["lrs"]), np.array(result["losses"])
    best = int(np.argmin(losses))
    assert best < len(losses) - 1  # the test ran past the best rate, into divergence
    i = int(np.argmin(np.abs(lrs - result["suggestion"])))
    # The suggestion sits on the descent: below the rate of the lowest loss, with the loss falling
    # steeply there (at least half the steepest slope of the curve before its minimum).
    slopes = np.gradient(losses, np.log10(lrs))
    assert 5 <= i < best and losses[i] < losses[0]
    assert slopes[i] <= 0.5 * slopes[5 : best + 1].min()
    save_plot(result, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_suggest_lr_on_a_known_curve():
    lrs = np.logspace(-6, 0, 61)
    # Flat, then a descent steepest at 1e-3, then divergence.
    losses = 1.0 - 0.8 / (1 + np.exp(-(np.log10(lrs) + 3) * 4)) + np.where(lrs > 0.1, (lrs - 0.1) * 50, 0)
    assert suggest_lr(lrs, losses) == pytest.approx(1e-3, rel=0.3)
    assert suggest_lr(lrs[:4], losses[:4]) is None


def test_finder_stops_on_divergence(rng):
    model, x, y = _problem(rng)
    model.compile(optimizer=keras.optimizers.SGD(1e-5), loss="mse")
    finder = LRFinder(min_lr=1e-3, max_lr=1e4, num_steps=100)
    model.fit(np.tile(x, (4, 1)), np.tile(y, (4, 1)), batch_size=16, epochs=1, callbacks=[finder], verbose=0, shuffle=False)
    assert len(finder.lrs) < 100


def test_cli_find_lr(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from kx_vision import train

    args = ["superres", "--find-lr", "--find-lr-steps", "30", "--output", str(tmp_path),
            "--set", "model.num_blocks=1", "--set", "model.num_filters=8", "--set", "data.patch_size=16",
            "--set", "data.batch_size=4", "--set", "jit_compile=false"]
    assert train.main(args) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    result = json.loads((tmp_path / "lr_find.json").read_text())
    assert len(result["lrs"]) <= 30 and (tmp_path / "lr_find.png").is_file()
    assert not (tmp_path / "model.keras").exists()


def test_cli_find_lr_with_the_tensorflow_free_pipeline(tmp_path, capsys):
    """The numpy pipeline gives a PyDataset of steps_per_epoch batches (no `.repeat()`): the range test
    runs as many epochs of it as it needs (it crashed with AttributeError before)."""
    from kx_vision import train

    args = ["superres", "--find-lr", "--find-lr-steps", "12", "--output", str(tmp_path),
            "--set", "model.num_blocks=1", "--set", "model.num_filters=8", "--set", "data.patch_size=16",
            "--set", "data.batch_size=4", "--set", "steps_per_epoch=5", "--set", "data.pipeline=numpy"]
    assert train.main(args) == 0
    assert "LR range test over" in capsys.readouterr().out
    result = json.loads((tmp_path / "lr_find.json").read_text())
    assert 5 < len(result["lrs"]) <= 12  # more than one 5-step epoch of the PyDataset (it may stop on divergence)
    assert result["lrs"] == sorted(result["lrs"]) and np.isfinite(result["losses"][:6]).all()
