// Reference quantizers, written from ggml's quantize_row_*_ref (ggml-quants.c). The goal is the
// same bytes as llama-quantize: same float32 operations in the same order, same rounding helpers.
//
// No fused multiply-add: ggml-quants.c is compiled without -march flags (the generic ggml-base
// library), so `a*b + c` rounds twice there. GCC contracts such expressions into FMA by default
// in C++ when FMA is available (-march=x86-64-v3 has it), which would change a few quants, so
// contraction is switched off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant/quantize.h"
#include "quant/quantize_family.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/blocks.h"

namespace mixtral {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: below this a group is all zero

// Round to nearest (ties to even) for |x| < 2^22, ggml's nearest_int: adding 1.5 * 2^23 leaves
// the rounded integer in the low mantissa bits.
inline int nearest_int(float x) {
  const float v = x + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

inline uint16_t fp16(float x) { return f32_to_f16(x); }
inline float from_fp16(uint16_t h) { return f16_to_f32(h); }

// ---- Q8_0 / Q4_0 -------------------------------------------------------------------------------

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = int8_t(std::roundf(x[j] * id));
  }
}

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK4_0) {
    float amax = 0.0f, max = 0.0f;  // largest magnitude, and that value with its sign
    for (int j = 0; j < QK4_0; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[j + QK4_0 / 2] * id;
      const uint8_t q0 = uint8_t(std::min(15, int(int8_t(x0 + 8.5f))));
      const uint8_t q1 = uint8_t(std::min(15, int(int8_t(x1 + 8.5f))));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

// ---- Q4_K --------------------------------------------------------------------------------------

// ggml's make_qkx2_quants: fits x ≈ scale * L - min (L in [0, nmax], min >= 0) for one sub-block
// by a weighted least-squares search over nstep + 1 candidate inverse scales. Returns scale and
// writes min (as a positive number) and the quants L.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                       bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

void quantize_q4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  uint8_t L[QK_K];
  uint8_t Laux[32];
  float weights[32];
  float mins[QK_K / 32];
  float scales[QK_K / 32];

  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    // 1. Per sub-block of 32: a float scale and min, weighted towards large |x|.
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                   -1.f, 0.1f, 20, false);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }

    // 2. Scales and mins to 6 bits against the super-block's d and dmin; pack 12 bytes.
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
      uint8_t ls = uint8_t(nearest_int(inv_scale * scales[j]));  // (uint8) wraps like ggml's
      uint8_t lm = uint8_t(nearest_int(inv_min * mins[j]));
      ls = std::min<uint8_t>(63, ls);
      lm = std::min<uint8_t>(63, lm);
      if (j < 4) {
        y[i].scales[j] = ls;
        y[i].scales[j + 4] = lm;
      } else {
        y[i].scales[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
        y[i].scales[j - 4] |= uint8_t((ls >> 4) << 6);
        y[i].scales[j - 0] |= uint8_t((lm >> 4) << 6);
      }
    }
    y[i].d = fp16(max_scale / 63.f);
    y[i].dmin = fp16(max_min / 63.f);

    // 3. Requantize every value against the stored (rounded) scales.
    for (int j = 0; j < QK_K / 32; ++j) {
      uint8_t sc, m;
      q4k_scale_min(j, y[i].scales, &sc, &m);
      const float d = from_fp16(y[i].d) * sc;
      if (!d) continue;  // keeps make_qkx2_quants' L, as ggml does
      const float dm = from_fp16(y[i].dmin) * m;
      for (int ii = 0; ii < 32; ++ii) {
        const int l = nearest_int((x[32 * j + ii] + dm) / d);
        L[32 * j + ii] = uint8_t(std::max(0, std::min(15, l)));
      }
    }

    // 4. Pack: group g of 64 values -> 32 bytes, low nibble value 64g+l, high nibble 64g+32+l.
    uint8_t* q = y[i].qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
  }
}

// ---- Q6_K --------------------------------------------------------------------------------------

// ggml's make_qx_quants with rmse_type 1 and no importance weights: symmetric quants
// L in [0, 2*nmax) around nmax, x ≈ scale * (L - nmax), scale chosen by an x²-weighted
// least-squares search over 19 candidate inverse scales. Returns scale.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void quantize_q6_K(const float* x, BlockQ6_K* y, int64_t nb) {
  int8_t L[QK_K];
  float scales[QK_K / 16];

  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    // 1. Per sub-block of 16: a signed float scale.
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      if (std::fabs(scale) > max_abs_scale) {
        max_abs_scale = std::fabs(scale);
        max_scale = scale;
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      continue;
    }

    // 2. Scales to int8 against d (the largest maps to -128).
    const float iscale = -128.f / max_scale;
    y[i].d = fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib)
      y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));

    // 3. Requantize against the stored scales.
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = from_fp16(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = int8_t(l + 32);
      }
    }

    // 4. Pack (layout in blocks.h).
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = uint8_t(q1 | (q3 << 4));
        ql[l + 32] = uint8_t(q2 | (q4 << 4));
        qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                        ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace

size_t quantized_bytes(DType t, int64_t n) {
  const DTypeInfo info = dtype_info(t);
  if (info.block_bytes == 0) fail("quantized_bytes", "unknown dtype " + std::to_string(int(t)));
  if (n < 0 || n % info.block_size != 0)
    fail("quantized_bytes", std::string(info.name) + " needs a multiple of " +
                                std::to_string(info.block_size) + " values, got " +
                                std::to_string(n));
  return size_t(n / info.block_size) * info.block_bytes;
}

void quantize_row(DType t, const float* src, uint8_t* dst, int64_t n) {
  const size_t bytes = quantized_bytes(t, n);  // validates n
  const int64_t nb = n / dtype_info(t).block_size;
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, bytes);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::Q8_0: quantize_q8_0(src, reinterpret_cast<BlockQ8_0*>(dst), nb); return;
    case DType::Q4_0: quantize_q4_0(src, reinterpret_cast<BlockQ4_0*>(dst), nb); return;
    case DType::Q4_K: quantize_q4_K(src, reinterpret_cast<BlockQ4_K*>(dst), nb); return;
    case DType::Q6_K: quantize_q6_K(src, reinterpret_cast<BlockQ6_K*>(dst), nb); return;
    default: break;
  }
  quantize_rows(t, src, dst, 1, n, nullptr);
}

bool quantize_requires_imatrix(DType t) {
  return t == DType::IQ2_XXS || t == DType::IQ2_XS || t == DType::IQ1_S;
}

void quantize_rows(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                   const float* imatrix) {
  const size_t rb = quantized_bytes(t, n_per_row);  // validates n_per_row
  if (!imatrix && quantize_requires_imatrix(t))
    fail("quantize", std::string(dtype_name(t)) + " needs an importance matrix (--imatrix)");
  if (quant::quantize_legacy_k(t, src, dst, nrows, n_per_row, imatrix)) return;
  if (quant::quantize_iq4_iq3(t, src, dst, nrows, n_per_row, imatrix)) return;
  if (quant::quantize_iq2_iq1(t, src, dst, nrows, n_per_row, imatrix)) return;
  const bool base = t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 ||
                    t == DType::Q4_0 || t == DType::Q4_K || t == DType::Q6_K;
  if (base && (!imatrix || t == DType::Q8_0 || !is_quantized(t))) {  // (ggml's Q8_0 ignores importance)
    for (int64_t r = 0; r < nrows; ++r) quantize_row(t, src + r * n_per_row, dst + size_t(r) * rb, n_per_row);
    return;
  }
  fail("quantize", std::string("no quantizer for ") + dtype_name(t));
}

}  // namespace mixtral
