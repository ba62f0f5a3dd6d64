// llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*, the id in a GGUF's general.file_type) and the
// tensor type llama-quantize picks for each weight of a llama-architecture model (Mistral,
// Mixtral) in each of them, as at llama.cpp c392e509. A file type names a recipe, not one
// tensor type: a Q4_K_M Mixtral holds Q4_K, Q5_K, Q6_K, Q8_0 and F32 tensors.
//
// The choice for one tensor depends on its role (token_embd, attn_v, ffn_down, ...), its layer,
// the model's expert and head counts, whether an importance matrix is given, and its row length
// (types whose block does not divide a row fall back to another type). attn_v's rules count the
// attn_v tensors seen so far rather than parsing the layer, so the choice is made by walking all
// tensors in llama-quantize's order (plan_quant_types).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace mixtral {

// LLAMA_FTYPE_* ids (llama.h); the gaps are ids llama.cpp retired.
enum class FileType : uint32_t {
  ALL_F32 = 0, MOSTLY_F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, Q5_0 = 8, Q5_1 = 9, Q2_K = 10,
  Q3_K_S = 11, Q3_K_M = 12, Q3_K_L = 13, Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17,
  Q6_K = 18, IQ2_XXS = 19, IQ2_XS = 20, Q2_K_S = 21, IQ3_XS = 22, IQ3_XXS = 23, IQ1_S = 24,
  IQ4_NL = 25, IQ3_S = 26, IQ3_M = 27, IQ2_S = 28, IQ2_M = 29, IQ4_XS = 30, IQ1_M = 31,
  MOSTLY_BF16 = 32,
};

struct FileTypeInfo {
  FileType id;
  const char* name;      // llama-quantize's name: "Q4_K_M", "IQ2_XXS", "F16"
  DType base;            // the type of the tensors no rule singles out
  bool needs_imatrix;    // llama-quantize refuses the file type without --imatrix
};

// Every file type llama-quantize writes (TQ1_0/TQ2_0 aside), in LLAMA_FTYPE id order.
std::span<const FileTypeInfo> all_file_types();
const FileTypeInfo& file_type_info(FileType t);
// The 25 types published Mixtral GGUF files come in (issue 13's list; no Q2_K_S, IQ3_XS, F*).
std::span<const FileType> published_file_types();

// Case-insensitive; also llama-quantize's aliases Q3_K, Q4_K, Q5_K (= the _M mixes). nullopt
// when unknown.
std::optional<FileType> file_type_from_name(const std::string& name);
// "Q4_K_M" for a known id, else "unknown (N)".
std::string file_type_name(uint32_t id);

// llama-quantize's refusal for a file type that needs an importance matrix.
inline constexpr const char* kImatrixRequiredReason =
    "Please do not use IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an "
    "importance matrix";

// What the rules read of the model (hparams; names as in llama.cpp's quantize state).
struct MixModel {
  int n_layers = 0;
  int n_experts = 0;    // 0 or 1: dense
  int n_heads = 0;
  int n_kv_heads = 0;
  bool has_imatrix = false;
  int n_gqa() const { return n_kv_heads > 0 ? n_heads / n_kv_heads : 0; }
  // llama.cpp's LLM_TYPE_70B (Llama-2/3 70B: 80 dense layers with grouped kv heads), which
  // gets more bits for attn_v.
  bool is_70b() const { return n_experts <= 1 && n_layers == 80 && n_heads != n_kv_heads; }
};

struct TensorDesc {
  std::string name;        // GGUF name, "blk.0.attn_v.weight"
  std::vector<int64_t> ne; // innermost first, as in GGUF
};

// llama-quantize converts only these: 2-D/3-D ".weight" tensors other than norms and the router.
bool is_quantizable(const TensorDesc& t);

// llama-quantize's output order: tensors outside blocks first, then block by block; by name
// within each (its loader's weight map order).
std::vector<TensorDesc> llama_quantize_order(std::vector<TensorDesc> tensors);

// The type of every tensor of `tensors` (in llama-quantize's order: llama_quantize_order) in
// file type `ft`. A tensor that is not quantizable keeps `source` (its type in the input file).
// Throws Error for a file type that is not quantized by rules (F32/F16/BF16 get their type for
// every quantizable tensor).
struct PlannedTensor {
  TensorDesc tensor;
  DType type;
  bool fallback = false;  // the rule's type did not fit the row length
};
std::vector<PlannedTensor> plan_quant_types(FileType ft, const MixModel& model,
                                            const std::vector<TensorDesc>& tensors,
                                            const std::vector<DType>& source);

// llama-quantize refuses to write `type` for this tensor without importance weights for it
// ("Missing importance matrix for tensor ... in a very low-bit quantization").
bool tensor_needs_imatrix(FileType ft, const std::string& name, DType type);

}  // namespace mixtral
