// Matrix products against weight matrices of any DType, and the float dot product.
//
// Accumulation order (the contract that makes results reproducible): each output is the sum of
// 16 partial sums, partial sum l taking the products w[k]*x[k] for k ≡ l (mod 16) in increasing k
// with one fused multiply-add each; the 16 are then added as a fixed tree. The order depends on
// nothing else, so y is bitwise the same for any thread count, any n_tokens (one token at a time
// == a batch), and every SIMD level. BF16 weights are the exception to the order, not to the
// guarantees: they multiply x rounded to bf16, pairs of columns per partial sum, as the bf16 dot
// instruction does (kernels/matmul_bf16.h).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace mixtral {

// y[t][r] = sum_k W[r][k] * x[t][k] for t < n_tokens, r < W.rows  (y = x·Wᵀ, like nn.Linear).
// x: [n_tokens][W.cols] float, y: [n_tokens][W.rows] float. Rows are split across the pool's
// threads; each y element is computed by one thread in a fixed order (above). y must not overlap
// x. Throws Error when W.cols is not a multiple of W's block size.
void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// sum_i a[i] * b[i] (SIMD; same accumulation order as matmul's outputs).
float dot_f32(const float* a, const float* b, int64_t n);

namespace ref {
// Scalar: ref::dequantize_row each row, then a plain float loop per output.
void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y);
float dot_f32(const float* a, const float* b, int64_t n);
}  // namespace ref

}  // namespace mixtral
