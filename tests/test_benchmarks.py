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


def test_pipeline_rate_measuring_process_exits_after_its_line(tmp_path):
    # It hung after printing: the input iterator, left mid-stream with a numpy_function in flight, was freed only
    # by the collector at interpreter exit, where tf.data's threads can no longer run.
    import subprocess

    import keras
    import pytest

    from benchmarks import backend_env

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the hang was tf.data's: measured in the TensorFlow session")
    pipeline = "tf_data"
    sample = Path(__file__).resolve().parents[1] / "kx_vision" / "data" / "sample" / "train"
    argv = [sys.executable, "-m", "benchmarks.pipeline_rate", "--one", str(sample), pipeline, "cache", "input",
            "--batches", "5"]
    env = backend_env(pipeline)
    del env["KERAS_BACKEND"]  # as typed by a user: Keras's default backend (what left the cycle behind)
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json choosing another one
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert record["batches"] == 5 and record["images_per_s"] > 0


def test_pipeline_rate_measures_a_tfds_set_of_the_same_images(tmp_path):
    import keras
    import pytest

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tfds streams are tf_data's: measured in the TensorFlow session")
    pytest.importorskip("tensorflow_datasets")
    from benchmarks import pipeline_rate

    sample = Path(__file__).resolve().parents[1] / "kx_vision" / "data" / "sample" / "train"
    out = tmp_path / "rate.jsonl"
    pipeline_rate.main(["--source", "tfds", "--data", str(sample), "--modes", "stream", "--measures", "input",
                        "--batches", "2", "--out", str(out)])
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "error" not in record, record.get("error")
    assert record["files"] == "tfds:kx_bench_images:train (jpg,png)" and record["mode"] == "stream"
    assert record["pipeline"] == "tf_data" and record["images_per_s"] > 0


def test_decoders_compared_give_the_same_pixels():
    # The decode-cost comparison (BENCHMARKS.md) is of like with like: the same RGB arrays from each library.
    import numpy as np

    from benchmarks import pipeline_rate

    sample = Path(__file__).resolve().parents[1] / "kx_vision" / "data" / "sample" / "train"
    png = next(p for p in sorted(sample.iterdir()) if p.suffix == ".png").read_bytes()
    decoded = {name: decode(png) for name, decode in pipeline_rate.decoders().items()}
    assert len(decoded) >= 2
    for name, pixels in decoded.items():
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, name
        np.testing.assert_array_equal(pixels, decoded["pillow"], err_msg=name)
    record = pipeline_rate.decode_costs(sample, repeats=1)
    assert record["images"] == 6 and record["pillow_cpu_ms"] > 0


def test_edsr_train_reports_xla_cost_analysis_on_jax(tmp_path, capsys):
    import keras
    import pytest

    if keras.backend.backend() != "jax":
        pytest.skip("XLA's cost analysis of the training step is JAX's")
    out = tmp_path / "bench.jsonl"
    run.main(["--quick", "--only", "edsr_train", "--precision", "float32", "--configs", "2x16", "--steps", "2",
              "--repeats", "1", "--out", str(out)])
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "xla_cost_error" not in record, record.get("xla_cost_error")
    # What XLA counts is near the peer's analytic count of the same step (4 blocks of 32 filters: --quick).
    analytic = run.edsr_train_flops(2, 16, 2, 4, 32) / 1e9
    assert 0.6 * analytic < record["xla_gflop"] < 1.4 * analytic
    assert record["xla_flop_per_byte"] > 1
