#!/usr/bin/env bash
# One of the paper's studies (`torchclr ablate STUDY --budget gpu`) in one offline command sized for one 10-minute GPU
# call: 10,000 CIFAR-10 training and 2,000 test images, ResNet-18 with the CIFAR stem (docs/ablations.md has the
# arithmetic). Writes $OUT/ablations.md (with its PNGs in $OUT/ablations/), $OUT/STUDY-gpu.jsonl (the finished cells:
# carry them back into OUT of a later call to continue a study the deadline cut short) and gpu_ablate.log.
#
#   STUDY=loss DATA=.data/cifar10-jpeg.zip bash benchmarks/gpu_ablate.sh
#   DEVICE=cpu SMOKE=1 STUDY=color-strength bash benchmarks/gpu_ablate.sh   # the quick budget, one seed, on the sample
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=gpu_ablate
STUDY=${STUDY:-color-strength}
source benchmarks/gpu_common.sh

if [ "$SMOKE" = 1 ]; then
    DATA=${DATA:-sample}
    budget=(--budget quick --seeds 0)
else
    budget=(--budget gpu)
fi
if check_data; then
    mkdir -p "$WORK/ablate"
    cp "$OUT"/*-gpu.jsonl "$OUT"/*-quick.jsonl "$WORK/ablate/" 2>/dev/null  # cells finished by an earlier call
    run_step "ablate-$STUDY" "$(seconds_left)" "$PYTHON" -m torchclr ablate "$STUDY" "${budget[@]}" --data "$DATA" \
        --out "$WORK/ablate" --report "$OUT/ablations.md" --device "$DEVICE"
    cp "$WORK"/ablate/*.jsonl "$OUT/" 2>/dev/null
    if [ ! -f "$OUT/ablations.md" ]; then  # stopped at the deadline: the report of the cells that did finish
        run_step report 60 "$PYTHON" -m torchclr ablate "$STUDY" "${budget[@]}" --data "$DATA" --out "$WORK/ablate" \
            --report "$OUT/ablations.md" --report-only
    fi
fi
finish
