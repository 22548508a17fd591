#!/usr/bin/env bash
# Set up if needed, then run the main job: `vitquant quantize` with any extra arguments.
# With none: real DeiT-Tiny, W4A4, BitLog2_Half_17, 32 calibration images of the shared ImageNet
# sample, evaluated on the other 968.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/vitquant quantize "$@"
