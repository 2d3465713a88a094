#!/usr/bin/env bash
# Issue 31, item 1: pick the x2 preset's network by measurement. Each candidate EDSR trains for the same
# wall-clock budget of training steps on the 291 images (T91 + BSD200), TensorFlow backend, L1 loss, cosine
# schedule, then is scored on Set5 x2 with `kx_vision.evaluate`. One line per candidate goes to $OUT/candidates.tsv.
#   bash benchmarks/preset_candidates.sh [BUDGET_SECONDS] [OUT]      (default 360 s, runs/candidates)
# Run it alone on the machine: the budget is wall-clock, so anything else on the cores costs steps.
set -euo pipefail
budget=${1:-360}
out=${2:-runs/candidates}
data=${KX_VISION_SHARED_DATA:-../shared/data}
backend=${KERAS_BACKEND:-tensorflow}
mkdir -p "$out"
# name blocks filters patch batch
candidates=${KX_CANDIDATES:-"b8f32 8 32 48 16;b16f32 16 32 48 16;b10f48 10 48 48 16"}
IFS=';' read -ra rows <<<"$candidates"
for row in "${rows[@]}"; do
    read -r name blocks filters patch batch <<<"$row"
    run="$out/$name-$backend"
    KERAS_BACKEND=$backend python -m kx_vision.train superres --output "$run" --overwrite \
        --set model.num_blocks="$blocks" --set model.num_filters="$filters" \
        --set data.patch_size="$patch" --set data.batch_size="$batch" \
        --set data.train="$data/sr/T91,$data/sr/BSD200" --set data.val="$data/sr/Set5" --set data.skip_small=true \
        --set time_budget="$budget" --set epochs=1000 --set steps_per_epoch=1000 --set samples=0 \
        >"$run.log" 2>&1
    params=$(KERAS_BACKEND=$backend python -c "import keras, kx_vision, sys; print(keras.saving.load_model(sys.argv[1], compile=False).count_params())" "$run/model.keras" 2>/dev/null | tail -1)
    steps=$(grep -o 'in [0-9]* steps ([0-9.]* ms/step)' "$run.log" | tail -1)
    set5=$(KERAS_BACKEND=$backend python -m kx_vision.evaluate superres --model "$run/checkpoints/best.keras" \
        --data "$data/sr/Set5" --scale 2 --json 2>/dev/null | tail -1 | python -c "import json,sys; print('%.2f' % json.load(sys.stdin)['psnr'])")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$params" "$backend" "$budget" "$steps" "$set5" | tee -a "$out/candidates.tsv"
done
