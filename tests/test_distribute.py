"""`distribute`: the same training on one device and on two, checkpoints moving between device
counts, and a two-process multi-worker run. Each scenario runs in a fresh subprocess
(`distribute_worker.py`), because a backend's device count is fixed when it starts."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from tests_helpers import DumpWeights, tiny_config

pytest.importorskip("tensorflow")  # the tf.data pipelines

WORKER = Path(__file__).parent / "distribute_worker.py"
BACKEND = keras.backend.backend()
# SGD steps on one device and on two, from identical weights and global batches, differ only in the order
# of sums (per-replica gradients and BatchNorm statistics all-reduced). In float64 that is worth ~1e-15 of
# the training change, so TensorFlow runs the comparison in float64 and allows 1e-9. In float32 it is ~1e-6,
# but now and then rounding also flips a ReLU whose input sits at zero, which moves that step for real (up
# to 1.5e-3 measured on the U-Net). JAX runs in float32 (on CPU its float64 all-reduce hangs at the
# fast-compile optimisation level the tests use, and full optimisation compiles for minutes) and allows
# 1e-2: its possible mistakes (a batch not split, a loss scaled by the replica count, replicas fed the same
# data) are O(1), and BatchNorm is global by construction. On TensorFlow the mistake to catch, per-replica
# BatchNorm statistics, is 4e-2 to 9e-2 off and checked below.
DTYPE = "float64" if BACKEND == "tensorflow" else "float32"
RELATIVE_TOLERANCE = {"float64": 1e-9, "float32": 1e-2}[DTYPE]

def _env(**extra):
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3",
           # This checkout's kx_vision first, not whichever one the venv installed (a second worktree).
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
    env.update(extra)
    return env


def _two_devices_env(tmp_path):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    if BACKEND == "jax":
        # XLA's CPU all-reduce aborts the process when the two virtual devices' threads do not meet within 40 s,
        # which a 2-core machine running both suites at once sometimes exceeds. (JAX's XLA only: TensorFlow's
        # would refuse the flag.)
        flags += " --xla_cpu_collective_call_terminate_timeout_seconds=90"
    return _env(XLA_FLAGS=flags, KX_TEST_TMP=str(tmp_path))


# How XLA's CPU all-reduce ends a process whose virtual devices never met (see `_run`).
RENDEZVOUS_ABORT = "Expected 2 threads to join the rendezvous"


def _run(args, env, timeout=600):
    for attempt in range(2):
        done = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        # A worker XLA aborted in its CPU all-reduce (the two virtual devices' threads never met: a scheduling
        # stall of the CPU runtime, seen once on a loaded 2-core machine) runs once more; any other failure fails.
        if done.returncode == 0 or RENDEZVOUS_ABORT not in done.stderr or attempt:
            break
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SPECS = ["edsr", "unet:pixel_shuffle"]  # the U-Net as built by default (pixel-shuffle decoder, last_cross)


@pytest.fixture(scope="module")
def equivalences(tmp_path_factory):
    # All cases in one process, one after the other: this also shows that several runs on one
    # MirroredStrategy work in one TensorFlow process (kx_vision.training.distribute reuses the strategy).
    env = {**_two_devices_env(tmp_path_factory.mktemp("equivalence")), "KX_TEST_DTYPE": DTYPE}
    return _run(["equivalence", *SPECS], env)


@pytest.mark.parametrize("spec", SPECS)
def test_two_devices_train_like_one(spec, equivalences):
    result = equivalences[spec]
    assert result["replicas"] == [1, 2]
    assert result["max_update"] > 1e-3  # the steps really trained
    assert result["relative_diff"] < RELATIVE_TOLERANCE, result
    if "relative_diff_unsynchronized" in result:  # the comparison would catch unsynchronised BatchNorm
        assert result["relative_diff_unsynchronized"] > 1e-2, result


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    from conftest import make_image_folders

    root = tmp_path_factory.mktemp("resume")
    return root, _run(["resume", str(make_image_folders(root / "data")), str(root / "runs")],
                      _two_devices_env(root))


@pytest.mark.parametrize("first, then", [("mirrored", "none"), ("none", "mirrored")])
def test_run_resumes_on_another_device_count(first, then, resumed):
    root, results = resumed
    result, out = results[f"{first}-{then}"], root / "runs" / f"{first}-{then}"
    assert result["resumed_epochs"] == [1]  # epoch 0, trained with `first`, was not trained again
    assert result["checkpoint_params"] == result["params"]
    assert np.isfinite(result["psnr"])
    assert (out / "model.keras").is_file() and not (out / ".workers").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_env(i, ports):
    if BACKEND == "tensorflow":
        workers = [f"127.0.0.1:{port}" for port in ports]
        return _env(TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
    return _env(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(i))


def test_two_workers_on_localhost_agree(folders, tmp_path):
    """TensorFlow: MultiWorkerMirroredStrategy from TF_CONFIG; JAX: keras.distribution.initialize."""
    out = tmp_path / "run"
    ports = [_free_port(), _free_port()]
    workers = [subprocess.Popen([sys.executable, str(WORKER), "worker", str(folders), str(out)],
                                env=_cluster_env(i, ports), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr[-4000:]
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [r["replicas"] for r in reports] == [2, 2] and [r["chief"] for r in reports] == [True, False]
    first, second = (np.load(out / f"final_worker{i}.npz") for i in range(2))
    initial = np.load(out / "initial_worker0.npz")
    assert max(float(np.abs(first[k] - initial[k]).max()) for k in first.files) > 1e-3  # it trained
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    # ... and they trained like one device taking the same global batches
    from kx_vision.tasks import superres
    from kx_vision.training import trainer

    alone = tmp_path / "alone"
    trainer.fit(superres.SuperResTask, tiny_config(folders, distribute="none", epochs=1), str(alone), verbose=0,
              extra_callbacks=[DumpWeights(str(alone), "worker0")])
    single = np.load(alone / "final_worker0.npz")
    for key in first.files:
        np.testing.assert_allclose(first[key], single[key], rtol=0, atol=1e-5)  # EDSR: no ReLU flips seen
    # Only the chief wrote the run's files; the other worker's scratch folder is gone.
    assert {p.name for p in out.iterdir()} >= {"model.keras", "history.csv", "checkpoints", "config.yaml"}
    assert not (out / ".workers").exists()
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_psnr" in history[0]  # one epoch, logged once, with validation


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a workaround for Keras's TensorFlow trainer")
def test_keras_still_needs_the_multi_worker_fixes(folders, tmp_path):
    """Without kx_vision.training.keras_fixes.MultiWorkerFit, Keras's TensorFlow trainer cannot start `fit` under
    MultiWorkerMirroredStrategy. If this fails, Keras fixed it: delete MultiWorkerFit."""
    ports = [_free_port(), _free_port()]
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]  # files: a full pipe would block a worker
    workers = [subprocess.Popen([sys.executable, str(WORKER), "worker-unfixed", str(folders), str(tmp_path / "run")],
                                env=_cluster_env(i, ports), stdout=log, stderr=subprocess.STDOUT, text=True)
               for i, log in enumerate(logs)]
    try:
        # Once one worker has failed, its peer may wait for it in a collective until a long timeout: give it
        # a short grace, then stop it (its output up to then is kept).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            time.sleep(0.2)
        grace = min(deadline, time.monotonic() + 20)
        while time.monotonic() < grace and any(w.poll() is None for w in workers):
            time.sleep(0.2)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    errors = ""
    for log in logs:
        log.seek(0)
        errors += log.read()
        log.close()
    assert all(w.returncode != 0 for w in workers)
    assert "PerReplica" in errors or "Invalid reduction dimension" in errors, errors[-3000:]


def test_bad_distribute_settings_are_explained(folders, tmp_path, monkeypatch):
    from kx_vision import config as config_lib
    from kx_vision.errors import ConfigError
    from kx_vision.tasks import superres
    from kx_vision.training import distribute

    with pytest.raises(ConfigError, match="unknown mode 'mirorred'"):
        distribute.resolve_mode("mirorred")
    if BACKEND == "tensorflow":
        monkeypatch.delenv("TF_CONFIG", raising=False)
        with pytest.raises(ConfigError, match="needs TF_CONFIG"):
            distribute.setup("multi_worker")
        for bad, message in [("{'cluster': 1}", "not valid JSON"), ('{"cluster": {}}', "needs a 'cluster' and a 'task'"),
                             ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                              "is not one of its cluster's tasks")]:
            monkeypatch.setenv("TF_CONFIG", bad)
            with pytest.raises(ConfigError, match=message):
                distribute.setup("multi_worker")
        monkeypatch.delenv("TF_CONFIG")
        # tests run TensorFlow over two logical CPUs (conftest): a global batch of 3 cannot split
        config = config_lib.load(superres.SuperResConfig, None, [
            f"data.train={folders / 'train'}", f"data.val={folders / 'val'}", "data.batch_size=3",
            "data.patch_size=16", "distribute=mirrored"])
        from kx_vision.training import trainer

        with pytest.raises(ConfigError, match="'data.batch_size' \\(3\\) is the global batch"):
            trainer.fit(superres.SuperResTask, config, str(tmp_path / "run"), verbose=0)
    else:
        monkeypatch.delenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", raising=False)
        with pytest.raises(ConfigError, match="needs KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            distribute.setup("multi_worker")
