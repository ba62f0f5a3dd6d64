#!/usr/bin/env bash
# make demo: run the engine end to end on a model this project builds itself.
# Until a trained default model ships (issue: training), the demo model is the deterministic
# random-weight "tiny" Mixtral of ../shared/fixtures (2 layers, 8 experts, top-2, the real
# 32000-piece tokenizer): the pipeline is real, the text it generates is noise.
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FX=$ROOT/$BUILD/fixtures
bash "$ROOT/tests/make_fixtures.sh" "$ROOT/../shared" "$FX" >/dev/null
BIN=$ROOT/$BUILD/mixtral
if [ ! -f "$FX/gguf/tiny-q8_0.gguf" ]; then
  echo "demo: ../shared/fixtures is needed to build the demo model" >&2
  exit 1
fi
echo "== the published Mixtral 8x7B configuration =="
"$BIN" info --preset mixtral-8x7b
echo
echo "== the demo model (random weights: expect noise, not language) =="
"$BIN" info -m "$FX/gguf/tiny-q8_0.gguf"
echo
echo "== tokenize =="
"$BIN" tokenize -m "$FX/gguf/tiny-q8_0.gguf" -p "Mixtral routes every token to two of eight experts."
echo
echo "== generate (Q8_0 GGUF, sampled, seed 42) =="
"$BIN" generate -m "$FX/gguf/tiny-q8_0.gguf" -p "Once upon a time" -n 48 --seed 42 -v
