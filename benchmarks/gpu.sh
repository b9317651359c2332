#!/usr/bin/env bash
# torchclr beside lightly 1.6.0 on one GPU, in one command that ends within 5 minutes on an H100 or H200 and needs
# no network there:
#   1. ResNet-18 (CIFAR stem) at 32 px, batch 512, on CIFAR-10: pairs/s, ratios, the projected 200-epoch time;
#   2. ResNet-50 at 224 px, batch 256, on 5,120 of the same images upscaled.
#
#   bash benchmarks/gpu.sh                 # from anywhere; DATA=... to point at another copy of the zip
#   COMPILE=1 bash benchmarks/gpu.sh       # also torchclr with torch.compile (adds about a minute of compiling)
#
# It runs with the machine's own python3 and torch (torchclr is taken from src/, its pinned torch is not needed);
# lightly comes from .whl/ when python3 lacks it: where pip works, first run
#   pip download --no-deps lightly==1.6.0 -d .whl
# (lightly imports only lightning-utilities beside torch, torchvision and numpy). Without the CIFAR-10 zip at $DATA
# it falls back to the 5,000-image sample shipped with torchclr: the same images per step, a smaller epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import lightly" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/lightly-site .whl/lightly-1.6.0-*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/lightly-site"
fi
DATA=${DATA:-../shared/data/cifar10-jpeg.zip}
if [ ! -f "$DATA" ]; then
    echo "no $DATA here: using the shipped sample instead"
    DATA=sample
fi
contenders=torchclr,lightly,lightly+bf16
[ "${COMPILE:-0}" = 1 ] && contenders=torchclr,torchclr+compile,lightly,lightly+bf16
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== ResNet-18, CIFAR stem, 32 px, batch 512"
"$PYTHON" benchmarks/throughput.py --device cuda --data "$DATA" --batch-size 512 --rounds 3 --warmup 5 --steps 20 \
    --contenders "$contenders"
echo
echo "== ResNet-50, 224 px, batch 256 (5,120 images)"
"$PYTHON" benchmarks/throughput.py --device cuda --data "$DATA" --limit 5120 --arch resnet50 --image-size 224 \
    --batch-size 256 --rounds 2 --warmup 3 --steps 8 --contenders torchclr,lightly,lightly+bf16 --no-memory
