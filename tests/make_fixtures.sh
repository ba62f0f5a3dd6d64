#!/usr/bin/env bash
# Generates the tiny fixture models from ../shared/fixtures into $2 (once; reruns are no-ops).
# Without ../shared: skips (exit 0) with a message, or fails when CI=true.
set -euo pipefail
SHARED=$1
OUT=$2
F=$SHARED/fixtures
if [ ! -d "$F" ]; then
  if [ "${CI:-}" = "true" ]; then echo "make_fixtures: $F is missing (required when CI=true)"; exit 1; fi
  echo "make_fixtures: $F is missing; fixture tests will be skipped"; exit 0
fi
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
TOK=$SHARED/tokenizers/tokenizer.model.v1
HERE=$(dirname "$0")
# tiny-q-f32.gguf (QUANTS.md section 1): the F32 source of llama.cpp's 25 quantized references.
# Built on its own so that build directories made before it get it too.
if [ ! -f "$OUT/gguf/tiny-q-f32.gguf" ]; then
  mkdir -p "$OUT/gguf"
  $PY "$F/gen_mixtral.py" --config "$F/presets/tiny-q.json" --out "$OUT/hf/tiny-q" --tokenizer "$TOK"
  $PY "$HERE/make_tiny_q_gguf.py" "$F" "$OUT/hf/tiny-q" "$OUT/gguf/tiny-q-f32.gguf"
fi
if [ -f "$OUT/.done" ]; then echo "make_fixtures: already built in $OUT"; exit 0; fi
mkdir -p "$OUT"
$PY "$F/gen_mixtral.py" --preset tiny --out "$OUT/hf/tiny" --tokenizer "$TOK"
$PY "$F/gen_mixtral.py" --preset tiny-dense --out "$OUT/hf/tiny-dense" --tokenizer "$TOK"
# Extra shapes for this project's own tests (no llama.cpp reference; checked against a
# float64 reference forward and the F32 files): BF16 and F16 storage of tiny; an odd shape
# (3 layers, 6/2 heads of 16, 4 experts top-3, sliding window); a k-quant-friendly width (256).
$PY "$F/gen_mixtral.py" --preset tiny --dtype BF16 --out "$OUT/hf/tiny-bf16" --tokenizer "$TOK"
$PY "$F/gen_mixtral.py" --preset tiny --dtype F16 --out "$OUT/hf/tiny-f16" --tokenizer "$TOK"
$PY "$F/gen_mixtral.py" --config '{"hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 3, "dtype": "F32", "seed": 77, "std_qk": 0.08}' --out "$OUT/hf/odd" --tokenizer "$TOK"
# the odd model uses a sliding window of 8 tokens
$PY -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['sliding_window']=8; json.dump(c, open(p,'w'), indent=2)" "$OUT/hf/odd/config.json"
$PY "$F/gen_mixtral.py" --config '{"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "dtype": "F32", "seed": 99, "std_qk": 0.08}' --out "$OUT/hf/k256" --tokenizer "$TOK"
$PY "$F/make_gguf.py" --hf-root "$OUT/hf" --out-dir "$OUT/gguf" --only tiny-f32,tiny-q8_0,tiny-q4_0,tiny-dense-f32
FA=$(realpath "$F")
(cd "$OUT" && sha256sum -c --ignore-missing "$FA/SHA256SUMS")
touch "$OUT/.done"
