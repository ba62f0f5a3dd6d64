// Random-weight models of any Mixtral-family shape, written straight to GGUF: `mixtral
// make-model`. A full-depth Mixtral 8x7B (46.7B parameters, 93 GB in BF16) is generated,
// quantized and written one tensor at a time (GgufWriter's producer form), so memory stays at
// about one tensor (the largest: a layer's stacked experts, ~264 MB in Q4_0).
//
// The weights have the scales of ../shared/fixtures/gen_mixtral.py (std 0.02 for matrices,
// 1 + 0.05·x for RMSNorm weights, router logits of std ~5.66), so the model behaves like the
// fixture slices: finite logits, well-separated and varied routing. The draws are UNIFORM, not
// normal (cheap to make: 46.7B values in a few minutes on two cores), with the same std:
//
//   key(tensor, row) = splitmix64(splitmix64(seed) ^ splitmix64(fnv1a64(tensor name)) + row)
//   u(j)             = fmix32(fmix32(j ^ lo32(key)) ^ hi32(key))     j = 0 .. cols-1
//   value            = offset + int32(u) · 2^-31 · sqrt(3) · std      int32(u)·2^-31 ∈ [-1, 1)
//
// (fmix32: MurmurHash3's finaliser, a bijection of 32-bit words.) Every value depends only on
// (seed, tensor name, row, column): the bytes are the same for any thread count, and a model
// with fewer layers or experts holds exactly the first layers / experts of a bigger one.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"
#include "model/quant_mix.h"
#include "text/vocab.h"

namespace mixtral {

struct RandomModelOptions {
  DType type = DType::Q4_0;  // weight matrices (a row that does not fit its blocks falls back
                             // to Q8_0, then F16); norms and routers stay F32
  // Instead of `type` for every matrix: the type llama-quantize gives each tensor in this file
  // type (random_model_plan), and general.file_type recorded as `mixtral quantize` records it.
  std::optional<FileType> file_type;
  uint64_t seed = 1;
  int threads = 0;  // 0: all cores; the output does not depend on it
  float std_linear = 0.02f;  // embeddings, v, o, experts, LM head
  float std_qk = 0.02f;      // q, k
  float std_norm = 0.05f;    // RMSNorm weights are 1 + x·std_norm
  float std_gate = 0.f;      // router; 0: 4·sqrt(2)/sqrt(dim), router logits of std ~5.66
  std::string name = "mixtral.cpp random weights";
  // Called after each slice of rows with the parameters made so far and in all.
  std::function<void(int64_t done, int64_t total)> progress;
};

// A named shape with the weight scales gen_mixtral.py gives it: "mixtral-8x7b",
// "mixtral-8x22b", "mistral-7b" (Config::preset's shapes, std_qk 0.02 as the "slice" fixture),
// or "tiny" (the "tiny" fixture: dim 128, ffn 256, 2 layers, 4/2 heads, 8 experts top-2,
// vocabulary 32000, std_qk 0.08), or "tiny-q" (../shared's tiny-q preset: dim 256, ffn 512,
// 2 layers, 8/4 heads, 8 experts top-2, std_qk 0.06; its rows fit the 256-value K and IQ blocks).
// Throws Error for an unknown name.
struct RandomPreset {
  Config config;
  float std_qk;
};
RandomPreset random_model_preset(const std::string& name);

// Writes `path`: llama.cpp's GGUF layout (set_gguf_metadata's KVs with `vocab` embedded,
// experts stacked as blk.N.ffn_{gate,up,down}_exps.weight), the tensors in export_gguf's order.
// `vocab` must have c.vocab_size pieces.
void make_random_gguf(const Config& c, const Vocab& vocab, const std::string& path, const RandomModelOptions& o);

// The tensors make_random_gguf writes for `c`, in the file's order (ne innermost first).
std::vector<TensorDesc> random_model_tensors(const Config& c);

// The type of each tensor of random_model_tensors(c), in that order, in file type `ft`:
// plan_quant_types' choice for a model of c's layers, experts and heads, without an importance
// matrix. Throws Error for what llama-quantize refuses without one (a file type that needs it,
// or a tensor of a very-low-bit type: Mixtral's IQ3_XXS puts attn_q in IQ2_S) and for a type
// this build cannot quantize.
std::vector<PlannedTensor> random_model_plan(const Config& c, FileType ft);

// splitmix64(seed) ^ splitmix64(fnv1a64(name)): what key(tensor, row) starts from.
uint64_t random_tensor_key(uint64_t seed, const std::string& name);
// Row `row` of a tensor: n values offset + uniform · std (see above).
void random_row(uint64_t tensor_key, int64_t row, float std, float offset, float* out, int64_t n);

}  // namespace mixtral
