"""The GPU check's orchestrator (benchmarks/device_check.py) and evaluation helper, on the CPU: the parts that
must not fail on the one GPU call (deadline kills, JSON capture, budget scaling, the returned model copy).
`bash benchmarks/device.sh dry` runs the whole check end to end."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import device_check, evaluate_sets  # noqa: E402


@pytest.fixture
def check(tmp_path, monkeypatch):
    monkeypatch.setenv("KX_DRY_TMP", str(tmp_path / "tmp"))
    monkeypatch.setenv("KX_DRY_DATA", str(tmp_path / "data"))
    for name in ("KX_X2_BUDGET", "KX_X4_BUDGET", "KX_TRAIN_OVERHEAD_S", "KX_EVAL_S"):
        monkeypatch.delenv(name, raising=False)
    return lambda deadline, steps=device_check.STEPS: device_check.Check(
        "dry", str(tmp_path / "out"), deadline, list(steps), sys.executable)


def _bench(check):
    with open(check.bench) as f:
        return [json.loads(line) for line in f]


def test_a_process_past_its_limit_is_killed_and_its_json_lines_are_kept(check, tmp_path):
    c = check(60)
    os.makedirs(c.out)
    script = "import json, time; print(json.dumps({'x': 1}), flush=True); print('no newline', end='', flush=True); " \
             "time.sleep(30)"
    start = time.monotonic()
    status, seconds, records = c.run("sleepy", [sys.executable, "-c", script], cap=3, keep_json=True,
                                     extra={"benchmark": "probe"})
    assert status == "timeout" and time.monotonic() - start < 10
    assert records == [{"x": 1}]
    (line,) = _bench(c)
    assert line["x"] == 1 and line["benchmark"] == "probe" and line["step"] == "sleepy" and line["wall_s"] >= 3


def test_nothing_starts_past_the_deadline_and_failures_are_reported(check):
    c = check(0.5)
    os.makedirs(c.out)
    time.sleep(0.6)
    status, seconds, _ = c.run("late", [sys.executable, "-c", "print(1)"])
    assert status.startswith("skipped") and seconds == 0
    c.step_done("late", status, seconds)
    c.step_done("broken", "failed (rc 1)", 1.0)
    assert c.failed == ["broken"]


def test_recipe_budgets_shrink_together_to_fit_the_deadline(check, monkeypatch):
    monkeypatch.setenv("KX_X2_BUDGET", "240")
    monkeypatch.setenv("KX_X4_BUDGET", "150")
    monkeypatch.setenv("KX_TRAIN_OVERHEAD_S", "60")
    monkeypatch.setenv("KX_EVAL_S", "40")
    # 1000 s left: 390 s of training + 2 x 60 + 40 + 10 fit, nothing is scaled.
    asked, factor, plan = check(1000).recipe_budgets()
    assert asked == {"x2": 240, "x4": 150} and factor == 1.0
    # 365 s left: 365 - 170 = 195 s for training, half of the 390 asked.
    _, factor, plan = check(365).recipe_budgets()
    assert factor == pytest.approx(0.5, abs=0.01) and plan["fixed_s"] == 170
    _, factor, _ = check(100).recipe_budgets()
    assert factor == 0.0


def test_evaluate_sets_copies_the_model_without_optimizer_and_scores_each_set(tmp_path, capsys):
    import keras
    from PIL import Image

    from kx_vision.models import EDSR

    rng = np.random.default_rng(0)
    for name in ("SetA", "SetB"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(tmp_path / name / "im.webp",
                                                                                  lossless=True)
    model = EDSR(scale=2, num_blocks=1, num_filters=8)
    model.compile(optimizer=keras.optimizers.Adam(), loss="mae")
    model.fit(np.zeros((2, 8, 8, 3), "float32"), np.zeros((2, 16, 16, 3), "float32"), verbose=0)
    model.save(tmp_path / "model.keras")
    out = tmp_path / "bench.jsonl"
    rc = evaluate_sets.main(["--model", str(tmp_path / "model.keras"), "--scale", "2", "--data",
                             str(tmp_path / "SetA"), str(tmp_path / "SetB"), "--tag", "x2", "--copy-to",
                             str(tmp_path / "out" / "copy.keras"), "--out", str(out)])
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    copy, *evaluations = lines
    assert copy["benchmark"] == "model_copy"
    assert (tmp_path / "out" / "copy.keras").stat().st_size < 0.6 * (tmp_path / "model.keras").stat().st_size
    # Every set plain first (the targets), then the self-ensembles: a call cut at its deadline keeps the targets.
    assert [(e["set"], e["self_ensemble"]) for e in evaluations] == [
        ("SetA", False), ("SetB", False), ("SetA", True), ("SetB", True)]
    assert all(e["recipe"] == "x2" and e["images"] == 1 and np.isfinite(e["psnr"]) for e in evaluations)
    # The copy predicts what the trained model predicts.
    from kx_vision.models.loading import load_model

    x = rng.random((1, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(load_model(str(tmp_path / "out" / "copy.keras"))(x)),
                               np.asarray(model(x)), atol=1e-6)
