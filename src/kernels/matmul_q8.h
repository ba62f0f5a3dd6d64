// Matrix products against quantized weights (Q8_0, Q4_0, Q4_K, Q6_K) with int8 activations, as
// llama.cpp computes them: x is quantized to blocks of 32 int8 values with one scale each, and
// each block's products with the weights are summed exactly in integers (vpdpbusd on AVX-512
// VNNI; vpmaddubsw + vpmaddwd on AVX2). matmul() routes these dtypes here.
//
// Result of one output y[t][r] (the contract: every path, scalar or SIMD, any thread count and
// any n_tokens, computes exactly this, so the bits never depend on how the product was run):
//   acc = 0; for each 32-column block b in increasing order:
//     I   = the block's exact integer sum (below), dw / dx = weight / activation block scales
//     acc = fma(float(I), dw * dx, acc)                  (dw * dx rounded to float first)
//     Q4_K only: acc = fma(-(dmin * m), dx * float(X), acc)   (its sub-block's min term)
//   y = acc
// with xq the block's int8 activations, X = sum of xq, and
//   Q8_0  I = sum qs*xq                              dw = d
//   Q4_0  I = sum (q - 8)*xq                         dw = d
//   Q4_K  I = sum q*xq over sub-block s              dw = d * sc[s]
//   Q6_K  I = sc[2s]*sum_lo (q - 32)*xq + sc[2s+1]*sum_hi (q - 32)*xq   (the two halves of 16)
//                                                    dw = d
// (block fields as in quant/blocks.h; every I fits in int32).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace mixtral {

// One block of 32 activations: xq = round_to_nearest_even(x / d) with d = max|x| / 127, and the
// scale stored as the fp16 value nearest d (as ggml's quantize_row_q8_0 stores it).
struct XBlock {
  int8_t qs[32];
  float d;         // fp16-rounded scale, as a float
  int32_t sum;     // X: sum of qs
  int32_t sum_lo;  // sum of qs[0..16)
  float dsum;      // d * float(sum)
};
static_assert(sizeof(XBlock) == 48, "XBlock is 48 bytes");

// Whether matmul() multiplies W through int8 activations (Q8_0, Q4_0, Q4_K, Q6_K).
bool int8_activation_dtype(DType t);

// x: [n_tokens][K] -> xb: K/32 blocks per token, stored block-major: xb[b * n_tokens + t].
// K must be a multiple of 32.
void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb);

// y = x·Wᵀ as matmul() (matmul.h) for an int8_activation_dtype W.
void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

namespace ref {
void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb);
// Scalar, straight from the contract above and the block layouts.
void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y);
}  // namespace ref

}  // namespace mixtral
