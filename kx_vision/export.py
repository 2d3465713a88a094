"""Export a `.keras` model as a TensorFlow SavedModel for TF Serving:
`python -m kx_vision.export MODEL.keras OUT_DIR [--format tf_saved_model] [--force]`.

Endpoints (any batch, height and width the model takes):
- `serve` (the default signature): float32 RGB in [0, 1], shape `(N, H, W, 3)` — exactly the Keras
  model's input — returning the model's output (super-resolved image in [0, 1], per-pixel class
  probabilities, or the stylised image).
- `serve_uint8`: uint8 RGB `(N, H, W, 3)` as serving clients send images, divided by 255 inside.

Works from either backend (JAX exports through jax2tf; TensorFlow must be installed). The model is loaded
with Keras's `safe_mode` on. The SavedModel is written to a temporary folder next to `OUT_DIR` and renamed
into place, so a failed export never leaves a half-written folder under the final name; an existing
`OUT_DIR` is refused unless `--force`.
"""

import argparse
import os
import shutil
import sys

from kx_vision.errors import KxVisionError

FORMATS = ("tf_saved_model",)


def export_model(model, out_dir, force=False, format="tf_saved_model", uint8_endpoint=True):
    """Export a Keras image model (input `(N, H, W, 3)` float in [0, 1]) to `out_dir` atomically."""
    import keras
    import tensorflow as tf

    if format not in FORMATS:
        raise KxVisionError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not force:
        raise KxVisionError(f"{out_dir} exists; pass --force (force=True) to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        channels = model.input.shape[-1]
        float_spec = tf.TensorSpec((None, None, None, channels), tf.float32, name="images")
        # Serving needs no gradients (jax2tf cannot differentiate "same" convolutions of symbolic sizes),
        # and a JAX export runs only on the platforms it was lowered for: CPU and CUDA serving.
        backend_kwargs = ({"jax2tf_kwargs": {"with_gradient": False, "native_serialization_platforms": ("cpu", "cuda")}}
                          if keras.backend.backend() == "jax" else {})
        archive.add_endpoint("serve", model.__call__, input_signature=[float_spec], **backend_kwargs)
        if uint8_endpoint:
            uint8_spec = tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")

            def serve_uint8(images):
                return model(keras.ops.cast(images, "float32") / 255.0)

            archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec], **backend_kwargs)
        archive.write_out(tmp, verbose=False)
        if os.path.exists(out_dir):
            old = f"{tmp}.old"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kx_vision.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a .keras model file")
    parser.add_argument("out_dir", help="the SavedModel folder to write")
    parser.add_argument("--format", default="tf_saved_model", choices=FORMATS)
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-uint8-endpoint", action="store_true", help="export only the float `serve` endpoint")
    args = parser.parse_args(argv)
    try:
        from kx_vision.models.loading import load_model

        model = load_model(args.model)
        path = export_model(model, args.out_dir, force=args.force, format=args.format,
                            uint8_endpoint=not args.no_uint8_endpoint)
    except KxVisionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.model} to {path} (endpoints: serve{'' if args.no_uint8_endpoint else ', serve_uint8'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
