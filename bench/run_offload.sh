#!/usr/bin/env bash
# Reproduces the expert-offloading tables of docs/BENCHMARKS.md (--memory-budget).
#   bash bench/run_offload.sh BUILD_DIR WORK_DIR
# Makes the full-depth Mixtral 8x7B-shape Q4_0 model with `mixtral make-model` if it is not
# there (26.3 GB, ~2.5 min), then decodes 16 tokens with the stable bench form at budgets of
# 8, 12, 16 and 20 GiB (the non-expert weights are read into memory; experts are read from
# disk with O_DIRECT into the cache, filled while loading), compares the cache policies and
# prefetch modes at 12 GiB, and runs the trained default model with a quarter and a half of
# its experts cached on real text, next to what its routing's temporal locality predicts.
# Leave the machine otherwise idle: a 20 GiB budget needs ~21 GB free.
set -euo pipefail
BUILD=${1:-build}
W=${2:-/tmp/full}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/$BUILD/mixtral
M=$W/mixtral-8x7b-q4_0.gguf
mkdir -p "$W"
[ -f "$M" ] || nice "$BIN" make-model --preset mixtral-8x7b --uniform --type q4_0 -o "$M"
N=${N:-16}
for b in ${BUDGETS:-8G 12G 16G 20G}; do
  echo "## budget $b (lfu, router prefetch)"
  "$BIN" bench -m "$M" -p 0 -n $N -t 2 -r 1 --memory-budget $b -o json
done
for cfg in "lru none" "lfu none" "lru router" "lfu router" "lfu previous" "lfu both"; do
  set -- $cfg
  echo "## budget 12G, policy $1, prefetch $2"
  "$BIN" bench -m "$M" -p 0 -n $N -t 2 -r 1 --memory-budget 12G --cache-policy $1 --prefetch $2 -o json
done
echo "## prefill, budget 20G"
"$BIN" bench -m "$M" -p 64 -n 0 -t 2 -r 1 --memory-budget 20G
# The trained default model (4 layers x 8 experts) on 3000 tokens of WikiText-2, one token per
# forward pass (-b 1), with 8 and 16 of its 32 experts cached.
for slots in 8 16; do
  for cfg in "lru none" "lfu none" "lfu router"; do
    set -- $cfg
    echo "## default model, $slots of 32 experts, policy $1, prefetch $2"
    "$BIN" routes --out "$W/routes-default" --max-tokens 3000 -b 1 -t 2 \
      --corpus wikitext="$ROOT/../shared/corpora/wikitext-2/wiki.test.raw" \
      --memory-budget 1G --expert-slots $slots --cache-policy $1 --prefetch $2 2>/dev/null | grep "expert cache"
  done
done
