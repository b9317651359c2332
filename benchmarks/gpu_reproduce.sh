#!/usr/bin/env bash
# SimCLR's CIFAR-10 result on one GPU, in one offline command that ends within 10 minutes on an H100 or H200:
# ResNet-18 (CIFAR stem, 32 px) pretrained on all 50,000 training images for TRAIN_MINUTES with the cifar10-gpu
# preset, kNN (k = 200) every 10 epochs, then kNN and the paper's linear evaluation (sections 2.3 and B.6) on the
# 10,000 test images. Writes to $OUT: summary.json and summary.md (epochs, minutes, pairs/s, kNN curve, final kNN and
# linear top-1, GPU, torch), gpu_reproduce.log, and with SPLIT=1 the encoder in pieces of at most 16 MiB.
#
#   DATA=.data/cifar10-jpeg.zip bash benchmarks/gpu_reproduce.sh             # the reproduction (docs/gpu.md)
#   DATA=... SPLIT=1 OUT=/tmp/out bash benchmarks/gpu_reproduce.sh           # also the encoder, in pieces
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_reproduce.sh                      # toy size on a CPU (about a minute)
#
# Settings (environment): TRAIN_MINUTES (default 7), LINEAR_EPOCHS (default 15, the paper's 90 cut to fit
# the call: 10 epochs took 58 s on an H200, start-up included),
# KNN_EVERY (default 10), DEADLINE_S (default 570: the evaluations are stopped there, so the summary is always
# written inside a 10-minute call), TRAIN_ARGS (extra `torchclr pretrain` options), WORK (run folder, default a
# temporary one: checkpoints never go to $OUT). It runs with the machine's own python3 and torch (torchclr from src/).
# A failing step (no data, a GPU out of memory, ...) is reported in one line with its exit code; the steps after it
# still run where they can (the evaluations use the last checkpoint) and the summary says what exists.
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=gpu_reproduce
SPLIT=${SPLIT:-0}
KNN_EVERY=${KNN_EVERY:-10}
source benchmarks/gpu_common.sh

if [ "$SMOKE" = 1 ]; then  # toy sizes: checks that every command runs, measures nothing
    DATA=${DATA:-sample}
    # --time-budget none: the preset's 7 minutes give way to a fixed number of epochs, so the kNN curve is known
    size=(--time-budget none --epochs "${EPOCHS:-2}" --warmup-epochs 0.5 --image-size 8 --batch-size 25 --precision fp32)
    linear=(--linear-epochs 2)
    KNN_EVERY=${KNN_EVERY_SMOKE:-1}
else
    size=(--time-budget "${TRAIN_MINUTES:-7}m") linear=(--linear-epochs "${LINEAR_EPOCHS:-15}")
fi
if check_data && smoke_subset; then
    start=$SECONDS
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
    run_step train "$(seconds_left)" "$PYTHON" -m torchclr pretrain --config cifar10-gpu --data "$train_data" \
        --out-dir "$WORK/run" --device "$DEVICE" --knn-every "$KNN_EVERY" --no-final-report --no-progress \
        "${size[@]}" ${TRAIN_ARGS:-}
    train_seconds=$((SECONDS - start))
    encoder=$("$PYTHON" "${HELPER[@]}" encoder "$WORK/run" 2>>"$LOG") || encoder=""
    if [ -z "$encoder" ]; then
        say "no encoder and no checkpoint in $WORK/run: kNN and linear evaluation skipped"
    else
        [ "$encoder" != "$WORK/run/encoder.safetensors" ] && say "evaluating the last checkpoint, $encoder"
        run_step knn "$(seconds_left)" "$PYTHON" -m torchclr evaluate --checkpoint "$encoder" --protocol knn \
            --no-compare-random --device "$DEVICE" --json "$WORK/knn.json"
        run_step linear "$(seconds_left)" "$PYTHON" -m torchclr evaluate --checkpoint "$encoder" --protocol linear \
            --no-compare-random --device "$DEVICE" "${linear[@]}" --json "$WORK/linear.json"
        if [ "$SPLIT" = 1 ]; then
            run_step split 120 "$PYTHON" "${HELPER[@]}" split "$encoder" "$OUT" --info "$WORK/pieces.json"
        fi
    fi
fi

"$PYTHON" "${HELPER[@]}" summary --run "$WORK/run" --work "$WORK" --out "$OUT" --data "${DATA:-}" \
    --train-seconds "${train_seconds:-0}" --smoke "$SMOKE" --steps "${steps[@]}" 2>&1 | tee -a "$LOG"
finish
