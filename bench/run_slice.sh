#!/usr/bin/env bash
# Reproduces the slice-model tables of docs/BENCHMARKS.md.
#   bash bench/run_slice.sh BUILD_DIR WORK_DIR
# Makes the real-shape 2-layer Mixtral slice with ../shared/fixtures/gen_mixtral.py (BF16 HF,
# 6.3 GB; ~5 min), converts it with `mixtral quantize` (F16, Q8_0, Q4_0, Q4_K_M), then runs
# `mixtral bench` on each with the weights read into memory (--no-mmap: this VM evicts mapped
# pages left idle for ~60 s) and the machine's read bandwidth measured beside each model (it
# swings by 1.5x within minutes on this VM, so every ratio uses its own probe).
set -euo pipefail
BUILD=${1:-build}
W=${2:-/tmp/mixtral-slice}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/$BUILD/mixtral
F=$ROOT/../shared/fixtures
mkdir -p "$W/gguf"
[ -f "$W/hf/slice/model.safetensors" ] ||
  /usr/bin/python3 "$F/gen_mixtral.py" --preset slice --out "$W/hf/slice" --tokenizer "$ROOT/../shared/tokenizers/tokenizer.model.v1"
for t in f16 q8_0 q4_0 q4_k_m; do
  [ -f "$W/gguf/slice-$t.gguf" ] || "$BIN" quantize "$W/hf/slice" "$W/gguf/slice-$t.gguf" --type $t
done
P=${P:-512}; N=${N:-32}; T=${T:-2}; R=${R:-3}
echo "## BF16 (HF safetensors)"
"$BIN" bench -m "$W/hf/slice" -p $P -n $N -t $T -r $R --no-mmap --measure-limits
for t in f16 q8_0 q4_0 q4_k_m; do
  echo "## $t"
  "$BIN" bench -m "$W/gguf/slice-$t.gguf" -p $P -n $N -t $T -r $R --no-mmap --measure-limits
done
