"""Every Python block of README.md and ARCHITECTURE.md runs as written, alone, in a fresh process and an
empty folder, on the current backend (issue 30, part 4). A block that needs files first says so in its first
line (`# needs: ...`)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# Blocks that need an export: the export tests run them with a fresh export (an export per backend here would
# cost a minute of CI for the same check).
RUN_ELSEWHERE = {
    "exported/edsr_x2": "tests/test_export.py::test_readme_serving_snippet_runs runs it with a fresh export",
    "exported/edsr_x2_onnx": "tests/test_export_formats.py runs it with a fresh ONNX export",
}


def _blocks():
    found = []
    for name in ("README.md", "ARCHITECTURE.md"):
        text = (REPO / name).read_text()
        for match in BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{name}:{line}"))
    return found


def test_the_blocks_are_found():
    ids = [block.id for block in _blocks()]
    assert len(ids) >= 4 and any(i.startswith("README.md") for i in ids), ids


@pytest.mark.parametrize("code", _blocks())
def test_block_runs_as_written(code, tmp_path):
    first = code.splitlines()[0]
    if first.startswith("# needs:"):
        exports = [RUN_ELSEWHERE[path] for path in re.findall(r"exported/\w+", first) if path in RUN_ELSEWHERE]
        if exports:
            pytest.skip(exports[0])
        pytest.fail(f"no fixture makes what this block needs: {first}")
    (tmp_path / "block.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
