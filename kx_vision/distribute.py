"""Data-parallel training with one setting, on the engine each backend already provides.

`distribute` (a config key of every `train` task):

- `none`: one device.
- `mirrored`: every accelerator of this host (or, with none, every logical CPU device).
  TensorFlow: `tf.distribute.MirroredStrategy`. JAX: `keras.distribution.DataParallel`.
- `multi_worker`: several hosts (or processes). JAX: `keras.distribution.initialize()` (the
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`
  variables) then `DataParallel` over the devices of all processes. TensorFlow: refused with a clear
  message, because `model.fit` under `MultiWorkerMirroredStrategy` fails inside Keras 3.15 (see
  `_setup_tensorflow`).
- `auto` (default): `multi_worker` when one of those cluster variables is set, `mirrored` when this host has
  several accelerators, otherwise `none`.

In every mode `data.batch_size` is the *global* batch: each step splits it across the replicas, so the
same config gives the same optimisation on 1 or N devices. Checkpoints hold plain Keras weights (no
per-device prefixes), so a run saved on N devices resumes on one and vice versa.

Datasets: every worker builds the same seeded pipeline; Keras splits each global batch between workers
(TensorFlow: auto-shard policy `DATA`, since the pipelines sample in-memory images and have no files to
divide; JAX: `rebatch` + `shard` by process). Validation batches are repeated once per replica, so every
replica evaluates the whole batch and all metrics (means, IoU confusion counts) are exact whatever the
batch sizes; validation then takes as long as on one device.

BatchNorm: on JAX the train step is one program over the global batch, so batch statistics are global;
on TensorFlow, BatchNorm layers are switched to `synchronized=True` (all-reduced statistics) so the two
agree, and a one-device run matches an N-device one. The flag is not saved with the model (it is
TensorFlow-only and would stop the file loading on JAX).
"""

import contextlib
import os

from kx_vision.errors import ConfigError

MODES = ("auto", "none", "mirrored", "multi_worker")
_CLUSTER_VARIABLES = ("TF_CONFIG", "KERAS_DISTRIBUTION_JOB_ADDRESSES")


class Distribution:
    """What the training loop needs to know about the chosen distribution."""

    def __init__(self, mode, num_replicas=1, worker_index=0, num_workers=1, strategy=None):
        self.mode = mode
        self.num_replicas = num_replicas
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.strategy = strategy  # TensorFlow only

    @property
    def is_chief(self):
        """Only the chief (worker 0) writes checkpoints, logs and the final model."""
        return self.worker_index == 0

    def scope(self):
        """Build the model, optimizer, loss and metrics inside this."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def check_batch_size(self, batch_size, key="data.batch_size"):
        if batch_size % self.num_replicas:
            raise ConfigError(
                f"config key '{key}' ({batch_size}) is the global batch and must be divisible by the "
                f"{self.num_replicas} replicas of distribute={self.mode}")

    def train_dataset(self, dataset):
        return _with_shard_policy(dataset) if self.num_replicas > 1 and _is_tf_data(dataset) else dataset

    def validation_dataset(self, dataset):
        """Repeat each validation batch once per replica (see the module docstring)."""
        if self.num_replicas == 1 or dataset is None:
            return dataset
        if not _is_tf_data(dataset):
            from kx_vision.data.arrays import Pairs

            if not isinstance(dataset, Pairs):
                return dataset  # random crops of the global batch size, which divides evenly
            return Pairs(dataset.pairs, repeats=dataset.repeats * self.num_replicas)
        import tensorflow as tf

        replicas = self.num_replicas

        def repeat(*batch):
            return tuple(tf.repeat(t, replicas, axis=0) for t in batch)

        return _with_shard_policy(dataset.map(repeat, num_parallel_calls=tf.data.AUTOTUNE))

    def prepare_model(self, model):
        """TensorFlow replicas: all-reduce BatchNorm statistics (JAX does so by construction)."""
        if self.strategy is not None and self.num_replicas > 1:
            for layer in _batchnorm_layers(model):
                layer.synchronized = True
        return model

    def __repr__(self):
        return (f"Distribution(mode={self.mode!r}, replicas={self.num_replicas}, "
                f"worker={self.worker_index}/{self.num_workers})")


def _batchnorm_layers(model):
    import keras

    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def portable_batchnorm(model):
    """Save with `synchronized=False` in BatchNorm configs: the flag is TensorFlow-only and would stop the
    file from loading on JAX."""
    synced = [layer for layer in _batchnorm_layers(model) if getattr(layer, "synchronized", False)]
    for layer in synced:
        layer.synchronized = False
    try:
        yield model
    finally:
        for layer in synced:
            layer.synchronized = True


def _is_tf_data(dataset):
    return type(dataset).__module__.startswith("tensorflow")


def _with_shard_policy(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def resolve_mode(mode):
    if mode not in MODES:
        raise ConfigError(f"config key 'distribute': unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if any(os.environ.get(name) for name in _CLUSTER_VARIABLES):
        return "multi_worker"
    return "mirrored" if len(_accelerators()) > 1 else "none"


def _accelerators():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [d for d in jax.local_devices() if d.platform != "cpu"]
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")


def setup(mode="auto"):
    """Choose and install the distribution for `mode`; call before building the model."""
    import keras

    mode = resolve_mode(mode)
    if keras.backend.backend() == "jax":
        return _setup_jax(mode)
    if keras.backend.backend() == "tensorflow":
        return _setup_tensorflow(mode)
    if mode != "none":
        raise ConfigError(f"distribute={mode} needs the tensorflow or jax backend")
    return Distribution("none")


def reset():
    """Back to one device (JAX keeps the distribution in a global; TensorFlow's lives in its scope)."""
    import keras

    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)


def _setup_tensorflow(mode):
    import keras
    import tensorflow as tf

    if mode == "none":
        return Distribution("none")
    if mode == "mirrored":
        devices = _accelerators() or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return Distribution(mode, strategy.num_replicas_in_sync, strategy=strategy)
    # Keras 3's TensorFlow trainer builds the model from the first batch with
    # `strategy.reduce("MEAN", batch)`; MultiWorkerMirroredStrategy rejects that nested PerReplica batch
    # ("Attempt to convert a value (PerReplica...) to a Tensor"), so model.fit cannot start (checked with
    # Keras 3.15.1 and TensorFlow 2.21). Say so rather than fail deep inside fit.
    raise ConfigError("distribute=multi_worker does not work on the TensorFlow backend with this Keras "
                      f"({keras.__version__}): model.fit fails under MultiWorkerMirroredStrategy "
                      "(keras/src/backend/tensorflow/trainer.py, _maybe_symbolic_build). Train on several "
                      "hosts with KERAS_BACKEND=jax, or on one host with distribute=mirrored")


def _setup_jax(mode):
    import jax
    import keras

    if mode == "none":
        keras.distribution.set_distribution(None)
        return Distribution("none")
    if mode == "multi_worker":
        if not os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            raise ConfigError("distribute=multi_worker on JAX needs KERAS_DISTRIBUTION_JOB_ADDRESSES (the "
                              "coordinator's host:port), KERAS_DISTRIBUTION_NUM_PROCESSES and "
                              "KERAS_DISTRIBUTION_PROCESS_ID; see the README's 'Several GPUs and hosts'")
        if not jax.distributed.is_initialized():
            keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Distribution(mode, len(devices), worker_index=jax.process_index(), num_workers=jax.process_count())
