"""Writes each notebook's `.ipynb` from its script, and with `--execute` runs it to store its outputs.

    KERAS_BACKEND=tensorflow KX_VISION_FAST=1 python notebooks/build.py --execute [--only 03_segmentation]

A notebook's source is its script, `NN_name.py` in jupytext's percent format (`# %%` starts a code cell,
`# %% [markdown]` a text cell): plain Python that ruff lints and a diff shows. The `.ipynb` beside it is paired
with it (jupytext's `formats: ipynb,py:percent`: Jupyter with jupytext installed keeps both in step) and holds
the outputs of a run; `tests/test_notebooks.py` checks that the two hold the same cells.
"""

import argparse
import os
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(path.stem for path in HERE.glob("[0-9][0-9]_*.py"))

NOISE = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ", "WARNING:tensorflow:",
         "INFO:tensorflow:", "WARNING:absl:")


def execute(notebook, timeout=1800):
    """Run the notebook, then drop backend start-up logs from its stored outputs (they differ per machine)."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream":
                lines = [line for line in output.text.splitlines(keepends=True) if not line.startswith(NOISE)]
                if not "".join(lines).strip():
                    continue
                output.text = "".join(lines)
            kept.append(output)
        cell.outputs = kept
    return notebook


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--execute", action="store_true", help="run each notebook and store its outputs")
    parser.add_argument("--only", nargs="*", default=NOTEBOOKS)
    args = parser.parse_args()
    for name in args.only:
        notebook = jupytext.read(HERE / f"{name}.py")
        if args.execute:
            execute(notebook)
        path = HERE / f"{name}.ipynb"
        nbformat.write(notebook, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
