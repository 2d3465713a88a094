"""Export a `.keras` model as a TensorFlow SavedModel for TF Serving:
`python -m kx_vision.export MODEL.keras OUT_DIR [--format tf_saved_model] [--force]`.

Endpoints (any batch, height and width the model takes):
- `serve` (the default signature): float32 RGB in [0, 1], shape `(N, H, W, 3)` — exactly the Keras
  model's input. Image models (EDSR, StyleTransferNet) return the image clipped to [0, 1]; segmentation
  models return their per-pixel class probabilities as they are (already in [0, 1]).
- `serve_uint8`: uint8 RGB `(N, H, W, 3)` as serving clients send images, divided by 255 inside. Image
  models return uint8 images (clipped to [0, 1], times 255, rounded to the nearest integer, ties to
  even); segmentation models return the float32 probabilities.
`outputs="image"` / `"raw"` (`--outputs`) overrides that choice for any model.

Works from either backend (JAX exports through jax2tf; TensorFlow must be installed). The model is loaded
with Keras's `safe_mode` on. The SavedModel is written to a temporary folder next to `OUT_DIR` and renamed
into place, so a failed export (a full disk, a read-only folder) changes nothing. `OUT_DIR` may be new or
an empty folder; with `--force` it may also be an earlier export (a folder holding a SavedModel and nothing
else), which is replaced. Any other existing path is refused, as is a folder holding the model being
exported or the current folder. Temporary folders that killed exports left beside `OUT_DIR` (hidden
`.NAME.tmp-PID`, from processes that no longer run) are removed by the next export there.

This module imports TensorFlow and Keras only when it exports, so `--help` is instant.
"""

import argparse
import os
import re
import shutil
import sys
import warnings

from kx_vision import cli
from kx_vision.errors import KxVisionError

FORMATS = ("tf_saved_model",)
OUTPUTS = ("auto", "image", "raw")
# What `tf.saved_model.save` writes (Keras's ExportArchive: the first four); `--force` replaces a folder
# holding these names only, so that nothing else a user keeps there is ever deleted.
SAVED_MODEL_ENTRIES = frozenset(
    {"saved_model.pb", "variables", "assets", "fingerprint.pb", "saved_model.pbtxt", "assets.extra",
     "keras_metadata.pb"})
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?P<old>\.old)?$")


def _temporary(out_dir, pid=None):
    """The hidden folder beside `out_dir` that an export by process `pid` writes into."""
    parent, name = os.path.split(out_dir)
    return os.path.join(parent, f".{name}.tmp-{os.getpid() if pid is None else pid}")


