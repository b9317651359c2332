#!/usr/bin/env bash
# torchclr beside lightly 1.6.0 on one GPU, in one offline command that ends within 6 minutes on an H100 or H200:
#   0. the CUDA-only tests (a fast-path step under torch.cuda's sync debug mode, the augmentation on the GPU);
#   1. ResNet-18 (CIFAR stem) at 32 px, batch 512: pairs/s, ratios, peak memory, the projected 200-epoch time;
#   2. ResNet-50 at 224 px, batch 256, on 5,120 of the same images (held at 32 px, crops blown up to 224).
#
#   DATA=/path/to/cifar10-jpeg.zip bash benchmarks/gpu.sh   # without DATA: the 5,000-image sample shipped with torchclr
#   COMPILE=1 bash benchmarks/gpu.sh                        # also torchclr with torch.compile (about a minute more)
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu.sh               # the same script at toy sizes, to check it on a CPU
#
# It runs with the machine's own python3 and torch (torchclr is taken from src/, nothing is installed for it) and
# needs no network and nothing outside the repository: lightly (and lightning-utilities, its one dependency beyond
# torch, torchvision and numpy) come from .whl/ when python3 lacks them; where pip works, first run
#   pip download --no-deps lightly==1.6.0 lightning-utilities -d .whl
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
if ! "$PYTHON" -c "import lightly" 2>/dev/null; then
    # --no-deps: lightly declares many requirements (hydra-core, ...) that its SimCLR parts never import
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/lightly-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/lightly-site"
fi
if [ -z "${DATA:-}" ]; then
    echo "DATA not set: using the CIFAR-10 sample shipped with torchclr (5,000 images; the same images per step as"
    echo "CIFAR-10, a shorter epoch). Set DATA=/path/to/cifar10-jpeg.zip for the full training set."
    DATA=sample
elif [ "$DATA" != sample ] && [ ! -e "$DATA" ]; then
    echo "DATA=$DATA does not exist: falling back to the CIFAR-10 sample shipped with torchclr (5,000 images)"
    DATA=sample
fi
if [ "${SMOKE:-0}" = 1 ]; then  # toy sizes: checks that every command runs, measures nothing
    small=(--batch-size 16 --rounds 1 --warmup 1 --steps 1 --workers 1) big=(--limit 64 --image-size 64 --batch-size 8)
    big_steps=(--rounds 1 --warmup 1 --steps 1 --workers 1)
else
    small=(--batch-size 512 --rounds 3 --warmup 5 --steps 20) big=(--limit 5120 --image-size 224 --batch-size 256)
    big_steps=(--rounds 2 --warmup 3 --steps 8)
fi
contenders=torchclr,lightly,lightly+bf16
[ "${COMPILE:-0}" = 1 ] && contenders=torchclr,torchclr+compile,lightly,lightly+bf16
"$PYTHON" -c "import torch, torchvision; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

echo
echo "== 0. CUDA-only tests (skipped without CUDA)"
"$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_sync_free.py tests/test_batched_transforms.py || echo "CUDA TESTS FAILED"

echo
echo "== 1. ResNet-18, CIFAR stem, 32 px ($DATA)   [$((SECONDS - start)) s so far]"
"$PYTHON" benchmarks/throughput.py --device "$DEVICE" --data "$DATA" "${small[@]}" --contenders "$contenders"

echo
echo "== 2. ResNet-50, 224 px ($DATA)   [$((SECONDS - start)) s so far]"
"$PYTHON" benchmarks/throughput.py --device "$DEVICE" --data "$DATA" --arch resnet50 "${big[@]}" "${big_steps[@]}" \
    --contenders torchclr,lightly,lightly+bf16 --no-memory
echo
echo "gpu.sh done in $((SECONDS - start)) s"
