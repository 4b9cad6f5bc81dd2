#!/usr/bin/env bash
# The real-size explanation bench on one CUDA GPU: Faster R-CNN R50-FPN at 800 px, bfloat16
# autocast (checked against float32 maps), channels_last, batch sizes swept for GPU memory (an
# out-of-memory size ends the sweep). It prints seconds per explained detection per method and
# the ratio to the floor K x (forward + backward), and the target E2X K=32 <= 0.5 s/detection.
#
#   bash bench/gpu_check.sh [OUT]          on a GPU machine (default OUT: reports/bench/gpu)
#   bash bench/gpu_check.sh --tiny [OUT]   CPU smoke test at 128 px, as CI runs it
#
# E2X (the e2x executable) and PYTHON default to the repository's .venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
e2x="${E2X:-$here/.venv/bin/e2x}"
python="${PYTHON:-$here/.venv/bin/python}"

if [[ "${1:-}" == "--tiny" ]]; then
    out="${2:-${TMPDIR:-/tmp}/e2x-gpu-check}"
    "$e2x" bench realsize --tiny --amp --channels-last --no-progress --out "$out" >/dev/null
    cat "$out/realsize.md"
    exit 0
fi

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False);" \
        "'bash bench/gpu_check.sh --tiny' runs the CPU smoke test" >&2
    exit 2
fi
out="${1:-$here/reports/bench/gpu}"
"$python" -c 'import torch; print("device:", torch.cuda.get_device_name(0))'
"$e2x" bench realsize --arch fasterrcnn_resnet50_fpn --min-size 800 --set device=cuda \
    --amp --channels-last --batch-sizes 8 16 32 64 --no-progress --out "$out" >/dev/null
cat "$out/realsize.md"