def _process_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def clean_stale_temporaries(folder):
    """Remove the temporary folders that exports killed before they finished left in `folder`
    (`.NAME.tmp-PID`, whose process no longer runs). An export killed between its two renames left the
    previous export in `.NAME.tmp-PID.old` and nothing at `NAME`: that folder is renamed back to `NAME`.
    Returns one line per folder removed or restored."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    lines = []
    for entry in entries:
        match = _TEMPORARY.match(entry)
        path = os.path.join(folder, entry)
        if (match is None or os.path.islink(path) or not os.path.isdir(path)
                or _process_running(int(match["pid"]))):
            continue
        target = os.path.join(folder, match["name"])
        try:
            if match["old"] and not os.path.lexists(target):
                os.rename(path, target)
                lines.append(f"restored {target} from {entry}, left by an export that was killed while "
                             "replacing it")
            else:
                shutil.rmtree(path)
                lines.append(f"removed {path}, left by an export that was killed (process {match['pid']})")
        except OSError as error:
            lines.append(f"could not remove {path}, left by a killed export: {error.strerror or error}")
    return lines


def _inside(path, folder):
    """Whether `path` is `folder` or lies under it (both given as absolute paths)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def check_output_folder(out_dir, force=False, source=None):
    """Refuse an `out_dir` that an export must not write (see the module's docstring), with one message.
    `source`: the `.keras` file being exported, which `out_dir` must not contain."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    real = os.path.realpath(out_dir)
    if source is not None:
        source = os.fspath(source)
        if any(_inside(path, folder) for path in {os.path.abspath(source), os.path.realpath(source)}
               for folder in {out_dir, real}):
            raise KxVisionError(f"{out_dir} holds the model being exported ({source}); choose another output "
                                "folder")
    if _inside(os.getcwd(), real) or _inside(os.path.realpath(os.getcwd()), real):
        raise KxVisionError(f"{out_dir} is or holds the current folder; choose another output folder")
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir):
        raise KxVisionError(f"{out_dir} is a symbolic link; give the folder it points to, or another one")
    if not os.path.isdir(out_dir):
        raise KxVisionError(f"{out_dir} exists and is not a folder; choose another output folder")
    try:
        entries = set(os.listdir(out_dir))
    except OSError as error:
        raise KxVisionError(f"cannot read the output folder {out_dir}: {error.strerror or error}") from error
    if not entries:
        return
    if "saved_model.pb" not in entries:
        raise KxVisionError(
            f"{out_dir} exists and is not an exported SavedModel (no saved_model.pb); --force replaces only an "
            "earlier export or an empty folder: choose another output folder")
    others = sorted(entries - SAVED_MODEL_ENTRIES)
    if others:
        raise KxVisionError(
            f"{out_dir} holds a SavedModel but also {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}, "
            "which replacing it would delete; move them or choose another output folder")
    if not force:
        raise KxVisionError(f"{out_dir} exists; pass --force (force=True) to replace that earlier export")


def _write_error(error):
    """The reason of a failed write, in a few words: the OS's, or the end of TensorFlow's message."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    reason = str(getattr(error, "message", error)).split("\n")[0]
    reason = re.sub(r"\s*\[Op:\w+\]\s*$", "", reason).split("; ")[-1].strip()
    return reason or type(error).__name__


