// quantize.h: the float types here, every block type through its group's quantizer
// (quantize_family.h).
#include "quant/quantize.h"
#include "quant/quantize_family.h"

#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fp16.h"

namespace mixtral {

size_t quantized_bytes(DType t, int64_t n) {
  const DTypeInfo info = dtype_info(t);
  if (info.block_bytes == 0) fail("quantized_bytes", "unknown dtype " + std::to_string(int(t)));
  if (n < 0 || n % info.block_size != 0)
    fail("quantized_bytes", std::string(info.name) + " needs a multiple of " +
                                std::to_string(info.block_size) + " values, got " +
                                std::to_string(n));
  return size_t(n / info.block_size) * info.block_bytes;
}

void quantize_row(DType t, const float* src, uint8_t* dst, int64_t n) {
  const size_t bytes = quantized_bytes(t, n);  // validates n
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, bytes);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    default: quantize_rows(t, src, dst, 1, n, nullptr); return;
  }
}

bool quantize_requires_imatrix(DType t) {
  return t == DType::IQ2_XXS || t == DType::IQ2_XS || t == DType::IQ1_S;
}

void quantize_rows(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                   const float* imatrix) {
  const size_t rb = quantized_bytes(t, n_per_row);  // validates n_per_row
  if (!imatrix && quantize_requires_imatrix(t))
    fail("quantize", std::string(dtype_name(t)) + " needs an importance matrix (--imatrix)");
  if (t == DType::F32 || t == DType::F16 || t == DType::BF16) {
    for (int64_t r = 0; r < nrows; ++r) quantize_row(t, src + r * n_per_row, dst + size_t(r) * rb, n_per_row);
    return;
  }
  if (quant::quantize_legacy(t, src, dst, nrows, n_per_row, imatrix)) return;
  if (quant::quantize_k(t, src, dst, nrows, n_per_row, imatrix)) return;
  if (quant::quantize_iq4_iq3(t, src, dst, nrows, n_per_row, imatrix)) return;
  if (quant::quantize_iq2_iq1(t, src, dst, nrows, n_per_row, imatrix)) return;
  fail("quantize", std::string("no quantizer for ") + dtype_name(t));
}

}  // namespace mixtral
