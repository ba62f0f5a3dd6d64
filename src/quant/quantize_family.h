// Internal to src/quant: the quantizers of the llama.cpp tensor types, one file per group, each
// byte for byte as ggml_quantize_chunk writes them. Each returns false for a dtype that is not its
// own. src: nrows rows of n_per_row floats (a multiple of the block size, checked by the caller);
// imatrix: n_per_row importance weights, or null (ggml's reference path).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace mixtral::quant {

bool quantize_legacy(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                     const float* imatrix);  // Q8_0 Q4_0 Q4_1 Q5_0 Q5_1      (quantize_legacy.cpp)
bool quantize_k(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                const float* imatrix);       // Q2_K Q3_K Q4_K Q5_K Q6_K      (quantize_k.cpp)
bool quantize_iq4_iq3(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                      const float* imatrix);   // IQ4_NL IQ4_XS IQ3_XXS IQ3_S (quantize_iq4_iq3.cpp)
bool quantize_iq2_iq1(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                      const float* imatrix);   // IQ2_XXS IQ2_XS IQ2_S IQ1_S IQ1_M (quantize_iq2_iq1.cpp)

}  // namespace mixtral::quant
