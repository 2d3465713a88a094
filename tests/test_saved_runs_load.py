"""Every `.keras` file that training writes (model.keras, checkpoints/last.keras and best.keras) loads in a fresh
process after `import kx_vision` alone, with Keras's own `keras.saving.load_model(path)` and its defaults
(compile state and optimizer included), as the README promises (issue 31: it failed with `Could not locate
class 'Adam'`). One tiny run per task, on the backend of the session."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kx_vision import train

LOAD_ALL = """
import json, sys
import keras
import kx_vision
out = {}
for path in sys.argv[1:]:
    model = keras.saving.load_model(path)
    out[path] = [type(model).__name__, type(model.optimizer).__name__ if model.optimizer else None,
                 int(model.optimizer.iterations.numpy() if hasattr(model.optimizer.iterations, "numpy")
                     else model.optimizer.iterations) if model.optimizer else None]
print(json.dumps(out))
"""

TINY = {
    "superres": ["steps_per_epoch=2", "model.num_blocks=1", "model.num_filters=8", "data.patch_size=16", "data.batch_size=2"],
    "segmentation": ["model.backbone=simple", "model.max_filters=8", "data.image_size=32,32", "data.batch_size=2",
                     "jit_compile=false"],
    "style": ["steps_per_epoch=2", "model.num_filters=4", "model.num_blocks=1", "data.crop_size=32", "data.batch_size=2",
              "loss.vgg_weights=null", "loss.style_size=32"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished run per task, trained for one short epoch, each with its model and checkpoints."""
    folder = tmp_path_factory.mktemp("runs")
    style = folder / "style.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(style)
    made = {}
    for task, assignments in TINY.items():
        extra = [f"style_image={style}"] if task == "style" else []
        args = [task, "--output", str(folder / task)]
        for item in ["epochs=1", "optimizer.warmup_steps=0", "samples=0", *assignments, *extra]:
            args += ["--set", item]
        assert train.main(args) == 0, task
        made[task] = folder / task
    return made


def test_every_saved_model_loads_after_import_kx_vision(runs):
    paths = []
    for task, run in runs.items():
        files = [run / "model.keras", run / "checkpoints" / "last.keras", run / "checkpoints" / "best.keras"]
        assert all(f.is_file() for f in files), (task, os.listdir(run))
        paths += [str(f) for f in files]
    done = subprocess.run([sys.executable, "-c", LOAD_ALL, *paths], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    expected_class = {"superres": "EDSR", "segmentation": "UNet", "style": "StyleTransferNet"}
    for task, run in runs.items():
        for path in (p for p in paths if p.startswith(str(run))):
            name, optimizer, iterations = loaded[path]
            assert name == expected_class[task], path
            # The optimizer comes back with its state: the kx_vision Adam, after the run's steps.
            assert optimizer == "Adam" and iterations >= 2, (path, optimizer, iterations)
