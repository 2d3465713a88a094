"""The benchmark harness runs and counts FLOPs as the PyTorch peer does (timings live in BENCHMARKS.md)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run  # noqa: E402


def test_edsr_flops_match_the_peer_figure():
    # ../shared/bench/README.md: one batch-64 / LR-96 training step of the EDSR baseline is 4.86 TFLOP.
    assert round(run.edsr_train_flops(64, 96) / 1e12, 2) == 4.86


def test_harness_prints_one_json_line_per_measurement(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    run.main(["--quick", "--only", "sr_infer", "--precision", "float32", "--repeats", "1", "--out", str(out)])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]
    (record,) = printed
    assert record["benchmark"] == "sr_infer" and record["step_ms"] > 0 and record["backend"] and record["device"]
