"""Python called from inside tf.data pipelines, stopped before the interpreter exits.

A tf.data iterator still alive when Python shuts down (a script that iterates `data.train` and ends, a notebook
kernel that stops) is destroyed during interpreter finalization. If one of its threads is then inside a
`tf.numpy_function` or a `Dataset.from_generator` generator, that thread can never take the GIL again, and the
destruction waits for it forever: the process hangs after its last line (seen in about one run in three of a
script that keeps an iterator of `data.train`).

`numpy_function` and `from_generator` below run their Python through one gate that an exit hook closes (it
runs before finalization, while other threads can still take the GIL, and before Python's thread pools stop:
see `_register`): calls already running finish, later ones return at once (the pipeline fails or ends; nobody
reads it any more), and the hook waits until no call has come for a moment, i.e. until the pipeline's buffers
are full and its threads are idle.
TensorFlow is imported only by these functions: this module is safe to import without it.
"""

import atexit
import threading
import time

_QUIET_S = 0.1  # no call for this long: the pipelines' threads are idle
_WAIT_S = 10.0  # at most this long at exit (a running call decoding a window of large images)

_lock = threading.Lock()
_state = {"open": True, "running": 0, "last": 0.0, "registered": False}


def _enter():
    """Count a call in; False (nothing counted) once the gate is closed."""
    with _lock:
        _state["last"] = time.monotonic()
        if not _state["open"]:
            return False
        _state["running"] += 1
        return True


def _leave():
    with _lock:
        _state["running"] -= 1
        _state["last"] = time.monotonic()


def _register():
    """Close the gate at exit, before Python's thread pools stop. `concurrent.futures` stops its pools' workers
    in a `threading._register_atexit` hook (at `threading._shutdown`, before `atexit` hooks run), leaving queued
    jobs pending forever: a pipeline call then waiting for one (a `PatchStream` window being decoded, a
    `PairReader.stream` step) would never return. These hooks run last-registered first, so registering ours
    the same way, after that module's, lets running calls finish while the workers are still there."""
    import concurrent.futures.thread  # noqa: F401 - its exit hook registered first, so ours runs before it

    with _lock:
        if _state["registered"]:
            return
        _state["registered"] = True
    register = getattr(threading, "_register_atexit", None)  # CPython 3.9+; private, as concurrent.futures uses it
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(close)
    except RuntimeError:  # not this CPython, or the interpreter is already shutting down
        atexit.register(close)


def close(wait_s=_WAIT_S):
    """Close the gate: calls running finish, new ones end their pipeline at once. Returns once
    no call has been running or started for `_QUIET_S` seconds, or after `wait_s`; whether it got quiet.
    Called at interpreter exit; `reopen()` undoes it (tests)."""
    with _lock:
        _state["open"] = False
    deadline = time.monotonic() + wait_s
    while True:
        with _lock:
            quiet = _state["running"] == 0 and time.monotonic() - _state["last"] >= _QUIET_S
        if quiet:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_QUIET_S / 4)


def reopen():
    with _lock:
        _state["open"] = True


def is_open():
    with _lock:
        return _state["open"]


def numpy_function(func, inp, Tout, name=None):
    """`tf.numpy_function(func, inp, Tout, stateful=True)` with `func` run through the gate."""
    import tensorflow as tf

    _register()

    def gated(*args):
        if not _enter():
            # As end of input (OutOfRange): TensorFlow logs any other error from a py_func with its traceback.
            raise StopIteration
        try:
            return func(*args)
        finally:
            _leave()

    return tf.numpy_function(gated, inp, Tout, stateful=True, name=name)


def from_generator(generator, output_signature):
    """`tf.data.Dataset.from_generator(generator, output_signature=...)` whose generator ends at once when
    the gate is closed; each of its steps runs through the gate."""
    import tensorflow as tf

    _register()

    def gated():
        if not _enter():
            return
        try:
            items = iter(generator())
        finally:
            _leave()
        while _enter():
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                _leave()
            yield item

    return tf.data.Dataset.from_generator(gated, output_signature=output_signature)
