// Matrix products against BF16 weights through bf16 dot products (matmul() sends BF16 here).
//
// The activations are rounded to bf16 once per call (round to nearest even, f32_to_bf16), as
// llama.cpp does for BF16 weights; each product of two bf16 values is exact in float.
//
// Accumulation order (the contract): columns are taken 32 at a time (k0 = 0, 32, 64, ...; past
// W.cols both w and x count as 0). Partial sum l (of 16) adds, for each k0 in turn, first
// w[k]*x[k] for k = k0 + 2l + 1, then for k = k0 + 2l, each with one fused multiply-add that
// treats subnormal inputs and results as zero (of the same sign); the 16 partial sums are then
// added as the same fixed tree as matmul.h's. That is exactly what AVX512_BF16's vdpbf16ps does
// (checked against this CPU: odd element first, round to nearest even after each product, DAZ and
// FTZ). The AVX2 and AVX-512 levels emulate it with two FMAs under MXCSR DAZ|FTZ, so results are
// bitwise the same on every machine, for any thread count and any n_tokens.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace mixtral {

// y[t][r] = sum_k W[r][k] * bf16(x[t][k]) for a BF16 W, in the order above. Same shapes as
// matmul(); W.dtype must be BF16 (not checked).
void matmul_bf16(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

namespace ref {
// Scalar, the order above written out one multiply-add at a time: the same bits as matmul_bf16
// (except for results within one rounding of the smallest normal float, where std::fma rounds
// to a subnormal before it is flushed).
void matmul_bf16(const Matrix& W, const float* x, int64_t n_tokens, float* y);
}  // namespace ref

}  // namespace mixtral
