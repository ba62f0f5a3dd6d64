#!/usr/bin/env bash
# Our quantizer against llama-quantize on the default model (docs/QUANTS.md): each file type made
# by both from the same F32 GGUF and importance matrix, both files scored by `mixtral perplexity
# --kl-divergence` against the same F32 base, and whether the two files' tensors are the same bytes
# (bench/gguf_same_tensors.py; the metadata differs, e.g. the importance matrix's path).
# Needs a llama.cpp build made outside the project (docs/DEVELOPERS.md).
#
#   bench/quant_vs_llama.sh LLAMA_QUANTIZE [OUT_DIR] [TYPE...]   (env: CHUNKS, THREADS, TEXT, CALIB)
set -euo pipefail
cd "$(dirname "$0")/.."
LQ=$1; shift
BIN=${BIN:-build/mixtral}
OUT=${1:-runs/quant_vs_llama}; shift || true
TYPES=${*:-IQ4_NL IQ4_XS IQ3_M IQ3_S IQ3_XXS IQ2_M IQ2_S IQ2_XS IQ2_XXS IQ1_M IQ1_S}
CHUNKS=${CHUNKS:-40}
THREADS=${THREADS:-1}
TEXT=${TEXT:-../shared/corpora/wikitext-2/wiki.test.raw}
CALIB=${CALIB:-../shared/corpora/tinyshakespeare/input.txt}
mkdir -p "$OUT"
"$BIN" quantize models/default "$OUT/f32.gguf" --type f32 2>/dev/null
"$BIN" imatrix -m "$OUT/f32.gguf" -f "$CALIB" -c 512 --chunks 100 -t "$THREADS" -o "$OUT/imatrix.dat" 2>/dev/null
"$BIN" perplexity -m "$OUT/f32.gguf" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t "$THREADS" \
  --kl-divergence-base "$OUT/base.kld" -o json 2>/dev/null >"$OUT/f32.json"
kld() {  # mean KLD ± error and same-top % of FILE against the base
  "$BIN" perplexity -m "$1" --kl-divergence-base "$OUT/base.kld" --kl-divergence -t "$THREADS" -o json 2>/dev/null |
    /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); print('%.5f ± %.5f | %.2f' % (j['kld']['mean'], j['kld']['error'], 100*j['same_top']['value']))"
}
echo "| file type | mixtral quantize: mean KLD | same top % | llama-quantize: mean KLD | same top % | tensors |"
echo "|---|---:|---:|---:|---:|---|"
for t in $TYPES; do
  l=$(echo "$t" | tr A-Z a-z)
  "$BIN" quantize "$OUT/f32.gguf" "$OUT/ours-$l.gguf" --type "$t" --imatrix "$OUT/imatrix.dat" -t "$THREADS" 2>/dev/null
  "$LQ" --imatrix "$OUT/imatrix.dat" "$OUT/f32.gguf" "$OUT/llama-$l.gguf" "$t" "$THREADS" >/dev/null 2>&1
  same=$(/usr/bin/python3 bench/gguf_same_tensors.py "$OUT/ours-$l.gguf" "$OUT/llama-$l.gguf")
  echo "| $t | $(kld "$OUT/ours-$l.gguf") | $(kld "$OUT/llama-$l.gguf") | $same |"
done
