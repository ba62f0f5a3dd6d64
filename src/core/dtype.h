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
  Q8_0 = 8,
  Q4_K = 12,
  Q6_K = 14,
  BF16 = 30,
};

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
  }
  return {"?", 1, 0};
}

inline const char* dtype_name(DType t) { return dtype_info(t).name; }
inline bool is_quantized(DType t) { return dtype_info(t).block_size > 1; }

// The dtype for a GGUF ggml_type id, or nullopt when this engine does not support it.
inline std::optional<DType> dtype_from_ggml(uint32_t id) {
  switch (id) {
    case 0: case 1: case 2: case 8: case 12: case 14: case 30: return DType(id);
    default: return std::nullopt;
  }
}

// Parses "f32", "F16", "q4_k", ... ; nullopt when unknown.
std::optional<DType> dtype_from_name(const std::string& name);

// Bytes of one row of `cols` values; cols must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t cols) {
  const DTypeInfo i = dtype_info(t);
  return size_t(cols / i.block_size) * i.block_bytes;
}

}  // namespace mixtral
