// Quantizers of the K formats (super-blocks of 256: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), byte for byte
// as ggml writes them. Each super-block is quantized in three steps:
//   1. fit each sub-block (16 or 32 values) to integer levels with a float scale (and min);
//   2. quantize those sub-block scales (and mins) against one fp16 super-block scale;
//   3. requantize every value against the scales as stored, and pack the bits (quant/blocks.h).
// Without importance weights steps 1-2 are ggml's quantize_row_*_ref; with them, its
// quantize_row_*_impl (weights qw * sqrt(sigma² + x²), scales fitted by weighted least squares).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/quant_search.h"
#include "quant/quantize_family.h"

namespace mixtral::quant {
namespace {

inline float half(uint16_t h) { return f16_to_f32(h); }

float sum_squares(const float* x, int n) {
  float s = 0;
  for (int j = 0; j < n; ++j) s += x[j] * x[j];
  return s;
}

// w[l] = qw[l] * sqrt(sigma2 + x[l]²) for n values, and their sum.
float importance(const float* x, const float* qw, float sigma2, int n, float* w) {
  for (int l = 0; l < n; ++l) w[l] = qw[l] * std::sqrt(sigma2 + x[l] * x[l]);
  float sum = 0;
  for (int l = 0; l < n; ++l) sum += w[l];
  return sum;
}

// Two bits per value: value 32s + l of half h (h < 2, s < 4, l < 32) in bits 2s of qs[32h + l].
void pack_2bit(const uint8_t* L, uint8_t qs[64]) {
  for (int j = 0; j < QK_K; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// ---- Q2_K: 16 sub-blocks of 16, levels 0..3, 4-bit scale and min each ---------------------------

void q2_K(const float* x, BlockQ2_K& y, const float* qw) {
  uint8_t L[QK_K], Laux[16];
  float w[16], scales[16], mins[16];
  if (!qw) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) w[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    std::memset(y.scales, 0, 16);
    y.d = f32_to_f16(0.f);
    y.dmin = f32_to_f16(0.f);
    if (max_scale > 0) {
      const float iscale = 15.f / max_scale;
      for (int j = 0; j < 16; ++j) y.scales[j] = uint8_t(nearest_int(iscale * scales[j]));
      y.d = f32_to_f16(max_scale / 15.f);
    }
    if (max_min > 0) {
      const float iscale = 15.f / max_min;
      for (int j = 0; j < 16; ++j) y.scales[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
      y.dmin = f32_to_f16(max_min / 15.f);
    }
  } else {
    const float sigma2 = sum_squares(x, QK_K) / QK_K;
    float sw[16];
    uint8_t Ls[16], Lm[16];
    for (int j = 0; j < 16; ++j) {
      sw[j] = importance(x + 16 * j, qw + 16 * j, sigma2, 16, w);
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }
    y.d = f32_to_f16(make_qp_quants(16, 15, scales, Ls, sw));
    y.dmin = f32_to_f16(make_qp_quants(16, 15, mins, Lm, sw));
    for (int j = 0; j < 16; ++j) y.scales[j] = uint8_t(Ls[j] | (Lm[j] << 4));
  }
  for (int j = 0; j < 16; ++j) {
    const float d = half(y.d) * float(y.scales[j] & 0xF);
    if (!d) continue;
    const float m = half(y.dmin) * float(y.scales[j] >> 4);
    for (int l = 0; l < 16; ++l)
      L[16 * j + l] = uint8_t(std::clamp(nearest_int((x[16 * j + l] + m) / d), 0, 3));
  }
  pack_2bit(L, y.qs);
}

// ---- Q3_K: 16 sub-blocks of 16, levels -4..3, a signed 6-bit scale each -------------------------

// Stores the 16 scales l (0..63, i.e. scale + 32) as the dequantizer reads them (q3k_scale).
void pack_q3k_scales(const int* ls, uint8_t s[12]) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = ls[j];
    if (j < 8) s[j] = uint8_t(l & 0xF);
    else s[j - 8] |= uint8_t((l & 0xF) << 4);
    s[j % 4 + 8] |= uint8_t((l >> 4) << (2 * (j / 4)));
  }
}

int q3k_scale(const uint8_t* s, int j) {
  const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
  return lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

void q3_K(const float* x, BlockQ3_K& y, const float* qw) {
  int8_t L[QK_K];
  float scales[16];
  int ls[16];
  if (!qw) {
    float max_scale = 0, amax = 0;  // the scale of largest magnitude, with its sign
    for (int j = 0; j < 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_scale) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) ls[j] = std::clamp<int>(int8_t(nearest_int(iscale * scales[j])), -32, 31) + 32;
      pack_q3k_scales(ls, y.scales);
      y.d = f32_to_f16(1 / iscale);
    } else {
      std::memset(y.scales, 0, 12);
      y.d = f32_to_f16(0.f);
    }
  } else {
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    float w[16], sw[16];
    int8_t Ls[16];
    for (int j = 0; j < 16; ++j) {
      sw[j] = importance(x + 16 * j, qw + 16 * j, sigma2, 16, w);
      scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, 1, w);
    }
    const float d_block = make_qx_quants(16, 32, scales, Ls, 1, sw);
    for (int j = 0; j < 16; ++j) ls[j] = Ls[j];
    pack_q3k_scales(ls, y.scales);
    y.d = f32_to_f16(d_block);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = half(y.d) * float(q3k_scale(y.scales, j) - 32);
    if (!d) continue;
    for (int l = 0; l < 16; ++l)
      L[16 * j + l] = int8_t(std::clamp(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
  }
  // The third bit of value j goes to hmask[j % 32], bit j / 32; the low two bits as Q2_K's.
  std::memset(y.hmask, 0, sizeof(y.hmask));
  uint8_t low[QK_K];
  for (int j = 0; j < QK_K; ++j) {
    uint8_t l = uint8_t(L[j]);
    if (l > 3) {
      y.hmask[j % 32] |= uint8_t(1u << (j / 32));
      l = uint8_t(l - 4);
    }
    low[j] = l;
  }
  pack_2bit(low, y.qs);
}

// ---- Q4_K / Q5_K: 8 sub-blocks of 32, levels 0..nmax, 6-bit scale and min each -----------------

struct ScaleMinSearch {  // ggml's reference-path search parameters for make_qkx_quants
  float rmin, rdelta;
  int nstep;
};

// Steps 1-3 for Q4_K (nmax 15) and Q5_K (nmax 31): writes d, dmin, scales[12] and the levels L.
void k_scale_min(const float* x, int nmax, ScaleMinSearch ref, const float* qw, uint16_t& d_out,
                 uint16_t& dmin_out, uint8_t packed[12], uint8_t L[QK_K]) {
  uint8_t Laux[32], ls[8], lm[8];
  float w[32], scales[8], mins[8];
  if (!qw) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      const float av_x = std::sqrt(sum_squares(x + 32 * j, 32) / 32);
      for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx_quants(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, ref.rmin,
                                  ref.rdelta, ref.nstep, false);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {  // (uint8 first, then the clamp: as ggml)
      ls[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
      lm[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    }
    d_out = f32_to_f16(max_scale / 63.f);
    dmin_out = f32_to_f16(max_min / 63.f);
  } else {
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    float sw[8];
    for (int j = 0; j < 8; ++j) {
      sw[j] = importance(x + 32 * j, qw + 32 * j, sigma2, 32, w);
      scales[j] = make_qkx_quants(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }
    d_out = f32_to_f16(make_qp_quants(8, 63, scales, ls, sw));
    dmin_out = f32_to_f16(make_qp_quants(8, 63, mins, lm, sw));
  }
  // Pack as q4k_scale_min reads them.
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      packed[j] = ls[j];
      packed[j + 4] = lm[j];
    } else {
      packed[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      packed[j - 4] |= uint8_t((ls[j] >> 4) << 6);
      packed[j] |= uint8_t((lm[j] >> 4) << 6);
    }
  }
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    q4k_scale_min(j, packed, &sc, &m);
    const float d = half(d_out) * float(sc);
    if (!d) continue;  // keeps step 1's levels, as ggml does
    const float dm = half(dmin_out) * float(m);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = uint8_t(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, nmax));
  }
}

void q4_K(const float* x, BlockQ4_K& y, const float* qw) {
  uint8_t L[QK_K];
  k_scale_min(x, 15, {-1.f, 0.1f, 20}, qw, y.d, y.dmin, y.scales, L);
  uint8_t* q = y.qs;
  for (int j = 0; j < QK_K; j += 64, q += 32)
    for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
}

void q5_K(const float* x, BlockQ5_K& y, const float* qw) {
  uint8_t L[QK_K];
  k_scale_min(x, 31, {-0.5f, 0.1f, 15}, qw, y.d, y.dmin, y.scales, L);
  std::memset(y.qh, 0, sizeof(y.qh));
  uint8_t* ql = y.qs;
  for (int g = 0; g < 4; ++g, ql += 32) {  // group of 64: low nibbles, then high nibbles
    for (int l = 0; l < 32; ++l) {
      int l1 = L[64 * g + l], l2 = L[64 * g + l + 32];
      if (l1 > 15) {
        l1 -= 16;
        y.qh[l] |= uint8_t(1u << (2 * g));
      }
      if (l2 > 15) {
        l2 -= 16;
        y.qh[l] |= uint8_t(2u << (2 * g));
      }
      ql[l] = uint8_t(l1 | (l2 << 4));
    }
  }
}

// ---- Q6_K: 16 sub-blocks of 16, levels -32..31, an int8 scale each ------------------------------

void q6_K(const float* x, BlockQ6_K& y, const float* qw) {
  int8_t L[QK_K];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw ? qw + 16 * ib : nullptr);
    if (std::fabs(scales[ib]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(&y, 0, sizeof(y));
    return;
  }
  const float iscale = -128.f / max_scale;  // the largest scale maps to -128
  y.d = f32_to_f16(1 / iscale);
  for (int ib = 0; ib < 16; ++ib) y.scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
  for (int j = 0; j < 16; ++j) {
    const float d = half(y.d) * float(y.scales[j]);
    if (!d) continue;
    for (int l = 0; l < 16; ++l)
      L[16 * j + l] = int8_t(std::clamp(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
  }
  uint8_t* ql = y.ql;
  uint8_t* qh = y.qh;
  for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
      ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

template <class Block>
void quantize_rows(void (*q)(const float*, Block&, const float*), const float* src, uint8_t* dst,
                   int64_t nrows, int64_t n_per_row, const float* imatrix) {
  const int64_t nb = n_per_row / QK_K;
  auto* y = reinterpret_cast<Block*>(dst);
  for (int64_t r = 0; r < nrows; ++r)
    for (int64_t i = 0; i < nb; ++i)
      q(src + r * n_per_row + i * QK_K, y[r * nb + i], imatrix ? imatrix + i * QK_K : nullptr);
}

}  // namespace

bool quantize_k(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                const float* imatrix) {
  switch (t) {
    case DType::Q2_K: quantize_rows<BlockQ2_K>(q2_K, src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q3_K: quantize_rows<BlockQ3_K>(q3_K, src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q4_K: quantize_rows<BlockQ4_K>(q4_K, src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q5_K: quantize_rows<BlockQ5_K>(q5_K, src, dst, nrows, n_per_row, imatrix); return true;
    case DType::Q6_K: quantize_rows<BlockQ6_K>(q6_K, src, dst, nrows, n_per_row, imatrix); return true;
    default: return false;
  }
}

}  // namespace mixtral::quant
