"""The GPU check of issue #16, one call on a lent GPU machine: `bash benchmarks/device.sh run` (the call, the
time plan and the variables are described there); `device.sh dry` runs it here with tiny sizes.

Standard library only: it runs before the carried wheels are installed. Each step runs as its own process(es),
streams its output into the log and appends JSON lines to OUT/bench.jsonl as soon as it has them, and ends with
a `{"benchmark": "step", ...}` line, so a run killed by the call's limit still returns what finished. Nothing
starts past the deadline, and each process is killed at it.

Steps (`--steps` or KX_STEPS picks a subset): install (carried wheels -> /tmp/site, package versions), smi,
matmul (JAX bf16 peak), peer_speed (the PyTorch peer's step), edsr_train (float32 and mixed_bfloat16, one
process each), pipeline (only when named), x2 and x4 (the baseline recipes with `time_budget`: 240 s and 150 s
asked, KX_X2_BUDGET / KX_X4_BUDGET, scaled down together to what the deadline leaves; each model evaluated on
Set5 and Set14 and returned as OUT/edsr_x2.keras, OUT/edsr_x4.keras), peer_quality (only when named or when
the deadline leaves room).
"""

import argparse
import codecs
import glob
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.path.join(ROOT, ".device")
STEPS = ("install", "smi", "matmul", "peer_speed", "edsr_train", "pipeline", "x2", "x4", "peer_quality")
NOT_BY_DEFAULT = {"run": {"pipeline"}, "dry": set()}
SPEED_CONFIGS = {"run": [(16, 48), (64, 96)], "dry": [(2, 16), (4, 24)]}
# Keys the dry run adds to the recipes: a tiny model, so a CPU gets through training and evaluation.
DRY_MODEL = ["model.num_blocks=2", "model.num_filters=16", "data.batch_size=4"]


def env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


