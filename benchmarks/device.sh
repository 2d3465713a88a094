#!/usr/bin/env bash
# The GPU check for issue #9, as one script for the lent device machine (JAX + PyTorch, no TensorFlow,
# no Keras). Prepare here first:  benchmarks/device.sh prepare   (wheels and the peer into .device/, git-ignored)
# then on the device (carry .device):  bash benchmarks/device.sh run   -> JSON lines in $OUT/bench.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
prepare)
    mkdir -p .device/wheels
    python -m pip download -q --no-deps -d .device/wheels keras namex optree absl-python rich ml-dtypes h5py packaging
    cp ../shared/bench/torch_edsr.py .device/
    ;;
run)
    OUT=${OUT:-/tmp/out}
    python -m pip install -q --no-index --find-links .device/wheels keras namex optree 2>&1 | tail -2
    export KERAS_BACKEND=jax PYTHONPATH=$PWD
    for config in "16 48" "64 96"; do
        set -- $config
        python .device/torch_edsr.py --batch "$1" --lr-size "$2" --amp bf16 --channels-last --compile --steps 50 \
            | tee -a "$OUT/bench.jsonl"
    done
    python -m benchmarks.run --only edsr_train,sr_infer,style_infer,unet_train --steps 20 --repeats 5 \
        --out "$OUT/bench.jsonl"
    ;;
esac
