// Quantizers of the blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), byte for byte as ggml writes
// them: without importance weights its quantize_row_*_ref (one scale from the block's extreme
// values), with them a weighted least-squares fit per block (quant_search.h). Q8_0 has only the
// first. Layouts in quant/blocks.h: byte j of qs holds value j (low nibble) and j + 16 (high).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/quant_search.h"
#include "quant/quantize_family.h"

namespace mixtral::quant {
namespace {

// Packs 32 levels (4 bits each, plus a fifth bit when qh is given) into a block's qs / qh.
void pack_nibbles(const uint8_t* L, uint8_t qs[16], uint8_t* qh) {
  uint32_t high = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = uint8_t((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
    high |= uint32_t((L[j] & 0x10) >> 4) << j;
    high |= uint32_t((L[j + 16] & 0x10) >> 4) << (j + 16);
  }
  if (qh) std::memcpy(qh, &high, 4);
}

// ---- reference path: scales from the block's extremes -----------------------------------------

void ref_q8_0(const float* x, BlockQ8_0& y) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y.d = f32_to_f16(d);
  for (int j = 0; j < 32; ++j) y.qs[j] = int8_t(std::roundf(x[j] * id));
}

// Q4_0 / Q5_0: d = (the value of largest magnitude, first on ties) / -2^(bits-1), so that value
// maps to level 0; q = min(2^bits - 1, (int8)(x / d + 2^(bits-1) + 0.5)).
void ref_symmetric(const float* x, int bits, uint16_t& d_out, uint8_t L[32]) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float half = float(1 << (bits - 1));
  const float d = max / -half;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  d_out = f32_to_f16(d);
  const int top = (1 << bits) - 1;
  for (int j = 0; j < 32; ++j) L[j] = uint8_t(std::min(top, int(int8_t(x[j] * id + (half + 0.5f)))));
}

// Q4_1 / Q5_1: d = (max - min) / (2^bits - 1), m = min, q = (x - min) / d rounded half up.
// Q4_1 clamps to 15 after an int8 conversion; Q5_1 converts straight to uint8 (as ggml).
void ref_affine(const float* x, int bits, uint16_t& d_out, uint16_t& m_out, uint8_t L[32]) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < 32; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / float((1 << bits) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  d_out = f32_to_f16(d);
  m_out = f32_to_f16(min);
  for (int j = 0; j < 32; ++j) {
    const float v = (x[j] - min) * id + 0.5f;
    L[j] = bits == 4 ? uint8_t(std::min(15, int(int8_t(v)))) : uint8_t(v);
  }
}

// ---- importance path: weights qw * sqrt(sigma² + x²), sigma² = the row's mean square -----------

float mean_square(const float* x, int64_t n) {
  float sum_x2 = 0;
  for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  return sum_x2 / float(n);
}

template <class Block>
void quantize_row(const float* x, Block* y, int64_t n, const float* imatrix) {
  const float sigma2 = imatrix ? mean_square(x, n) : 0.0f;
  float w[32];
  uint8_t L[32], Laux[32];
  int8_t Ls[32];
  for (int64_t ib = 0; ib < n / 32; ++ib, x += 32) {
    Block& b = y[ib];
    if (imatrix)
      for (int j = 0; j < 32; ++j) w[j] = imatrix[32 * ib + j] * std::sqrt(sigma2 + x[j] * x[j]);
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      ref_q8_0(x, b);
    } else if constexpr (std::is_same_v<Block, BlockQ4_0> || std::is_same_v<Block, BlockQ5_0>) {
      const int bits = std::is_same_v<Block, BlockQ4_0> ? 4 : 5;
      if (imatrix) {
        b.d = f32_to_f16(make_qx_quants(32, 1 << (bits - 1), x, Ls, 1, w));
        for (int j = 0; j < 32; ++j) L[j] = uint8_t(Ls[j]);
      } else {
        ref_symmetric(x, bits, b.d, L);
      }
      if constexpr (std::is_same_v<Block, BlockQ4_0>) pack_nibbles(L, b.qs, nullptr);
      else pack_nibbles(L, b.qs, b.qh);
    } else {  // Q4_1, Q5_1
      const int bits = std::is_same_v<Block, BlockQ4_1> ? 4 : 5;
      if (imatrix) {
        float min;
        const float d = make_qkx_quants(32, (1 << bits) - 1, x, w, L, &min, Laux, -0.9f, 0.05f, 36, false);
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(-min);
      } else {
        ref_affine(x, bits, b.d, b.m, L);
      }
      if constexpr (std::is_same_v<Block, BlockQ4_1>) pack_nibbles(L, b.qs, nullptr);
      else pack_nibbles(L, b.qs, b.qh);
    }
  }
}

template <class Block>
void quantize_rows(const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                   const float* imatrix) {
  const size_t row_bytes = size_t(n_per_row / 32) * sizeof(Block);
  for (int64_t r = 0; r < nrows; ++r)
    quantize_row(src + r * n_per_row, reinterpret_cast<Block*>(dst + r * row_bytes), n_per_row, imatrix);
}

}  // namespace

bool quantize_legacy(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                     const float* imatrix) {
  switch (t) {
    case DType::Q8_0: quantize_rows<BlockQ8_0>(src, dst, nrows, n_per_row, nullptr); return true;
    case DType::Q4_0: quantize_rows<BlockQ4_0>(src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q4_1: quantize_rows<BlockQ4_1>(src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q5_0: quantize_rows<BlockQ5_0>(src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q5_1: quantize_rows<BlockQ5_1>(src, dst, nrows, n_per_row, imatrix); return true;
    default: return false;
  }
}

}  // namespace mixtral::quant
