"""A new task is one file: the README's denoising example (tests/denoise_task.py) registered and trained."""

import json
from pathlib import Path

import pytest

from kx_vision import tasks, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def denoise(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "denoise", "denoise_task")  # tests/ is on sys.path
    import denoise_task

    return denoise_task


def test_the_readme_shows_the_tested_file():
    readme = (REPO / "README.md").read_text()
    assert (REPO / "tests" / "denoise_task.py").read_text() in readme


def test_a_new_task_trains_through_the_cli(denoise, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["denoise", "--help"])
    assert "data.noise = 0.1" in capsys.readouterr().out
    args = ["denoise", "--output", str(tmp_path / "run"), "--set", "epochs=2", "--set", "steps_per_epoch=3",
            "--set", "data.batch_size=4", "--set", "data.noise=0.2", "--set", "optimizer.warmup_steps=0"]
    assert train.main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["monitor"] == "val_psnr" and summary["best"]["epoch"] in (1, 2)
    assert (tmp_path / "run" / "checkpoints" / "best.keras").is_file()
    assert train.main(args) == 0  # the finished run is left alone, as for every task
    assert "holds a finished run of 2 epochs" in capsys.readouterr().out
