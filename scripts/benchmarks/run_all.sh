#!/usr/bin/env bash
# Runs every benchmark behind BENCHMARKS.md and appends each JSON result line to results.jsonl,
# then draws chart.png from them. Usage: scripts/benchmarks/run_all.sh [python]
# (about 40 minutes on a quiet 2-core CPU; on 2026-11-29, at load 3-13, the ingest and 1-10 minute TTFT
# runs alone took 56 minutes. QUICK=1 runs the same commands at smoke-test sizes, and OUT=... CHART=...
# write the results and the chart elsewhere).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-python}
OUT=${OUT:-scripts/benchmarks/results.jsonl}
CHART=${CHART:-scripts/benchmarks/chart.png}
: > "$OUT"
# The tiny model's per-block work is a few milliseconds of small ops: with 2 threads on a shared
# 2-core machine every op waits at an OpenMP barrier for a core another job holds (10x slower),
# so tiny-model runs use one thread. The small model's big matmuls are measured at 1 and 2.
T1="--threads 1"
scale() { if [[ "${QUICK:-0}" == 1 ]]; then echo "$2"; else echo "$1"; fi; }

bench() {  # run one benchmark, keep its JSON lines (one per policy for ttft), note the machine's load and the date
    echo "+ $PY -m memstream bench $*" >&2
    local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$PY" -m memstream bench "$@" --json | grep '^{' | "$PY" -c 'import json, sys
for line in sys.stdin:
    print(json.dumps({**json.loads(line), "loadavg": sys.argv[1], "measured": sys.argv[2]}))' "$load" "$(date -u +%F)" >> "$OUT"
}

# 1. ingest: seconds per block, first vs last 10% of the stream
bench ingest --policy rekv --blocks "$(scale 2000 40)" $T1
bench ingest --policy full --blocks "$(scale 1000 40)" $T1
# the engine's default budget (256 tokens per frame): the 15000-token window fills by block 31
bench ingest --policy rekv --blocks "$(scale 2000 40)" --tokens-per-frame 256 $T1
# a small window (full by block 14): does anything else grow with the number of blocks?
bench ingest --policy rekv --blocks "$(scale 2000 40)" --n-local 1500 $T1
# the other bounded policies, at their defaults (memstream with the offline tiny expert)
bench ingest --policy memstream --expert tiny --blocks "$(scale 2000 40)" $T1
bench ingest --policy memstream --expert tiny --blocks "$(scale 2000 40)" --n-local 1500 $T1
bench ingest --policy hermes --blocks "$(scale 2000 40)" $T1
# sinks + a 4096-token window, no store (full by block 38)
bench ingest --policy sink-window --blocks "$(scale 2000 40)" $T1
# 2. time to first token after M minutes (fps 1: 30 blocks per minute); the policies of one command
#    ingest the same frames and take the questions in turn, so their ratios come from one run
for minutes in 1 2 5 10; do
    bench ttft --policy rekv,full,memstream,hermes,sink-window,offline --expert tiny --minutes "$(scale "$minutes" 0.2)" \
        --questions "$(scale 5 2)" $T1
done
# 30 minutes: hermes against retrieval (rekv, memstream) and full (offline would take hours)
bench ttft --policy rekv,hermes,memstream,full --expert tiny --minutes "$(scale 30 0.4)" --questions "$(scale 5 2)" $T1
# hermes with its budget matched to what rekv reads (16 blocks x 108 tokens)
bench ttft --policy rekv,hermes --budget 1728 --minutes "$(scale 30 0.4)" --questions "$(scale 5 2)" $T1
# ... and rekv at ReKV's reference topk (64 blocks = 6912 tokens, about hermes' default budget)
bench ttft --policy rekv,hermes --topk 64 --minutes "$(scale 30 0.4)" --questions "$(scale 5 2)" $T1
# 3. efficiency: ingest FLOP/s over the measured matmul peak, small model
for threads in 2 1; do
    bench efficiency --model small --calls "$(scale 4 1)" --warmup 1 --threads "$threads"
done
bench efficiency --model small --calls "$(scale 8 1)" --blocks-per-call 1 --warmup 2 --threads 2
# 4. memory: bytes per block and peak accelerator memory at two lengths
bench memory --lengths "$(scale 150,300 4,8)" $T1
bench memory --model small --tpf 64 --lengths "$(scale 3,6 2,3)"
bench memory --policies memstream,hermes --expert tiny --lengths "$(scale 150,300 4,8)" $T1

# 5. memstream: compression and AKS against rekv, tokens per frame 64..512 (sample video, interleaved)
bench compression --blocks "$(scale 32 4)" $T1
bench compression --blocks "$(scale 32 4)" --n-local 2000 $T1

"$PY" scripts/benchmarks/chart.py "$OUT" "$CHART"
