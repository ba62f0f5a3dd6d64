// Element types of weight tensors. Quantized types are dtypes like any other: a row of `cols`
// values occupies row_bytes(dtype, cols) bytes, made of blocks of block_size(dtype) values.
// The numeric values are GGUF's ggml_type ids, so the GGUF reader needs no table.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace mixtral {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  IQ1_M = 29,
  BF16 = 30,
};

// Every DType, in ggml id order (for tables, tests and name lookups).
inline constexpr DType kAllDTypes[] = {
    DType::F32,  DType::F16,     DType::Q4_0,   DType::Q4_1,    DType::Q5_0,   DType::Q5_1,
    DType::Q8_0, DType::Q2_K,    DType::Q3_K,   DType::Q4_K,    DType::Q5_K,   DType::Q6_K,
    DType::IQ2_XXS, DType::IQ2_XS, DType::IQ3_XXS, DType::IQ1_S, DType::IQ4_NL, DType::IQ3_S,
    DType::IQ2_S, DType::IQ4_XS, DType::IQ1_M,  DType::BF16};

struct DTypeInfo {
  const char* name;
  int64_t block_size;   // values per block
  size_t block_bytes;   // bytes per block
};

inline DTypeInfo dtype_info(DType t) {
  switch (t) {
    case DType::F32: return {"F32", 1, 4};
    case DType::F16: return {"F16", 1, 2};
    case DType::BF16: return {"BF16", 1, 2};
    case DType::Q8_0: return {"Q8_0", 32, 34};
    case DType::Q4_0: return {"Q4_0", 32, 18};
    case DType::Q4_K: return {"Q4_K", 256, 144};
    case DType::Q6_K: return {"Q6_K", 256, 210};
    case DType::Q4_1: return {"Q4_1", 32, 20};
    case DType::Q5_0: return {"Q5_0", 32, 22};
    case DType::Q5_1: return {"Q5_1", 32, 24};
    case DType::Q2_K: return {"Q2_K", 256, 84};
    case DType::Q3_K: return {"Q3_K", 256, 110};
    case DType::Q5_K: return {"Q5_K", 256, 176};
    case DType::IQ4_NL: return {"IQ4_NL", 32, 18};
    case DType::IQ4_XS: return {"IQ4_XS", 256, 136};
    case DType::IQ3_XXS: return {"IQ3_XXS", 256, 98};
    case DType::IQ3_S: return {"IQ3_S", 256, 110};
    case DType::IQ2_XXS: return {"IQ2_XXS", 256, 66};
    case DType::IQ2_XS: return {"IQ2_XS", 256, 74};
    case DType::IQ2_S: return {"IQ2_S", 256, 82};
    case DType::IQ1_S: return {"IQ1_S", 256, 50};
    case DType::IQ1_M: return {"IQ1_M", 256, 56};
  }
  return {"?", 1, 0};
}

inline const char* dtype_name(DType t) { return dtype_info(t).name; }
inline bool is_quantized(DType t) { return dtype_info(t).block_size > 1; }

// The dtype for a GGUF ggml_type id, or nullopt when this engine does not support it.
inline std::optional<DType> dtype_from_ggml(uint32_t id) {
  for (DType t : kAllDTypes)
    if (uint32_t(t) == id) return t;
  return std::nullopt;
}

// Parses "f32", "F16", "q4_k", ... ; nullopt when unknown.
std::optional<DType> dtype_from_name(const std::string& name);

// Bytes of one row of `cols` values; cols must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t cols) {
  const DTypeInfo i = dtype_info(t);
  return size_t(cols / i.block_size) * i.block_bytes;
}

}  // namespace mixtral
