"""Each notebook runs top to bottom, headless, with the fast setting (`KX_VISION_FAST=1`).

They run once per CI, under the TensorFlow backend: a notebook takes a minute or more on a 2-core CPU, and
the parity suite already proves the library agrees across backends.
"""

from pathlib import Path

import keras
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_three_notebooks_are_committed_with_small_outputs():
    assert [p.stem for p in NOTEBOOKS] == ["01_super_resolution", "02_style_transfer", "03_segmentation"]
    for path in NOTEBOOKS:
        assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="notebooks run once, in the TensorFlow run")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("KX_VISION_FAST", "1")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
