// Rows of any DType -> float32. ref:: is the scalar oracle written straight from the block
// layouts (quant/blocks.h); the fast version uses AVX-512 or AVX2 and gives bit-identical results
// (every value is computed by the same float operations, just several lanes at a time).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace mixtral {

// dst[0..n) = the n values stored at src. n must be a multiple of the block size (throws Error).
void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n);

namespace ref {
void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n);
}  // namespace ref

// Which SIMD instructions the fast kernels (dequantize, matmul, dot) use. Chosen once from the
// CPU; tests and benchmarks may lower it to exercise the AVX2 path on an AVX-512 machine. Each
// level includes the ones before it. AVX512_BF16 adds the bf16 dot product (vdpbf16ps) for BF16
// weights; the levels below emulate it exactly (see matmul_bf16.h).
enum class SimdLevel { AVX2, AVX512, AVX512_BF16 };
SimdLevel simd_level();
SimdLevel best_simd_level();       // the widest this CPU supports
void set_simd_level(SimdLevel l);  // clamped to best_simd_level(); not thread-safe vs. running kernels

// The fast dequantizer for t at the current SIMD level, without checks (n a multiple of the
// block size; for kernels that dequantize many chunks of one matrix).
using DequantizeFn = void (*)(const uint8_t* src, float* dst, int64_t n);
DequantizeFn dequantize_fn(DType t);

}  // namespace mixtral
