import os
from pathlib import Path

# JAX on CPU compiles every eager op (each weight initializer, per shape) with LLVM at -O2, which takes
# 1-2 s per op here and dominated the test run; the tests' tiny models run as fast unoptimised. Set
# before JAX starts its CPU backend; subprocesses (parity, distribution) inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "tensorflow":
    # Two logical CPU devices, so tf.distribute strategies really split batches in tests.
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KX_VISION_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dir(*parts):
    """A folder of ../shared/data, or skip the test saying it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real data sets live in ../shared/data; set KX_VISION_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_image_folders(root, rng=None):
    """Small real-looking images in `root`/train (3) and `root`/val (1): smooth gradients plus texture, so
    there is something to learn. Returns `root`."""
    from PIL import Image

    rng = np.random.default_rng(0) if rng is None else rng
    for split, count in (("train", 3), ("val", 1)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            yy, xx = np.mgrid[0:40, 0:36]
            base = np.stack([np.sin(xx / (3 + i)), np.cos(yy / 4), np.sin((xx + yy) / 5)], -1)
            image = ((base * 0.4 + 0.5 + rng.normal(0, 0.03, base.shape)).clip(0, 1) * 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"{i}.png")
    return root


@pytest.fixture
def folders(tmp_path, rng):
    """`make_image_folders` in the test's temporary folder."""
    return make_image_folders(tmp_path, rng)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny x2 EDSR saved as a .keras file, once per test module (export, safety and refusal tests)."""
    from kx_vision.models import EDSR

    path = tmp_path_factory.mktemp("model") / "edsr.keras"
    keras.utils.set_random_seed(0)
    EDSR(scale=2, num_blocks=1, num_filters=8).save(path)
    return path
