// Matrix products against quantized weights with int8 activations, as llama.cpp computes them:
// x is quantized to blocks of 32 int8 values with one scale each, and each block's products with
// the weights are summed exactly in integers (vpdpbusd on AVX-512 VNNI; vpmaddubsw + vpmaddwd on
// AVX2). matmul() routes these dtypes here: Q8_0, Q4_0, Q4_K, Q6_K, and (through one unpacker
// each, kernels/matmul_q8_unpack.h) Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, IQ3_XXS,
// IQ3_S.
//
// Result of one output y[t][r] (the contract: every path, scalar or SIMD, any thread count and
// any n_tokens, computes exactly this, so the bits never depend on how the product was run):
//   acc = 0; for each 32-column block b in increasing order:
//     I   = the block's exact integer sum (below), dw / dx = weight / activation block scales
//     acc = fma(float(I), dw * dx, acc)                  (dw * dx rounded to float first)
//     then the block's min term, where the type has one (below)
//   y = acc
// with xq the block's int8 activations, X = sum of xq, X_lo / X_hi = the sums of xq[0..16) /
// xq[16..32), q the stored quant of each value (u: its unsigned form, as the kernels take it),
// "halves" the two 16-value sub-blocks of a 32-column block (scales s_lo, s_hi):
//   Q8_0   I = sum qs*xq                              dw = d
//   Q4_0   I = sum (q - 8)*xq                         dw = d
//   Q4_K   I = sum q*xq over sub-block s              dw = d * sc[s]
//          min: acc = fma(-(dmin * m[s]), dx * float(X), acc)
//   Q6_K   I = sc[2s]*sum_lo (q - 32)*xq + sc[2s+1]*sum_hi (q - 32)*xq   dw = d
//   Q4_1   I = sum q*xq (4-bit)                       dw = d    min: acc = fma(m, dx * float(X), acc)
//   Q5_1   as Q4_1 with q = nibble | (bit i of qh) << 4
//   Q5_0   I = sum (q - 16)*xq, q as Q5_1's           dw = d
//   Q5_K   as Q4_K with q = nibble | (bit s of qh[i]) << 4   (sub-block s = 2g + p, nibble p of qs[32g + i])
//   Q2_K   block s = 4j + l: q = (qs[32j + i] >> 2l) & 3, halves' scale bytes c_lo = scales[2s],
//          c_hi = scales[2s+1]: I = (c_lo & 15)*sum_lo q*xq + (c_hi & 15)*sum_hi q*xq, dw = d;
//          min: M = (c_lo >> 4)*X_lo + (c_hi >> 4)*X_hi, acc = fma(float(M), (-dmin) * dx, acc)
//   Q3_K   block s = 4j + l: q = ((qs[32j + i] >> 2l) & 3) - (bit s of hmask[i] ? 0 : 4),
//          sc = the 6-bit scales (q3_K_scale) - 32: I = sc[2s]*sum_lo q*xq + sc[2s+1]*sum_hi q*xq, dw = d
//   IQ4_NL I = sum kvalues_iq4nl[nibble]*xq            dw = d
//   IQ4_XS I = (ls[s] - 32) * sum kvalues_iq4nl[nibble of qs[16s ..]]*xq   dw = d
//   IQ3_XXS block s: g = ±(byte i%4 of iq3xxs_grid[qs[8s + i/4]]), signs iq_signs of the 7-bit
//          fields of aux = the u32 at qs[64 + 4s]: I = sum g*xq, dw = d * float(2*(aux >> 28) + 1) * 0.25
//   IQ3_S  block s: g = ±(byte i%4 of iq3s_grid[qs[8s + i/4] | (bit i/4 of qh[s]) << 8]), minus
//          where bit i of signs[4s ..] is set: I = sum g*xq, dw = d * float(2*sc[s] + 1) * 1
// (block fields as in quant/blocks.h; every I and M fits in int32). These follow ggml's CPU dot
// products (ggml_vec_dot_<type>_q8_0 / _q8_1 / _q8_K), but per 32-column block: ggml's K types
// take q8_K activations (one float scale per 256) and its Q4_1 / Q5_1 an fp16 block sum, so the
// results agree with ggml's only to the activations' rounding (tests/test_int8_family.cpp).
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

// Whether matmul() multiplies W through int8 activations (the types above).
bool int8_activation_dtype(DType t);

// x: [n_tokens][K] -> xb: K/32 blocks per token, stored block-major: xb[b * n_tokens + t].
// K must be a multiple of 32.
void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb);

// y = x·Wᵀ as matmul() (matmul.h) for an int8_activation_dtype W.
void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Whether the AVX-512 kernels may use AVX-512 VBMI and BITALG where the CPU has them (on by
// default; tests turn it off to check the paths of CPUs without them). Not while a matmul runs.
void set_int8_vbmi(bool on);

namespace ref {
void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb);
// Scalar, straight from the contract above and the block layouts.
void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y);
}  // namespace ref

}  // namespace mixtral
