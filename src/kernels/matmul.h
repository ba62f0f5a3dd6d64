// Matrix products against weight matrices of any DType, and the float dot product.
//
// Three paths, each with one fixed summation order per output, so y is bitwise the same for any
// thread count, any n_tokens (one token at a time == a batch), and every SIMD level:
//   - quantized weights (Q8_0, Q4_0, Q4_K, Q6_K and the others of matmul_q8.h): x is rounded to int8 blocks of 32 values and
//     each block's products are summed exactly in integers, as llama.cpp does; the per-block
//     float terms are then added in increasing block order (the contract in matmul_q8.h). The
//     result differs from the float path by the rounding of x (about 1e-2 relative), the same
//     rounding llama.cpp applies. set_int8_activations(false) sends these dtypes through the
//     float path instead (comparisons, tests).
//   - BF16 weights: x rounded to bf16, pairs of columns per partial sum, as the bf16 dot
//     instruction does (kernels/matmul_bf16.h); emulated exactly where it is missing.
//   - F32, F16 (and the quantized dtypes with int8 activations off): float products. Each
//     output is the sum of 16 partial sums, partial sum l taking the products w[k]*x[k] for
//     k ≡ l (mod 16) in increasing k with one fused multiply-add each; the 16 are then added as
//     a fixed tree.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace mixtral {

// y[t][r] = sum_k W[r][k] * x[t][k] for t < n_tokens, r < W.rows  (y = x·Wᵀ, like nn.Linear).
// x: [n_tokens][W.cols] float, y: [n_tokens][W.rows] float. Rows are split across the pool's
// threads; each y element is computed by one thread in a fixed order (above). y must not overlap
// x. W may be in either layout (Matrix::layout; tiles for the quantized dtypes only), with the
// same result. Throws Error when W.cols is not a multiple of W's block size.
void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Whether quantized weights multiply int8 activations (default: on). Process-wide; like
// set_simd_level, not to be changed while kernels run. Either setting is deterministic; they
// give different (both reproducible) bits.
void set_int8_activations(bool on);
bool int8_activations();

// sum_i a[i] * b[i] (SIMD; same accumulation order as matmul's outputs).
float dot_f32(const float* a, const float* b, int64_t n);

namespace ref {
// Scalar: ref::dequantize_row each row (either layout), then a plain float loop per output (the float path's
// oracle; ref::matmul_q8 in matmul_q8.h is the int8 path's).
void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y);
float dot_f32(const float* a, const float* b, int64_t n);
}  // namespace ref

}  // namespace mixtral
