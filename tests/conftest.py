import os
from pathlib import Path

import keras
import numpy as np
import pytest

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
