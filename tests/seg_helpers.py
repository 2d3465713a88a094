"""A tiny functional backbone (`stages` stride-2 stages, 5 by default: 32x down as ResNet50) so segmentation tests
build and run fast."""

import contextlib

import keras


def tiny_backbone(stages=5, width=8):
    image = keras.Input((None, None, 3), name="tiny_input")
    x = image
    for i in range(stages):
        x = keras.layers.Conv2D(width * (i + 1), 3, strides=2, padding="same", name=f"stage{i}_down")(x)
        x = keras.layers.BatchNormalization(name=f"stage{i}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{i}_relu")(x)
        x = keras.layers.Conv2D(width * (i + 1), 3, padding="same", activation="relu", name=f"stage{i}_conv")(x)
    return keras.Model(image, x, name="tiny")


@contextlib.contextmanager
def symbolic():
    """Build models without initialising their weights, for shape and structure checks.

    On JAX, initialising a big application compiles one random kernel per weight shape (minutes on
    CPU); inside a StatelessScope Keras defers that, and the deferred variables are dropped after.
    """
    from keras.src.backend.common import global_state

    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", [])
