#!/usr/bin/env bash
# The GPU check of issue 15, for a session lent a CUDA device (an H200): about 8 minutes at most.
#
#   bash scripts/device_check.sh [OUT_DIR]      # default: $OUT (the device tool's folder), else ./device_results
#
# Builds random-weight models at the real full-depth shapes of Qwen2.5-VL-7B and SmolVLM2-2.2B (and Qwen3-VL-8B
# when that family is registered with an 8B-shaped preset; otherwise it says it skipped it) in bf16 on CUDA;
# checks the oracles there (streaming `full` vs one stock forward, `rekv` retrieving everything vs `full`,
# relative bf16 tolerance 2e-2 of the largest logit); measures ingest blocks/s and TTFT at 10 and 60 minutes
# for rekv, memstream-internal and hermes. Writes device_check.md (tables for BENCHMARKS.md) and
# device_check.jsonl to OUT_DIR. The Python part is `python -m memstream bench device`; `--tiny` runs it on
# the CPU with the tiny presets (tests/test_device_check.py does).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_results}}"
python="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then python=.venv/bin/python; fi
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --tiny for a dry run')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 470 "$python" -m memstream bench device --out "$out" "${@:2}" 2>&1 | tee "$out.log"
echo "figures: $out/device_check.md"
