"""`benchmarks/deploy_speed.py` runs every path on a tiny EDSR (`--quick`): each measured path reports output
megapixels/s and peak RSS per case and agrees with Keras; PyTorch's copy of the network, where PyTorch is installed,
computes what Keras computes. Its real run (2 cores, 512 and 2048 px) is for BENCHMARKS.md, not for tests."""

import importlib.util
import json
import subprocess
import sys

import keras
import pytest
from conftest import REPO

pytest.importorskip("tensorflow")  # the benchmark prepares its exports on TensorFlow
for module in ("onnxruntime", "ai_edge_litert", "openvino"):
    pytest.importorskip(module, reason="the export runtimes are the optional extra: pip install -e '.[export]'")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the benchmark runs each backend in a process of its own: once is enough")
def test_quick_run_measures_every_path():
    # 15 processes (the exports, then each path and case), torch.compile's compilation: minutes on a busy CPU
    done = subprocess.run([sys.executable, "-m", "benchmarks.deploy_speed", "--quick", "--repeats", "1",
                           "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_path = {}
    for record in records:
        assert "failed" not in record, record
        by_path.setdefault(record["path"], []).append(record)
    assert set(by_path) == {"keras_tensorflow", "keras_jax", "onnx", "litert", "openvino", "torch_eager",
                            "torch_compile"}
    torch = importlib.util.find_spec("torch") is not None
    for path, found in by_path.items():
        if "skipped" in found[0]:
            assert len(found) == 1, found  # one line for the path, not one per case
            reason = found[0]["skipped"]
            assert (not torch and path.startswith("torch") and "pip install torch" in reason) or (
                path == "torch_compile" and "torch.compile does not run here" in reason), found
            continue
        assert [r["case"] for r in found] == ["whole_48", "tiled_96"]
        for record in found:
            assert record["output_mpix_per_s"] > 0 and record["peak_rss_mib"] >= record["rss_loaded_mib"] > 0
            assert record["max_difference_vs_keras"] < 1e-4, record  # the same network, whatever runs it
    if torch:  # PyTorch's copy (transposed kernels, permuted pixel-shuffle channels) computes what Keras computes
        assert "seconds" in by_path["torch_eager"][0]
    assert "| tiled_96 | onnx |" in done.stdout and "fastest: " in done.stdout
    assert "FASTEST_FIRST = (" in done.stdout and "python -m benchmarks.deploy_speed --quick" in done.stdout
