#!/usr/bin/env bash
# Issue 31, item 2: the lesson's progressive-resizing claim, measured. The x4 preset recipe
# (configs/presets/edsr_8x32_x4.yaml) trains twice for the same wall-clock budget of training steps: grown from the
# shipped x2 preset (body transferred, new ICNR upsampling stage) and from scratch. The two runs go side by side,
# each pinned to one of the two cores (so both see the same machine at the same time), TensorFlow backend; each
# best Set5 checkpoint is then scored on Set5 and Set14 x4 with `kx_vision.evaluate`. One line per run goes to
# $OUT/sbs.tsv.
#   bash benchmarks/x4_transfer_sbs.sh [BUDGET_SECONDS] [OUT]        (default 900 s, runs/x4_sbs)
set -euo pipefail
budget=${1:-900}
out=${2:-runs/x4_sbs}
data=${KX_VISION_SHARED_DATA:-../shared/data}
export KERAS_BACKEND=${KERAS_BACKEND:-tensorflow}
mkdir -p "$out"
train() {  # name core extra-args...
    local name=$1 core=$2; shift 2
    taskset -c "$core" python -m kx_vision.train superres --config configs/presets/edsr_8x32_x4.yaml \
        --output "$out/$name" --overwrite --set time_budget="$budget" --set samples=0 "$@" >"$out/$name.log" 2>&1
}
train from_x2 0 &
train scratch 1 --set init_from=null --set freeze_transferred_epochs=0 &
wait
for name in from_x2 scratch; do
    steps=$(grep -o 'in [0-9]* steps ([0-9.]* ms/step)' "$out/$name.log" | tail -1)
    scores=""
    for set_name in Set5 Set14; do
        psnr=$(python -m kx_vision.evaluate superres --model "$out/$name/checkpoints/best.keras" --data "$data/sr/$set_name" \
            --json 2>/dev/null | tail -1 | python -c "import json,sys; print('%.2f' % json.load(sys.stdin)['psnr'])")
        scores="$scores\t$psnr"
    done
    printf "%s\t%s\t%s$scores\n" "$name" "$budget" "$steps" | tee -a "$out/sbs.tsv"
done
