#!/usr/bin/env bash
# Same-run comparison with peer engines on llama-quantize's own files of the real-shape slice.
#   bash bench/run_peers.sh BUILD_DIR WORK_DIR PEER_DIR TYPE...     (e.g. Q4_K_M Q5_K_M Q2_K)
# PEER_DIR holds CPU-only Release builds made outside the project (docs/DEVELOPERS.md):
#   PEER_DIR/llama.cpp (c392e509, its llama-quantize makes the files), PEER_DIR/ik (ik_llama.cpp),
#   PEER_DIR/mainline (ngxson/llama.cpp). Weights are read into memory by every engine.
set -euo pipefail
BUILD=$1 W=$2 PEER=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/$BUILD/mixtral
mkdir -p "$W"
[ -f "$W/slice-f16.gguf" ] || "$BIN" make-model --preset mixtral-8x7b --layers 2 --type f16 -o "$W/slice-f16.gguf"
for t in "$@"; do
  M=$W/slice-$(echo "$t" | tr A-Z a-z).gguf
  [ -f "$M" ] || "$PEER/llama.cpp/build/bin/llama-quantize" "$W/slice-f16.gguf" "$M" "$t" 2
  echo "## $t: mixtral.cpp"
  "$BIN" bench -m "$M" -p 512 -n 32 -t 2 -r 2 --no-mmap --measure-limits
  echo "## $t: ik_llama.cpp"
  "$PEER/ik/build/bin/llama-bench" -m "$M" -p 512 -n 32 -t 2 -r 2 -rtr 1 -mmp 0
  echo "## $t: llama.cpp mainline"
  "$PEER/mainline/build/bin/llama-bench" -m "$M" -p 512 -n 32 -t 2 -r 2 -mmp 0
done