class Check:
    def __init__(self, mode, out, deadline_s, steps, python, peer_pythonpath=None):
        self.mode, self.out, self.python = mode, out, python
        self.start = time.monotonic()
        self.deadline = self.start + deadline_s
        self.steps = steps
        self.bench = os.path.join(out, "bench.jsonl")
        self.data = os.path.join(DEVICE, "data") if mode == "run" else os.environ["KX_DRY_DATA"]
        self.runs = "/tmp/runs" if mode == "run" else os.path.join(os.environ["KX_DRY_TMP"], "runs")
        self.peer_env = dict(os.environ)
        if peer_pythonpath is not None:
            self.peer_env["PYTHONPATH"] = peer_pythonpath
        self.env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1")
        if mode == "run":  # the carried wheels, installed by the first step, and this checkout
            self.env["PYTHONPATH"] = os.pathsep.join(["/tmp/site", ROOT])
        self.failed = []
        self.background = None

    # -- bookkeeping --------------------------------------------------------------------------------------
    def left(self):
        return self.deadline - time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.start

    def record(self, record):
        line = json.dumps({**record, "mode": self.mode, "date": time.strftime("%Y-%m-%d")})
        print(line, flush=True)
        with open(self.bench, "a") as f:
            f.write(line + "\n")

    def say(self, message):
        print(f"[device_check {self.elapsed():6.1f}s, {self.left():6.1f}s left] {message}", flush=True)

    def run(self, name, argv, env=None, cap=None, keep_json=False, extra=None):
        """Run one process, its output streamed to the log; returns `(status, seconds, json_lines)`.
        Killed at the deadline (or after `cap` seconds); `keep_json` appends its JSON lines to bench.jsonl
        (with `extra` and the process's wall time) when it ends."""
        limit = self.left() if cap is None else min(cap, self.left())
        if limit <= 1:
            self.say(f"{name}: skipped, no time left")
            return "skipped (no time left)", 0.0, []
        self.say(f"{name}: $ {' '.join(argv)}  (limit {limit:.0f}s)")
        start = time.monotonic()
        process = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        records, pending, timed_out = [], b"", False
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while True:
                remaining = start + limit - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if not selector.select(timeout=min(remaining, 5.0)):
                    continue
                chunk = os.read(process.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
                *complete, pending = (pending + chunk).split(b"\n")
                records += _json_lines(complete)
        except BaseException:
            _kill(process)
            raise
        finally:
            selector.close()
        if timed_out:
            _kill(process)
        try:
            rc = process.wait(timeout=max(start + limit - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:  # closed its output but still runs
            _kill(process)
            rc, timed_out = process.wait(), True
        records += _json_lines([pending])
        seconds = time.monotonic() - start
        status = "timeout" if timed_out else "ok" if rc == 0 else f"failed (rc {rc})"
        if keep_json:
            for record in records:
                self.record({"step": name, **record, **(extra or {}), "wall_s": round(seconds, 1)})
        return status, seconds, records

    def step_done(self, name, status, seconds, **info):
        self.record({"benchmark": "step", "step": name, "status": status, "seconds": round(seconds, 1),
                     "elapsed_s": round(self.elapsed(), 1), **info})
        if status not in ("ok", "skipped") and not status.startswith("skipped"):
            self.failed.append(name)

    # -- steps --------------------------------------------------------------------------------------------
    def install(self):
        wheels = sorted(glob.glob(os.path.join(DEVICE, "wheels", "*.whl")))
        if not wheels:
            return "failed (no wheels in .device/wheels: run benchmarks/device.sh prepare)", 0.0, {}
        pip = [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        if self.mode == "run":
            argv = pip + ["--upgrade", "--target", "/tmp/site", *wheels]
        else:  # check that pip would install them for the GPU machine's Python 3.12 on x86-64
            argv = pip + ["--dry-run", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                          "--platform", "manylinux2014_x86_64", "--target", os.environ["KX_DRY_TMP"] + "/site",
                          *wheels]
        status, seconds, _ = self.run("install", argv, cap=120)
        if status == "ok":
            versions = self.run("versions", [self.python, "-c", VERSIONS_SCRIPT], cap=60)[2]
            self.record({"benchmark": "versions", "wheels": [os.path.basename(w) for w in wheels],
                         **(versions[-1] if versions else {})})
        return status, seconds, {}

    def smi(self):
        if shutil.which("nvidia-smi") is None:
            return "skipped (no nvidia-smi)", 0.0, {}
        query = "name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu"
        argv = ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"]
        start = time.monotonic()
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            return f"failed ({error})", time.monotonic() - start, {}
        print(text, flush=True)
        self.record({"benchmark": "nvidia_smi", "query": query, "gpu": text.splitlines()})
        return "ok", time.monotonic() - start, {}

    def matmul(self):
        sizes = ["8192", "16384"] if self.mode == "run" else ["128", "256"]
        repeats = "10" if self.mode == "run" else "2"
        argv = [self.python, "-m", "benchmarks.matmul_peak", "--sizes", *sizes, "--repeats", repeats,
                "--out", self.bench]
        return self.run_each([("matmul", argv)], cap=90)

    def run_each(self, runs, record=False, **options):
        """Run each `(name, argv)` of `runs` (with `self.run`'s `options`); one status for all, their seconds.
        With `record`, a `process` line per run."""
        statuses, total = [], 0.0
        for name, argv in runs:
            status, seconds, _ = self.run(name, argv, **options)
            if record:
                self.record({"benchmark": "process", "step": name, "status": status, "seconds": round(seconds, 1)})
            statuses.append(status)
            total += seconds
        bad = [s for s in statuses if s != "ok"]
        return ", ".join(bad) if bad else "ok", total, {}

    def peer_speed(self):
        size = ["--steps", "50"] if self.mode == "run" else ["--steps", "2", "--blocks", "2", "--features", "16"]
        runs = [(f"peer_speed {batch}x{lr_size}",
                 [self.python, os.path.join(DEVICE, "torch_edsr.py"), "--batch", str(batch), "--lr-size", str(lr_size),
                  "--amp", "bf16", "--channels-last", "--compile", *size])
                for batch, lr_size in SPEED_CONFIGS[self.mode]]
        return self.run_each(runs, env=self.peer_env, cap=150, keep_json=True, extra={"benchmark": "peer_edsr_train"})

    def edsr_train(self):
        size = ["--steps", "20", "--repeats", "5"] if self.mode == "run" else [
            "--steps", "2", "--repeats", "1", "--quick"]
        runs = [(f"edsr_train {precision} {batch}x{lr_size}",
                 [self.python, "-m", "benchmarks.run", "--only", "edsr_train", "--precision", precision, "--configs",
                  f"{batch}x{lr_size}", "--out", self.bench, *size])
                for precision in ("float32", "mixed_bfloat16") for batch, lr_size in SPEED_CONFIGS[self.mode]]
        return self.run_each(runs, record=True, cap=150)

    def pipeline(self):
        argv = [self.python, "-m", "benchmarks.run", "--only", "pipeline", "--pipeline-data",
                os.path.join(self.data, "train"), "--out", self.bench] + (["--quick"] if self.mode == "dry" else [])
        return self.run_each([("pipeline", argv)], cap=90)

    # -- the recipes --------------------------------------------------------------------------------------
    def recipe_budgets(self):
        """Seconds of training for x2 and x4: what was asked, scaled down together to fit the deadline."""
        asked = {"x2": env_float("KX_X2_BUDGET", 240 if self.mode == "run" else 4),
                 "x4": env_float("KX_X4_BUDGET", 150 if self.mode == "run" else 3)}
        train_overhead = env_float("KX_TRAIN_OVERHEAD_S", 75 if self.mode == "run" else 120)
        eval_seconds = env_float("KX_EVAL_S", 45 if self.mode == "run" else 120)
        todo = [name for name in ("x2", "x4") if name in self.steps]
        # The x2 evaluation overlaps x4's training; the last recipe's evaluation does not.
        fixed = train_overhead * len(todo) + eval_seconds + 10
        available = self.left() - fixed
        wanted = sum(asked[name] for name in todo)
        factor = min(1.0, max(available, 0.0) / wanted) if wanted else 1.0
        return asked, factor, {"train_overhead_s": train_overhead, "eval_s": eval_seconds, "fixed_s": fixed,
                               "available_s": round(available, 1)}

    def train(self, name, config, budget, extra_sets, spe):
        output = os.path.join(self.runs, name)
        shutil.rmtree(output, ignore_errors=True)  # never resume an earlier call's run
        sets = ["epochs=1000", "precision=mixed_bfloat16", "data.pipeline=numpy",
                f"data.train={os.path.join(self.data, 'train')}", f"data.val={os.path.join(self.data, 'Set5')}",
                *([f"steps_per_epoch={spe}"] if spe else []), *extra_sets, *(DRY_MODEL if self.mode == "dry" else []),
                f"time_budget={budget:g}"]
        info = {"time_budget_s": budget}
        argv = [self.python, "-m", "kx_vision.train", "superres", "--config", config]
        for assignment in sets:
            argv += ["--set", assignment]
        argv += ["--output", output]
        env = dict(self.env)
        if self.background is not None:  # an evaluation shares the GPU: leave it room
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.7"
        status, seconds, _ = self.run(f"train {name}", argv, env=env)
        summary_path = os.path.join(output, "summary.json")
        if os.path.isfile(summary_path):
            with open(summary_path) as f:
                info["summary"] = json.load(f)
        history = os.path.join(output, "history.csv")
        if os.path.isfile(history):
            shutil.copy(history, os.path.join(self.out, f"{name}_history.csv"))
        self.record({"benchmark": "train", "recipe": name, "config": config, "sets": sets, "status": status,
                     "wall_s": round(seconds, 1), **info})
        return status, seconds, os.path.join(output, "model.keras")

    def evaluate_argv(self, name, model, scale):
        return [self.python, "-m", "benchmarks.evaluate_sets", "--model", model, "--scale", str(scale),
                "--data", os.path.join(self.data, "Set5"), os.path.join(self.data, "Set14"), "--tag", name,
                "--copy-to", os.path.join(self.out, f"edsr_{name}.keras"), "--out", self.bench]

    def start_background(self, name, argv):
        log = os.path.join(os.path.dirname(self.runs), name.replace(" ", "_") + ".log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        env = dict(self.env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        self.say(f"{name} (background, log {log}): $ {' '.join(argv)}")
        handle = open(log, "w")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.background = (name, process, handle, log, time.monotonic())

    def finish_background(self):
        if self.background is None:
            return
        name, process, handle, log, start = self.background
        self.background = None
        try:
            rc = process.wait(timeout=max(self.left(), 1))
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            _kill(process)
            status = "timeout"
        handle.close()
        with open(log) as f:
            print(f"----- {name} (ran in the background) -----\n{f.read()}----- end of {name} -----", flush=True)
        self.step_done(name, status, time.monotonic() - start, background=True)

    def recipes(self):
        asked, factor, plan = self.recipe_budgets()
        self.record({"benchmark": "plan", "asked_s": asked, "scale": round(factor, 3), **plan})
        x2_model = os.path.join(self.runs, "x2", "model.keras")
        if "x2" in self.steps:
            budget = max(int(asked["x2"] * factor), 10 if self.mode == "run" else 2)
            status, seconds, x2_model = self.train(
                "x2", "configs/edsr_baseline_x2.yaml", budget, [],
                _steps_per_epoch("KX_X2_STEPS_PER_EPOCH", 4000 if self.mode == "run" else 5))
            self.step_done("x2 train", status, seconds, time_budget_s=budget)
            if os.path.isfile(x2_model):
                argv = self.evaluate_argv("x2", x2_model, 2)
                if "x4" in self.steps:
                    self.start_background("x2 evaluate", argv)
                else:
                    status, seconds, _ = self.run("x2 evaluate", argv)
                    self.step_done("x2 evaluate", status, seconds)
        if "x4" in self.steps:
            if not os.path.isfile(x2_model):
                self.step_done("x4 train", "skipped (no x2 model to grow from)", 0.0)
            else:
                left_for_training = self.left() - plan["train_overhead_s"] - plan["eval_s"] - 10
                budget = max(int(min(asked["x4"], left_for_training)), 10 if self.mode == "run" else 2)
                status, seconds, x4_model = self.train(
                    "x4", "configs/edsr_baseline_x4.yaml", budget, [f"init_from={x2_model}"],
                    _steps_per_epoch("KX_X4_STEPS_PER_EPOCH", None if self.mode == "run" else 5))
                self.step_done("x4 train", status, seconds, time_budget_s=budget)
                self.finish_background()
                if os.path.isfile(x4_model):
                    status, seconds, _ = self.run("x4 evaluate", self.evaluate_argv("x4", x4_model, 4))
                    self.step_done("x4 evaluate", status, seconds)
        self.finish_background()

    def peer_quality(self, named):
        budget = env_float("KX_PEER_BUDGET", 240 if self.mode == "run" else 2)
        needed = budget + (90 if self.mode == "run" else 600)
        if not named and self.left() < needed:
            return f"skipped ({self.left():.0f}s left, needs about {needed:.0f}s)", 0.0, {}
        argv = [self.python, os.path.join(DEVICE, "torch_edsr_train.py"), "--data", self.data,
                "--budget-s", f"{budget:g}", "--compile"]
        status, seconds, _ = self.run("peer_quality", argv, env=self.peer_env, keep_json=True,
                                      extra={"benchmark": "peer_quality"})
        return status, seconds, {"budget_s": budget}

    def main(self, explicit_peer_quality):
        self.record({"benchmark": "start", "steps": self.steps, "deadline_s": round(self.left(), 1),
                     "python": sys.version.split()[0]})
        for name in ("install", "smi", "matmul", "peer_speed", "edsr_train", "pipeline"):
            if name in self.steps:
                status, seconds, info = getattr(self, name)()
                self.step_done(name, status, seconds, **info)
        if "x2" in self.steps or "x4" in self.steps:
            self.recipes()
        if "peer_quality" in self.steps:
            status, seconds, info = self.peer_quality(explicit_peer_quality)
            self.step_done("peer_quality", status, seconds, **info)
        self.record({"benchmark": "end", "failed": self.failed, "elapsed_s": round(self.elapsed(), 1)})
        return 1 if self.failed else 0


VERSIONS_SCRIPT = """
import importlib.metadata as m, importlib.util, json, platform, sys
names = ["keras", "jax", "jaxlib", "jax-cuda13-plugin", "torch", "numpy", "pillow", "h5py", "ml-dtypes", "optree",
         "namex", "tensorflow"]
found = {}
for name in names:
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        found[name] = None
print(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(), "packages": found,
                  "tensorflow_importable": importlib.util.find_spec("tensorflow") is not None}))
"""


def _steps_per_epoch(variable, default):
    """Steps per epoch of a recipe (None: the config's). Fewer, longer epochs spend less wall time on the
    per-epoch validation and checkpoints, which the time budget does not count."""
    value = os.environ.get(variable)
    return int(value) if value else default


def _kill(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _json_lines(lines):
    found = []
    for line in lines:
        text = line.decode(errors="replace").strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                found.append(json.loads(text))
            except ValueError:
                pass
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/device_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("run", "dry"))
    parser.add_argument("--out", required=True, help="folder of bench.jsonl, the models and histories")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds from now after which nothing starts (run: 540, dry: none)")
    parser.add_argument("--steps", default=os.environ.get("KX_STEPS", ""),
                        help=f"comma-separated subset of {', '.join(STEPS)} (default: all)")
    parser.add_argument("--python", default=sys.executable, help="the Python of every step")
    parser.add_argument("--peer-pythonpath", default=None, help="PYTHONPATH of the PyTorch peer's processes")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s] or [s for s in STEPS if s not in NOT_BY_DEFAULT[args.mode]]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; steps: {', '.join(STEPS)}")
    if args.mode == "run" and "install" not in steps:
        steps.insert(0, "install")  # a fresh machine has no Keras
    deadline = args.deadline if args.deadline is not None else (540.0 if args.mode == "run" else 1e9)
    os.makedirs(args.out, exist_ok=True)
    check = Check(args.mode, args.out, deadline, steps, args.python, args.peer_pythonpath)
    return check.main(explicit_peer_quality=bool(args.steps) and "peer_quality" in steps)


if __name__ == "__main__":
    sys.exit(main())
