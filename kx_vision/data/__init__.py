"""Input pipelines: image files -> decoded, augmented batches (tf.data, or `keras.utils.PyDataset`s without
TensorFlow). This module imports nothing heavy: the choice of pipeline is made before any is built."""

import os

# Small data shipped inside the package (quick start, tests, notebooks): photographs for super-resolution and
# style, and CamVid frames with their labels under `camvid/`.
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")

PIPELINES = ("auto", "tf_data", "numpy")


def resolve_pipeline(name, key="data.pipeline"):
    """"auto" is tf.data where TensorFlow is installed, else the NumPy `PyDataset`s of `kx_vision.data.arrays`."""
    import importlib.util

    from kx_vision.errors import ConfigError

    if name not in PIPELINES:
        raise ConfigError(f"config key '{key}': unknown pipeline {name!r}; pipelines: {', '.join(PIPELINES)}")
    has_tf = importlib.util.find_spec("tensorflow") is not None
    if name == "tf_data" and not has_tf:
        raise ConfigError(f"config key '{key}' is tf_data but TensorFlow is not installed; use numpy (or auto)")
    if name == "auto":
        return "tf_data" if has_tf else "numpy"
    return name


def default_workers():
    """Threads for one stage of a pipeline: decoding images (Pillow and OpenCV release the GIL while they
    decode), reading file headers, a `keras.utils.PyDataset`'s workers. One per core, at most 16, and at least
    2 (a `PyDataset` with one worker would make its batches in the training thread)."""
    return max(2, min(16, os.cpu_count() or 1))
