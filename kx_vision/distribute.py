"""Data-parallel training with one setting, on the engine each backend already provides.

`distribute` (a config key of every `train` task):

- `none`: one device.
- `mirrored`: every accelerator of this host (or, with none, every logical CPU device).
  TensorFlow: `tf.distribute.MirroredStrategy`. JAX: `keras.distribution.DataParallel`.
- `multi_worker`: several hosts (or processes). JAX: `keras.distribution.initialize()` (the
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`
  variables) then `DataParallel` over the devices of all processes. TensorFlow:
  `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` (with two fixes to Keras 3.15's TensorFlow
  trainer, applied only under that strategy: see `_KerasMultiWorkerFixes`).
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
on TensorFlow, BatchNorm layers all-reduce their statistics across replicas (`_synchronize_batchnorm`), so
the two agree and an N-device run matches a one-device one.
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

    def prepare_fit(self, model):
        """Call after `model.compile`, inside `scope()`, before `model.fit`."""
        if self.mode == "multi_worker" and self.strategy is not None:
            _KerasMultiWorkerFixes.apply(model, self.strategy)
        return model

    def prepare_model(self, model):
        """TensorFlow replicas: all-reduce BatchNorm statistics (JAX does so by construction)."""
        if self.strategy is not None and self.num_replicas > 1:
            for layer in _batchnorm_layers(model):
                _synchronize_batchnorm(layer)
        return model

    def __repr__(self):
        return (f"Distribution(mode={self.mode!r}, replicas={self.num_replicas}, "
                f"worker={self.worker_index}/{self.num_workers})")


def _batchnorm_layers(model):
    import keras

    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def _synchronize_batchnorm(layer):
    """Make a BatchNorm layer use the statistics of the global batch when training under a TensorFlow
    strategy: mean first, then the mean squared deviation, each all-reduced over the replicas.

    Not Keras's `synchronized=True`: it computes the variance in one pass, as E[x^2] - E[x]^2, which in
    float32 loses digits when |mean| >> std. On a U-Net that was ~3e-6 relative in the activations, enough
    to flip the odd ReLU and change one step's gradients by 1e-3 relative (measured). Two passes agree with
    one device's `tf.nn.moments` to rounding. It also leaves the saved config alone (`synchronized` is
    TensorFlow-only and would stop the file loading on JAX). The override lives on the layer instance only.
    """
    import tensorflow as tf

    keras_moments = layer._moments

    def moments(inputs, mask):
        context = tf.distribute.get_replica_context()
        if mask is not None or context is None or context.num_replicas_in_sync == 1:
            return keras_moments(inputs, mask)
        axes = list(layer._reduction_axes)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(inputs, axes, keepdims=True))
        mean = total / count
        squares = tf.reduce_sum(tf.math.squared_difference(inputs, mean), axes, keepdims=True)
        variance = context.all_reduce(tf.distribute.ReduceOp.SUM, squares) / count
        return tf.squeeze(mean, axes), tf.squeeze(variance, axes)

    layer._moments = moments


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


class _KerasMultiWorkerFixes:
    """Two fixes that let `model.fit` run under `MultiWorkerMirroredStrategy` with Keras 3.15's TensorFlow
    trainer (`keras/src/backend/tensorflow/trainer.py`), which otherwise fails before the first step:

    1. `_maybe_symbolic_build` builds the model from the first batch reduced with
       `strategy.reduce("MEAN", batch, axis=None)`; across workers that nested `PerReplica` batch cannot be
       converted ("Attempt to convert a value (PerReplica...) to a Tensor"). We build the model, loss,
       metrics and optimizer symbolically ourselves, from one replica's batch, and make that method a
       no-op for this model.
    2. `reduce_per_replica` averages every step output across workers with `strategy.reduce("MEAN", v,
       axis=0)`, which fails on the scalar losses and metrics ("Invalid reduction dimension 0 for input with
       0 dimensions"). We reduce scalars with `axis=None` (the mean over replicas, what MirroredStrategy
       gives on one host) and hand everything else to Keras unchanged.

    Both touch private Keras code, so they are applied only under `MultiWorkerMirroredStrategy`; the
    two-worker test in tests/test_distribute.py shows the result trains like JAX's multi-process run.
    """

    _patched = False

    @classmethod
    def apply(cls, model, strategy):
        cls._patch_reduce_per_replica()

        def symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = _one_replica(strategy, next(batches))
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        model._maybe_symbolic_build = symbolic_build

    @classmethod
    def _patch_reduce_per_replica(cls):
        if cls._patched:
            return
        import tensorflow as tf
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer

        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or reduction not in (
                    "auto", "mean"):
                return original(values, strategy, reduction)

            def reduce(value):
                if _first_replica(strategy, value).shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return tree.map_structure(reduce, values)

        trainer.reduce_per_replica = reduce_per_replica
        cls._patched = True


def _first_replica(strategy, value):
    """This worker's first replica's part of a per-replica value (the value itself for a plain tensor)."""
    return strategy.experimental_local_results(value)[0]


def _one_replica(strategy, batch):
    from keras.src import tree

    return tree.map_structure(lambda v: None if v is None else _first_replica(strategy, v), batch)


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
