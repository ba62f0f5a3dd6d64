// Writing a loaded model (any format) as a GGUF file in llama.cpp's layout: `mixtral quantize`,
// and tests that need the same weights in another type or tensor layout.
#pragma once
#include <functional>
#include <string>

#include "core/dtype.h"
#include "model/model.h"
#include "text/vocab.h"

namespace mixtral {

class GgufWriter;

struct ExportOptions {
  DType type = DType::F16;  // type of the weight matrices (norms and the router stay F32)
  // With Q4_K: the Q4_K_M recipe — attn_v, ffn_down and the LM head in Q6_K, the rest Q4_K.
  bool k_quant_mix = false;
  // Write experts as one tensor each (blk.N.ffn_gate.E.weight, the early Mixtral GGUF layout)
  // instead of stacked (blk.N.ffn_gate_exps.weight).
  bool per_expert_layout = false;
  std::string name = "mixtral.cpp export";
  // Called after each converted matrix with the parameters converted so far and in all.
  std::function<void(int64_t done, int64_t total)> progress;
};

// Converts every matrix (dequantize → float32 → quantize with the reference quantizers) and
// writes `path`. HF q/k rows are permuted into GGUF's order, so RoPE is adjacent-pair in the
// result. A matrix whose row length is not a multiple of the type's block falls back to Q8_0,
// then F16 (as llama-quantize does). Holds the converted tensors in memory until written.
// Throws Error when a matrix is tiled: load the model with LoadOptions::tiles = false.
void export_gguf(const Model& model, const std::string& path, const ExportOptions& options);

// The KVs every exported file starts with, in llama.cpp's names: the llama-architecture
// hyperparameters of `c` and the SentencePiece vocabulary (tokenizer.ggml.*). Also used by
// make_random_gguf (model/random_model.h).
void set_gguf_metadata(GgufWriter& g, const Config& c, const Vocab& vocab, const std::string& name);

// `want`, or the first of Q8_0, F16, F32 whose block divides a row of `cols` values (as
// llama-quantize falls back for rows that do not fit the requested type's blocks).
DType fit_type(DType want, int64_t cols);

}  // namespace mixtral
