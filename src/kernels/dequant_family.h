// Internal to src/kernels: the scalar reference dequantizers of the llama.cpp types beyond
// Q8_0 / Q4_0 / Q4_K / Q6_K (dequant.cpp), one file per group. Each returns null for a dtype that
// is not its own. Every value is computed with the float operations of ggml's dequantize_row_*
// (checked bit for bit against ../shared/fixtures/blocks).
#pragma once
#include "core/dtype.h"
#include "kernels/dequant.h"

#include <cstring>

#include "core/fp16.h"

namespace mixtral {

// A block's fp16 field as a float (blocks may sit at any address: read it bytewise).
inline float half_at(const uint16_t& h) {
  uint16_t v;
  std::memcpy(&v, &h, 2);
  return f16_to_f32(v);
}

}  // namespace mixtral

namespace mixtral::ref {

DequantizeFn dequant_legacy_k(DType t);  // Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q5_K      (dequant_legacy_k.cpp)
DequantizeFn dequant_iq4_iq3(DType t);   // IQ4_NL IQ4_XS IQ3_XXS IQ3_S        (dequant_iq4_iq3.cpp)
DequantizeFn dequant_iq2_iq1(DType t);   // IQ2_XXS IQ2_XS IQ2_S IQ1_S IQ1_M   (dequant_iq2_iq1.cpp)

inline DequantizeFn dequant_family(DType t) {
  if (DequantizeFn f = dequant_legacy_k(t)) return f;
  if (DequantizeFn f = dequant_iq4_iq3(t)) return f;
  return dequant_iq2_iq1(t);
}

}  // namespace mixtral::ref
