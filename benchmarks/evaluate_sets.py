"""Evaluate one super-resolution model on several sets, plain and with the x8 self-ensemble, in one process.

    python -m benchmarks.evaluate_sets --model runs/x2/model.keras --scale 2 --data DIR [DIR ...]
        [--tag x2] [--copy-to OUT/edsr_x2.keras] [--out bench.jsonl]

Each evaluation is exactly `python -m kx_vision.evaluate superres --model M --data D --scale N --json
[--self-ensemble]` (its `main`, called with those arguments); running them in one process loads JAX once and
lets the plain and self-ensemble runs share the per-shape compilations. Every set plain, then every set with the
self-ensemble. One JSON line per evaluation
(`benchmark: evaluate`, the evaluation's own JSON, the set's name, seconds). `--copy-to` first writes the model
without its optimizer state (about a third of the file: it fits the device tool's 16 MiB per returned file).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time

from benchmarks import emit


def slim_copy(model_path, destination):
    """`model_path` re-saved without optimizer state (loaded with `compile=False`) to `destination`."""
    from kx_vision.models.loading import load_model

    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    load_model(model_path).save(destination)
    return os.path.getsize(destination)


def evaluate_one(model, data, scale, self_ensemble):
    """`(rc, result, seconds)` of one `kx_vision.evaluate superres ... --json` run; its output is echoed."""
    from kx_vision import evaluate

    argv = ["superres", "--model", model, "--data", data, "--scale", str(scale), "--json"]
    argv += ["--self-ensemble"] if self_ensemble else []
    print("$ python -m kx_vision.evaluate " + " ".join(argv), flush=True)
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        rc = evaluate.main(argv)
    seconds = time.perf_counter() - start
    text = buffer.getvalue()
    print(text, end="", flush=True)
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return rc, (json.loads(lines[-1]) if rc == 0 and lines else None), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluate_sets", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a .keras model file")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--data", nargs="+", required=True, help="image folders, one evaluation set each")
    parser.add_argument("--tag", default=None, help="recorded as 'recipe' in each line")
    parser.add_argument("--no-self-ensemble", action="store_true", help="plain evaluations only")
    parser.add_argument("--copy-to", default=None, help="first save the model without optimizer state here")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    def report(record):
        emit({**record, "date": time.strftime("%Y-%m-%d")}, args.out)

    failures = 0
    if args.copy_to:
        start = time.perf_counter()
        size = slim_copy(args.model, args.copy_to)
        report({"benchmark": "model_copy", "recipe": args.tag, "model": args.model, "copy": args.copy_to,
                "bytes": size, "seconds": round(time.perf_counter() - start, 2)})
    # Every set plain first, then the self-ensembles: the targets are plain figures, and a call cut short by
    # its deadline (benchmarks/device.sh) keeps them.
    for self_ensemble in (False,) if args.no_self_ensemble else (False, True):
        for data in args.data:
            rc, result, seconds = evaluate_one(args.model, data, args.scale, self_ensemble)
            record = {"benchmark": "evaluate", "recipe": args.tag, "set": os.path.basename(os.path.normpath(data)),
                      "self_ensemble": self_ensemble, "seconds": round(seconds, 2)}
            if result is None:
                failures += 1
                report({**record, "error": f"kx_vision.evaluate exited with {rc}"})
            else:
                report({**record, **result})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
