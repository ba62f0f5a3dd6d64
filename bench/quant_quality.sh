#!/usr/bin/env bash
# The quality of every llama.cpp file type on the default model (docs/QUANTS.md): each type made
# by `mixtral quantize` from an F32 GGUF of models/default, scored by `mixtral perplexity
# --kl-divergence` against the F32 model on a text it was not trained on; prints a markdown table.
#
#   bench/quant_quality.sh [OUT_DIR]     (env: CHUNKS=windows of 512 tokens, THREADS, TEXT, CALIB)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/mixtral}
OUT=${1:-runs/quant_quality}
CHUNKS=${CHUNKS:-40}
THREADS=${THREADS:-1}
TEXT=${TEXT:-../shared/corpora/wikitext-2/wiki.test.raw}          # not in the model's training data
CALIB=${CALIB:-../shared/corpora/tinyshakespeare/input.txt}       # importance-matrix text (its training data)
TYPES="Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 IQ4_NL IQ4_XS Q3_K_L Q3_K_M Q3_K_S IQ3_M IQ3_S IQ3_XXS Q2_K IQ2_M IQ2_S IQ2_XS IQ2_XXS IQ1_M IQ1_S"
mkdir -p "$OUT"

"$BIN" quantize models/default "$OUT/f32.gguf" --type f32 2>/dev/null
"$BIN" imatrix -m "$OUT/f32.gguf" -f "$CALIB" -c 512 --chunks 100 -t "$THREADS" -o "$OUT/imatrix.dat" 2>/dev/null
"$BIN" perplexity -m "$OUT/f32.gguf" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t "$THREADS" \
  --kl-divergence-base "$OUT/base.kld" -o json 2>/dev/null >"$OUT/f32.json"

echo "| file type | size (MiB) | bpw | ppl | Δppl | mean KLD | p99 KLD | same top % |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
f32_bytes=$(stat -c %s "$OUT/f32.gguf")
/usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print('| F32 (reference) | %.2f | 32.00 | %.2f ± %.2f | 0 | 0 | 0 | 100 |' % (int(sys.argv[2])/2**20, j['ppl'], j['ppl_error']))" "$OUT/f32.json" "$f32_bytes"
for t in $TYPES; do
  f="$OUT/$(echo "$t" | tr A-Z a-z).gguf"
  "$BIN" quantize "$OUT/f32.gguf" "$f" --type "$t" --imatrix "$OUT/imatrix.dat" -t "$THREADS" 2>/dev/null
  "$BIN" info -m "$f" >"$f.info" 2>/dev/null
  "$BIN" perplexity -m "$f" --kl-divergence-base "$OUT/base.kld" --kl-divergence -t "$THREADS" -o json 2>/dev/null >"$f.json"
  /usr/bin/python3 - "$t" "$f" "$OUT/f32.json" <<'PY'
import json, os, re, sys
t, f = sys.argv[1], sys.argv[2]
j = json.load(open(f + ".json"))
# Δppl against the F32 model's own perplexity: the base file's PPL(base) is lower than it, since
# its 16-bit log-probabilities floor every token more than 16 nats below the top one.
ppl_f32 = json.load(open(sys.argv[3]))["ppl"]
bpw = re.search(r"bits per weight:\s+([0-9.]+)", open(f + ".info").read()).group(1)
print("| %s | %.2f | %s | %.2f ± %.2f | %+.2f | %.5f ± %.5f | %.4f | %.2f ± %.2f |" % (
    t, os.path.getsize(f) / 2**20, bpw, j["ppl"]["value"], j["ppl"]["error"], j["ppl"]["value"] - ppl_f32,
    j["kld"]["mean"], j["kld"]["error"], j["kld"]["p99"], 100 * j["same_top"]["value"],
    100 * j["same_top"]["error"]))
PY
done
