"""Subprocess side of `test_distribute.py`: the device count is fixed when a backend starts, so each
distributed scenario runs in a fresh process with two devices (TensorFlow: two logical CPUs; JAX:
`--xla_force_host_platform_device_count=2`, set by the test) or as one of two workers.

    python tests/distribute_worker.py equivalence edsr unet:pixel_shuffle
    python tests/distribute_worker.py resume DATA_FOLDER OUT
    python tests/distribute_worker.py worker DATA_FOLDER OUT   (with TF_CONFIG / KERAS_DISTRIBUTION_*)
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() == "tensorflow" and sys.argv[1] != "worker":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tests_helpers import CrashAfterFirstEpoch, DumpWeights, EpochsSeen, tiny_config  # noqa: E402

from kx_vision.tasks import superres  # noqa: E402
from kx_vision.training import distribute, trainer  # noqa: E402


def build(name, upsampling="pixel_shuffle"):
    from seg_helpers import tiny_backbone

    from kx_vision.losses import SegmentationLoss
    from kx_vision.models import EDSR, UNet

    if name == "edsr":
        return EDSR(scale=2, num_blocks=2, num_filters=8), keras.losses.MeanAbsoluteError(), 0.1
    return (UNet(num_classes=3, backbone=tiny_backbone(stages=3, width=8), max_filters=8, upsampling=upsampling),
            SegmentationLoss(3), 0.01)


def _max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


def _norm_diff(a, b):
    return float(np.sqrt(sum(np.sum((u.astype("float64") - v) ** 2) for u, v in zip(a, b))))


def equivalence(name, upsampling="pixel_shuffle", steps=3, batch=4):
    """The same SGD steps on one device and on two (same start, same global batches), in the dtype
    `KX_TEST_DTYPE` names (default float32).

    `relative_diff`: L2 distance between the two runs' final weights over the L2 size of the one-device
    run's change. On TensorFlow the U-Net is also trained on two devices without BatchNorm synchronisation
    (`relative_diff_unsynchronized`), the mistake the comparison must catch.
    """
    import tensorflow as tf

    dtype = os.environ.get("KX_TEST_DTYPE", "float32")
    keras.config.set_dtype_policy(dtype)
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, 32, 32, 3)).astype("float32").astype(dtype)
    y = (rng.random((steps * batch, 64, 64, 3)).astype("float32").astype(dtype) if name == "edsr"
         else rng.integers(0, 3, (steps * batch, 32, 32, 1)))
    modes = ["none", "mirrored"]
    if name == "unet" and keras.backend.backend() == "tensorflow":
        modes.append("unsynchronized")
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    final, replicas = {}, {}
    for mode in modes:
        dist = distribute.setup("mirrored" if mode == "unsynchronized" else mode)
        keras.utils.set_random_seed(0)
        with dist.scope():
            model, loss, learning_rate = build(name, upsampling)
            if mode != "unsynchronized":
                dist.prepare_model(model)
            if mode == "none":
                start = [keras.ops.convert_to_numpy(w) for w in model.weights]
                paths = [w.path for w in model.weights]
            model.set_weights(start)
            model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss, jit_compile=False)  # faster here
        model.fit(dist.train_dataset(batches), epochs=1, verbose=0, shuffle=False)
        final[mode] = [keras.ops.convert_to_numpy(w) for w in model.weights]
        replicas[mode] = dist.num_replicas
        assert [w.path for w in model.weights] == paths
        distribute.reset()
    change = _norm_diff(final["none"], start)
    result = {"replicas": [replicas["none"], replicas["mirrored"]], "max_update": _max_diff(final["none"], start),
              "max_diff": _max_diff(final["none"], final["mirrored"]),
              "relative_diff": _norm_diff(final["none"], final["mirrored"]) / change}
    if "unsynchronized" in final:
        result["relative_diff_unsynchronized"] = _norm_diff(final["none"], final["unsynchronized"]) / change
    return result


def equivalences(*specs):
    """`equivalence` for several `model[:upsampling]` specs in one process (one backend start-up)."""
    print(json.dumps({spec: equivalence(*spec.split(":")) for spec in specs}))


def resumes(folder, out):
    """`resume` both ways: from two devices to one, and from one to two (one run of TensorFlow's
    MirroredStrategy after another in the same process, as a notebook would)."""
    print(json.dumps({f"{first}-{then}": resume(folder, os.path.join(out, f"{first}-{then}"), first, then)
                      for first, then in (("mirrored", "none"), ("none", "mirrored"))}))


def resume(folder, out, first, then):
    """Interrupted after epoch 1 with `distribute=first`, resumed (and finished) with `distribute=then`."""
    try:
        trainer.fit(superres.SuperResTask, tiny_config(folder, distribute=first), out, verbose=0,
                  extra_callbacks=[CrashAfterFirstEpoch()])
    except KeyboardInterrupt:
        pass
    checkpoint = keras.saving.load_model(os.path.join(out, "checkpoints", "last.keras"))
    epochs = EpochsSeen()
    model, summary = trainer.fit(superres.SuperResTask, tiny_config(folder, distribute=then), out, verbose=0,
                               extra_callbacks=[epochs])
    return {"resumed_epochs": epochs.seen, "psnr": summary["psnr"], "checkpoint_params": checkpoint.count_params(),
            "params": model.count_params()}


def worker(folder, out):
    """One of two workers of a multi-worker run sharing the output folder."""
    if "TF_CONFIG" in os.environ:
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    else:
        index = int(os.environ["KERAS_DISTRIBUTION_PROCESS_ID"])
    seen = {}
    setup = distribute.setup

    def recording_setup(mode):
        seen["dist"] = setup(mode)
        return seen["dist"]

    distribute.setup = recording_setup
    trainer.fit(superres.SuperResTask, tiny_config(folder, distribute="multi_worker", epochs=1), out, verbose=0,
              extra_callbacks=[DumpWeights(out, f"worker{index}")])
    print(json.dumps({"worker": index, "replicas": seen["dist"].num_replicas, "chief": seen["dist"].is_chief}))


def worker_unfixed(folder, out):
    """`worker` without kx_vision.training.keras_fixes.MultiWorkerFit: fails while Keras still needs it."""
    from kx_vision.training import keras_fixes

    keras_fixes.MultiWorkerFit.apply = classmethod(lambda cls, model, strategy: model)
    worker(folder, out)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"equivalence": equivalences, "resume": resumes, "worker": worker, "worker-unfixed": worker_unfixed}[command](*args)
