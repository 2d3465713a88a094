"""Data-parallel training with one setting, on the engine each backend already provides.

`distribute` (a config key of every `train` task):

- `none`: one device.
- `mirrored`: every accelerator of this host (or, with none, every logical CPU device).
  TensorFlow: `tf.distribute.MirroredStrategy`. JAX: `keras.distribution.DataParallel`.
- `multi_worker`: several hosts (or processes). JAX: `keras.distribution.initialize()` (the
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`
  variables) then `DataParallel` over the devices of all processes. TensorFlow:
  `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` (with two fixes to Keras 3.15's TensorFlow
  trainer, applied only under that strategy: see `kx_vision.training.keras_fixes`).
- `auto` (default): `multi_worker` when one of those cluster variables is set, `mirrored` when this host has
  several accelerators, otherwise `none`.

In every mode `data.batch_size` is the *global* batch: each step splits it across the replicas, so the
same config gives the same optimisation on 1 or N devices. Checkpoints hold plain Keras weights (no
per-device prefixes), so a run saved on N devices resumes on one and vice versa.

Datasets: every worker builds the same seeded pipeline; Keras splits each global batch between workers
(TensorFlow: auto-shard policy `DATA`, since the pipelines are made by Python code in tf.data and have no
files to divide; JAX: `rebatch` + `shard` by process). Validation batches are repeated once per replica, so every
replica evaluates the whole batch and all metrics (means, IoU confusion counts) are exact whatever the
batch sizes; validation then takes as long as on one device.

BatchNorm: on JAX the train step is one program over the global batch, so batch statistics are global;
on TensorFlow, BatchNorm layers all-reduce their statistics across replicas (`keras_fixes.two_pass_batchnorm`),
so the two agree and an N-device run matches a one-device one.

Where Keras itself falls short (its one-pass synchronized BatchNorm variance, its TensorFlow trainer under
`MultiWorkerMirroredStrategy`), the workarounds live in `kx_vision.training.keras_fixes`, guarded by the Keras versions
they were written for, each with a test that fails once Keras no longer needs it.
"""

import contextlib
import os

from kx_vision.errors import ConfigError
from kx_vision.tasks.base import DISTRIBUTE_MODES as MODES  # the choices of the config key `distribute`
from kx_vision.training import keras_fixes

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

    def prepare_fit(self, model):
        """Call after `model.compile`, inside `scope()`, before `model.fit`."""
        if self.mode == "multi_worker" and self.strategy is not None:
            keras_fixes.MultiWorkerFit.apply(model, self.strategy)
        return model

    def fitting(self, model):
        """Wrap `model.fit` in this (the scope of a Keras workaround under MultiWorkerMirroredStrategy)."""
        return keras_fixes.MultiWorkerFit.fitting(model)

    def prepare_model(self, model):
        """TensorFlow replicas: all-reduce BatchNorm statistics (JAX does so by construction)."""
        if self.strategy is not None and self.num_replicas > 1:
            for layer in _batchnorm_layers(model):
                keras_fixes.two_pass_batchnorm(layer)
        return model

    def __repr__(self):
        return (f"Distribution(mode={self.mode!r}, replicas={self.num_replicas}, "
                f"worker={self.worker_index}/{self.num_workers})")


def _batchnorm_layers(model):
    import keras

    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


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
    import tensorflow as tf

    if mode == "none":
        return Distribution("none")
    if mode == "mirrored":
        devices = tuple(d.name for d in _accelerators() or tf.config.list_logical_devices("CPU"))
        strategy = _cached_strategy(("mirrored", devices), lambda: tf.distribute.MirroredStrategy(list(devices)))
        return Distribution(mode, strategy.num_replicas_in_sync, strategy=strategy)
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("distribute=multi_worker on TensorFlow needs TF_CONFIG (the cluster's workers and "
                          "this worker's index); see the README's 'Several GPUs and hosts'")
    _check_tf_config(os.environ["TF_CONFIG"])
    strategy = _cached_strategy(("multi_worker", os.environ["TF_CONFIG"]), tf.distribute.MultiWorkerMirroredStrategy)
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    # TensorFlow's convention: the "chief" task if the cluster names one, else worker 0. Number the
    # workers so the chief is 0 (the only one writing into the output folder).
    if "chief" in cluster:
        index = 0 if resolver.task_type == "chief" else resolver.task_id + 1
    else:
        index = resolver.task_id
    workers = sum(len(tasks) for kind, tasks in cluster.items() if kind in ("chief", "worker"))
    return Distribution(mode, strategy.num_replicas_in_sync, worker_index=index, num_workers=workers,
                        strategy=strategy)


def _check_tf_config(text):
    """One clear error for a TF_CONFIG that TensorFlow would reject deep inside its cluster resolver."""
    import json

    example = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. {example}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"TF_CONFIG needs a 'cluster' and a 'task' object; expected e.g. {example}")
    tasks = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(tasks, list) or not isinstance(index, int) or not 0 <= index < len(tasks):
        raise ConfigError(f"TF_CONFIG's task {task} is not one of its cluster's tasks {cluster}")


_STRATEGIES = {}


def _cached_strategy(key, make):
    """One strategy per device set and process, reused by later runs: TensorFlow cannot run the collectives
    of a second MirroredStrategy in a process that ran a first one (the second run's first all-reduce fails),
    and a MultiWorkerMirroredStrategy may only be created once."""
    if key not in _STRATEGIES:
        _STRATEGIES[key] = make()
    return _STRATEGIES[key]


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