def _make_folders(folder):
    """`os.makedirs(folder)`; returns the folders it created, outermost first."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing[::-1]


def output_kind(model):
    """"image" for the models whose output is an image in [0, 1] (EDSR, StyleTransferNet), else "raw"."""
    from kx_vision.models import EDSR, StyleTransferNet

    return "image" if isinstance(model, (EDSR, StyleTransferNet)) else "raw"


def export_model(model, out_dir, force=False, format="tf_saved_model", uint8_endpoint=True, outputs="auto",
                 source=None):
    """Export a Keras image model (input `(N, H, W, C)` float in [0, 1]) to `out_dir` atomically.

    `outputs`: "image" clips the `serve` output to [0, 1] and makes `serve_uint8` return rounded uint8
    images; "raw" returns the model's output unchanged from both; "auto" (default) is "image" for EDSR and
    StyleTransferNet, "raw" otherwise (segmentation probabilities are in [0, 1] already). `source`: the file
    the model came from, refused as part of `out_dir`. Returns the absolute `out_dir`."""
    if format not in FORMATS:
        raise KxVisionError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    if outputs not in OUTPUTS:
        raise KxVisionError(f"unknown outputs {outputs!r}; choose one of {', '.join(OUTPUTS)}")
    shape = [tuple(x.shape) for x in model.inputs]
    if len(shape) != 1 or len(shape[0]) != 4 or shape[0][-1] is None:
        raise KxVisionError(f"export takes image models with one (N, H, W, C) input; this model takes "
                            f"{', '.join(map(str, shape)) or 'no input'}")
    if outputs == "auto":
        outputs = output_kind(model)
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent = os.path.dirname(out_dir)
    for line in clean_stale_temporaries(parent):
        warnings.warn(line, stacklevel=2)
    check_output_folder(out_dir, force=force, source=source)

    import keras
    import tensorflow as tf

    def failed(error, what="write"):
        return KxVisionError(f"cannot {what} the export {out_dir}: {_write_error(error)} (in {parent}); "
                             "nothing was changed")

    tmp = _temporary(out_dir)
    try:
        created = _make_folders(parent)
    except OSError as error:
        raise failed(error, "create the folder of") from error
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)  # a read-only folder fails here, before the model is traced
        archive = keras.export.ExportArchive()
        archive.track(model)
        channels = shape[0][-1]
        float_spec = tf.TensorSpec((None, None, None, channels), tf.float32, name="images")
        # Serving needs no gradients (jax2tf cannot differentiate "same" convolutions of symbolic sizes),
        # and a JAX export runs only on the platforms it was lowered for: CPU and CUDA serving.
        backend_kwargs = ({"jax2tf_kwargs": {"with_gradient": False, "native_serialization_platforms": ("cpu", "cuda")}}
                          if keras.backend.backend() == "jax" else {})
        image = outputs == "image"

        def serve(images):
            result = model(images)
            return keras.ops.clip(result, 0.0, 1.0) if image else result

        archive.add_endpoint("serve", serve, input_signature=[float_spec], **backend_kwargs)
        if uint8_endpoint:
            uint8_spec = tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")

            def serve_uint8(images):
                result = model(keras.ops.cast(images, "float32") / 255.0)
                if not image:
                    return result
                return keras.ops.cast(keras.ops.round(keras.ops.clip(result, 0.0, 1.0) * 255.0), "uint8")

            archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec], **backend_kwargs)
        archive.write_out(tmp, verbose=False)
        check_output_folder(out_dir, force=force, source=source)  # again: the folder may have changed since
        if os.path.exists(out_dir):
            old = f"{tmp}.old"
            os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except OSError:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # folders this export made for itself go too
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise failed(error) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m kx_vision.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a .keras model as a TensorFlow SavedModel for TF Serving.",
        epilog="endpoints: serve takes float32 RGB in [0, 1], shape (N, H, W, 3); serve_uint8 takes uint8 RGB.\n"
               "Image models (EDSR, style) return images clipped to [0, 1] from serve and rounded uint8 images\n"
               "from serve_uint8; segmentation models return per-pixel probabilities from both.\n"
               "A failed export (full disk, read-only folder) changes nothing.")
    parser.add_argument("model", help="a .keras model file (loaded with Keras's safe_mode on)")
    parser.add_argument("out_dir", help="the SavedModel folder to write: a new or empty folder (an earlier export "
                                        "with --force)")
    parser.add_argument("--format", default="tf_saved_model", choices=FORMATS,
                        help="what to write. tf_saved_model: a TensorFlow SavedModel folder with the serve and "
                             "serve_uint8 signatures, for TF Serving, tf.saved_model.load and keras.layers.TFSMLayer "
                             "(the only format so far; default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_DIR if it is an earlier export (a SavedModel folder and nothing else); "
                             "any other existing folder is refused")
    parser.add_argument("--outputs", default="auto", choices=OUTPUTS,
                        help="image: clip serve's output to [0, 1], serve_uint8 returns rounded uint8 images; raw: "
                             "the model's output as it is; auto: image for EDSR and StyleTransferNet, raw for "
                             "segmentation models and any other (default: %(default)s)")
    parser.add_argument("--no-uint8-endpoint", action="store_true", help="export only the float `serve` endpoint")
    cli.add_verbose_argument(parser)
    args = parser.parse_args(argv)
    return cli.run(lambda: _command(args))


def _command(args):
    out_dir = os.path.abspath(args.out_dir)
    for line in clean_stale_temporaries(os.path.dirname(out_dir)):
        print(line, file=sys.stderr)
    # Refuse a bad output folder before the (slow) model loading.
    check_output_folder(out_dir, force=args.force, source=args.model)

    from kx_vision.models.loading import load_model

    model = load_model(args.model)
    path = export_model(model, out_dir, force=args.force, format=args.format,
                        uint8_endpoint=not args.no_uint8_endpoint, outputs=args.outputs, source=args.model)
    print(f"exported {args.model} to {path} (endpoints: serve{'' if args.no_uint8_endpoint else ', serve_uint8'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
