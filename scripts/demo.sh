#!/usr/bin/env bash
# make demo: run the engine end to end on the embedded default model (models/default, a small
# sparse mixture of experts trained by this project on Shakespeare and Gutenberg texts in five
# languages; see models/default/MODEL_CARD.md). Without it (a checkout that predates it) the demo
# falls back to the random-weight tiny Mixtral of ../shared/fixtures, and says so.
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/$BUILD/mixtral
cd "$ROOT"

echo "== the published Mixtral 8x7B configuration =="
"$BIN" info --preset mixtral-8x7b
echo
if [ -f models/default/config.json ]; then
  echo "== the embedded default model =="
  "$BIN" info -m models/default
  echo
  echo "== generate (sampled, seed 42) =="
  "$BIN" generate -p "ROMEO:" -n 120 --seed 42 --temp 0.8 -v
  echo
  "$BIN" generate -p "Alice was beginning to get very tired" -n 80 --seed 7 --temp 0.8
else
  FX=$ROOT/$BUILD/fixtures
  bash "$ROOT/tests/make_fixtures.sh" "$ROOT/../shared" "$FX" >/dev/null
  echo "== no models/default: using the random-weight tiny fixture (expect noise, not language) =="
  "$BIN" info -m "$FX/gguf/tiny-q8_0.gguf"
  "$BIN" generate -m "$FX/gguf/tiny-q8_0.gguf" -p "Once upon a time" -n 48 --seed 42 -v
fi
