"""Workarounds for Keras shortcomings, in one place, for the Keras versions they were written for.

Each one touches private Keras code, so:

- it is applied only where it is needed (TensorFlow strategies, and only while a model trains under them),
  never at import time;
- it is guarded by `WRITTEN_FOR`, the Keras versions it was written and tested against (`pyproject.toml`
  pins the same range); with another version it is not applied and a warning says so once;
- `tests/test_keras_fixes.py` checks that each is still needed: those tests fail once Keras behaves, telling
  us to delete the workaround.

1. `two_pass_batchnorm`: BatchNorm statistics over the global batch under a TensorFlow strategy, with the
   variance computed in two passes. Keras's own `synchronized=True` computes E[x^2] - E[x]^2, which in
   float32 loses digits when |mean| >> std (measured on a U-Net: ~3e-6 relative in the activations, enough
   to flip ReLUs), and `synchronized` is a TensorFlow-only flag that would stop saved files loading on JAX.
2. `MultiWorkerFit`: Keras's TensorFlow trainer cannot start `fit` under `MultiWorkerMirroredStrategy`.
"""

import contextlib
import warnings

# (first, last) Keras minor versions these workarounds were written for, inclusive.
WRITTEN_FOR = ((3, 14), (3, 15))
_warned = set()


def keras_version():
    import keras

    major, minor = (int(part) for part in keras.version().split(".")[:2])
    return major, minor


def supported(what):
    """Whether the running Keras is one `what` was written for; warns once if not."""
    version = keras_version()
    if WRITTEN_FOR[0] <= version <= WRITTEN_FOR[1]:
        return True
    if what not in _warned:
        _warned.add(what)
        low, high = (".".join(map(str, v)) for v in WRITTEN_FOR)
        warnings.warn(f"kx_vision's workaround '{what}' was written for Keras {low} to {high}, not "
                      f"{'.'.join(map(str, version))}: it is not applied. If training fails or disagrees "
                      "across devices, use a Keras version in that range.", stacklevel=3)
    return False


def two_pass_batchnorm(layer):
    """Make a BatchNorm layer use the statistics of the global batch when training under a TensorFlow
    strategy: mean first, then the mean squared deviation, each all-reduced over the replicas (two passes
    agree with one device's `tf.nn.moments` to rounding). The override lives on this layer instance only
    and is not saved; outside a replica context, or with one replica, Keras's own code runs."""
    if not supported("two_pass_batchnorm"):
        return
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


class MultiWorkerFit:
    """Two fixes that let `model.fit` run under `MultiWorkerMirroredStrategy` with Keras's TensorFlow
    trainer (`keras/src/backend/tensorflow/trainer.py`), which otherwise fails before the first step:

    1. `_maybe_symbolic_build` builds the model from the first batch reduced with
       `strategy.reduce("MEAN", batch, axis=None)`; across workers that nested `PerReplica` batch cannot be
       converted ("Attempt to convert a value (PerReplica...) to a Tensor"). We build the model, loss,
       metrics and optimizer symbolically ourselves, from one replica's batch, and make that method a
       no-op for this model.
    2. `reduce_per_replica` averages every step output across workers with `strategy.reduce("MEAN", v,
       axis=0)`, which fails on the scalar losses and metrics ("Invalid reduction dimension 0 for input with
       0 dimensions"). While a fixed model trains (`fitting(model)`), scalars are reduced with `axis=None`
       (the mean over replicas, what MirroredStrategy gives on one host); everything else goes to Keras
       unchanged, and Keras's function is put back afterwards.
    """

    @classmethod
    def apply(cls, model, strategy):
        """Call after `model.compile`, inside the strategy's scope; then train within `fitting(model)`."""
        if not supported("MultiWorkerFit"):
            return model

        def symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = _one_replica(strategy, next(batches))
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        model._maybe_symbolic_build = symbolic_build
        model._kx_vision_multi_worker_strategy = strategy
        return model

    @staticmethod
    @contextlib.contextmanager
    def fitting(model):
        """Scalar logs reduced with `axis=None` while `model` (fixed by `apply`) trains."""
        strategy = getattr(model, "_kx_vision_multi_worker_strategy", None)
        if strategy is None:
            yield
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
        try:
            yield
        finally:
            trainer.reduce_per_replica = original


def _first_replica(strategy, value):
    """This worker's first replica's part of a per-replica value (the value itself for a plain tensor)."""
    return strategy.experimental_local_results(value)[0]


def _one_replica(strategy, batch):
    from keras.src import tree

    return tree.map_structure(lambda v: None if v is None else _first_replica(strategy, v), batch)
