// Quantizers of IQ4_NL, IQ4_XS, IQ3_XXS and IQ3_S, written from ggml's quantize_iq4_nl,
// quantize_iq4_xs, quantize_iq3_xxs and quantize_iq3_s (ggml-quants.c) so that they write the same
// bytes: the same float32 operations in the same order.
//
// No fused multiply-add: ggml-quants.c is built without -march flags, so `a*b + c` rounds twice
// there; GCC would contract it here (-march=x86-64-v3 has FMA) and change some quants.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant/quantize_family.h"

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/iq_grids_iq4_iq3.h"
#include "quant/quant_search.h"

namespace mixtral::quant {
namespace {

constexpr float kGroupMaxEpsIq3 = 1e-8f;    // GROUP_MAX_EPS_IQ3_XXS (IQ4 uses kGroupMaxEps)

inline int clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
inline float fmax_ggml(float a, float b) { return a > b ? a : b; }  // ggml's MAX(a, b)

// ---- IQ4_NL / IQ4_XS ---------------------------------------------------------------------------

// Index of the level of kvalues_iq4nl nearest to x (the lower one on a tie), by bisection.
int best_level(float x) {
  const int8_t* v = kvalues_iq4nl;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < v[mid]) hi = mid;
    else lo = mid;
  }
  return x - v[hi - 1] < v[hi] - x ? hi - 1 : hi;
}

// Weighted sums Σ w·q·x and Σ w·q² of 32 values mapped to their nearest levels under inverse
// scale id; optionally keeps the levels.
inline void iq4_sums(const float* xb, const float* weight, float id, float* sumqx, float* sumq2,
                     uint8_t* keep) {
  float sx = 0, s2 = 0;
  for (int j = 0; j < 32; ++j) {
    const int l = best_level(id * xb[j]);
    if (keep) keep[j] = uint8_t(l);
    const float q = kvalues_iq4nl[l];
    const float w = weight[j];
    sx += w * q * xb[j];
    s2 += w * q * q;
  }
  *sumqx = sx;
  *sumq2 = s2;
}

// The scale of one group of 32: from the largest-magnitude value, then the best of 15 inverse
// scales around it by the weighted least-squares gain sumqx² / sumq2. Returns 0 for a zero group.
float iq4_group_scale(const float* xb, const float* weight, uint8_t* L) {
  constexpr int kTries = 7;  // what ggml_quantize_chunk uses, with or without importance
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j) {
    const float ax = std::fabs(xb[j]);
    if (ax > amax) {
      amax = ax;
      max = xb[j];
    }
  }
  if (amax < kGroupMaxEps) return 0;
  float d = -max / kvalues_iq4nl[0];
  float sumqx, sumq2;
  iq4_sums(xb, weight, 1 / d, &sumqx, &sumq2, L);
  d = sumqx / sumq2;
  float best = d * sumqx;
  for (int itry = -kTries; itry <= kTries; ++itry) {
    const float id = float(itry + kvalues_iq4nl[0]) / max;
    iq4_sums(xb, weight, id, &sumqx, &sumq2, nullptr);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// Per group of 32: w = importance · sqrt(σ² + x²) (σ² = 2·mean x² of the super-block), or x².
void iq4_weights(const float* xb, const float* qw, float sigma2, float* weight) {
  if (qw) {
    for (int j = 0; j < 32; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
  } else {
    for (int j = 0; j < 32; ++j) weight[j] = xb[j] * xb[j];
  }
}

float iq4_sigma2(const float* x, int n) {
  float s = 0;
  for (int j = 0; j < n; ++j) s += x[j] * x[j];
  return s * (2.f / float(n));
}

// Nibbles: value j of each 32 in the low half of byte j, value j + 16 in the high half.
void pack_nibbles(const uint8_t* L, int n, uint8_t* qs) {
  for (int i = 0; i < n / 32; ++i)
    for (int j = 0; j < 16; ++j) qs[16 * i + j] = uint8_t(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void iq4_nl_block(const float* x, const float* qw, BlockIQ4_NL* y) {
  float weight[32];
  uint8_t L[32];
  iq4_weights(x, qw, iq4_sigma2(x, 32), weight);
  const float d = iq4_group_scale(x, weight, L);
  y->d = f32_to_f16(d);
  const float id = d ? 1 / d : 0;
  for (int j = 0; j < 32; ++j) L[j] = uint8_t(best_level(id * x[j]));
  pack_nibbles(L, 32, y->qs);
}

void iq4_xs_block(const float* x, const float* qw, BlockIQ4_XS* y) {
  const float sigma2 = iq4_sigma2(x, QK_K);
  float weight[32], scales[QK_K / 32];
  uint8_t L[QK_K];
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    iq4_weights(x + 32 * ib, qw ? qw + 32 * ib : nullptr, sigma2, weight);
    scales[ib] = iq4_group_scale(x + 32 * ib, weight, L + 32 * ib);
    if (std::fabs(scales[ib]) > amax_scale) {
      amax_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  // 6-bit group scales l - 32 of d = -max_scale / 32; levels refitted to each rounded scale.
  const float d = -max_scale / 32;
  const float id = d ? 1 / d : 0.f;
  y->d = f32_to_f16(d);
  y->scales_h = 0;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const int l = clamp(nearest_int(id * scales[ib]), -32, 31);
    const float dl = d * float(l);
    const float idl = dl ? 1 / dl : 0.f;
    for (int j = 0; j < 32; ++j) L[32 * ib + j] = uint8_t(best_level(idl * x[32 * ib + j]));
    const int u = l + 32;
    if (ib % 2 == 0) y->scales_l[ib / 2] = uint8_t(u & 0xF);
    else y->scales_l[ib / 2] |= uint8_t((u & 0xF) << 4);
    y->scales_h = uint16_t(y->scales_h | ((u >> 4) << 2 * ib));
  }
  pack_nibbles(L, QK_K, y->qs);
}

// ---- IQ3_XXS / IQ3_S ---------------------------------------------------------------------------

constexpr int kIq3Levels = 8;  // coordinates 2l + 1, l = 0..7

inline int coord(uint32_t p, int i) { return int(int8_t(p >> 8 * i)); }

// Of the grid points listed for an off-grid lattice point, the one with the smallest weighted
// squared error at `scale` (the first on a tie); writes its levels to L.
int iq3_best_neighbour(const Iq3Search& s, const uint16_t* nb, const float* xval, const float* w,
                       float scale, int8_t* L) {
  float best_d2 = FLT_MAX;
  int best = -1;
  for (int j = 1; j <= nb[0]; ++j) {
    const uint32_t p = s.grid[nb[j]];
    float d2 = 0;
    for (int i = 0; i < 4; ++i) {
      const float diff = scale * float(coord(p, i)) - xval[i];
      d2 += w[i] * diff * diff;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      best = nb[j];
    }
  }
  if (best < 0) fail("quantize", "IQ3 grid search found no neighbour");
  for (int i = 0; i < 4; ++i) L[i] = int8_t((coord(s.grid[size_t(best)], i) - 1) / 2);
  return best;
}

// Levels of 4 magnitudes under inverse scale id, moved to the nearest grid point when the lattice
// point is off the grid (its error measured at `scale`). Returns whether it was on the grid.
bool iq3_quad(const Iq3Search& s, const float* xval, const float* waux, float id, float scale,
              int8_t* L) {
  int u = 0;
  for (int i = 0; i < 4; ++i) {
    L[i] = int8_t(clamp(nearest_int(0.5f * (id * xval[i] - 1)), 0, kIq3Levels - 1));
    u |= L[i] << 3 * i;
  }
  const int g = s.map[size_t(u)];
  if (g >= 0) return true;
  iq3_best_neighbour(s, s.neighbours.data() + (-g - 1), xval, waux, scale, L);
  return false;
}

int iq3_grid_index(const Iq3Search& s, const int8_t* L) {
  int u = 0;
  for (int i = 0; i < 4; ++i) u |= L[i] << 3 * i;
  const int g = s.map[size_t(u)];
  if (g < 0) fail("quantize", "IQ3 levels off the grid");
  return g;
}

inline void iq3_sums(const float* xval, const float* weight, const int8_t* L, float* sumqx, float* sumq2) {
  float sx = 0, s2 = 0;
  for (int i = 0; i < 32; ++i) {
    const float w = weight[i];
    const float q = float(2 * L[i] + 1);
    sx += w * xval[i] * q;
    s2 += w * q * q;
  }
  *sumqx = sx;
  *sumq2 = s2;
}

// State ggml keeps between groups (and rows): when no candidate scale of a group improves on
// zero (all weights zero), its levels and on-grid flags stay those of the previous group.
struct Iq3State {
  int8_t L[32] = {};
  bool on_grid[8] = {};
};

// Fits 32 magnitudes xval (max > 0) to 8 grid points times one scale: the best of 2·steps + 1
// inverse scales around 15 / max, then, if some quads were moved to the grid, their points are
// chosen again at that scale (every quad when `requantize_all`) and the scale refitted.
float iq3_group(const Iq3Search& s, const float* xval, const float* weight, const float* waux,
                float max, int steps, bool requantize_all, Iq3State& st) {
  float best = 0, scale = max / (2 * kIq3Levels - 1);
  int8_t Laux[32];
  bool on_aux[8];
  for (int is = -steps; is <= steps; ++is) {
    const float id = (2 * kIq3Levels - 1 + float(is) * 0.2f) / max;
    const float this_scale = 1 / id;
    for (int k = 0; k < 8; ++k)
      on_aux[k] = iq3_quad(s, xval + 4 * k, waux + 4 * k, id, this_scale, Laux + 4 * k);
    float sumqx, sumq2;
    iq3_sums(xval, weight, Laux, &sumqx, &sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(st.L, Laux, 32);
      std::memcpy(st.on_grid, on_aux, 8);
    }
  }
  int off_grid = 0;
  for (int k = 0; k < 8; ++k) off_grid += !st.on_grid[k];
  if (off_grid > 0 && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < 8; ++k) {
      if (!requantize_all && st.on_grid[k]) continue;
      iq3_quad(s, xval + 4 * k, waux + 4 * k, id, scale, st.L + 4 * k);
    }
    float sumqx, sumq2;
    iq3_sums(xval, weight, st.L, &sumqx, &sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  return scale;
}

// Weights as IQ4's (importance · sqrt(σ² + x²), or x²) and their square roots for the grid search.
void iq3_weights(const float* xb, const float* qw, float sigma2, float* weight, float* waux) {
  for (int i = 0; i < 32; ++i) weight[i] = qw ? qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]) : xb[i] * xb[i];
  for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
}

float iq3_sigma2(const float* x) {
  float sumx2 = 0;
  for (int i = 0; i < QK_K; ++i) sumx2 += x[i] * x[i];
  return 2 * sumx2 / QK_K;
}

// Magnitudes and sign bits of 8 values (bit i set: value i negative).
uint8_t split_signs(const float* xb, float* xval) {
  uint8_t s = 0;
  for (int i = 0; i < 8; ++i) {
    if (xb[i] >= 0) {
      xval[i] = xb[i];
    } else {
      xval[i] = -xb[i];
      s = uint8_t(s | 1 << i);
    }
  }
  return s;
}

void iq3_xxs_block(const Iq3Search& s, const float* x, const float* qw, uint8_t* out, Iq3State& st) {
  uint8_t grid_idx[QK_K / 4] = {};
  uint32_t scales_and_signs[QK_K / 32] = {};
  float scales[QK_K / 32], weight[32], waux[32], xval[32];
  const float sigma2 = iq3_sigma2(x);
  float max_scale = 0;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float* xb = x + 32 * ib;
    iq3_weights(xb, qw ? qw + 32 * ib : nullptr, sigma2, weight, waux);
    uint8_t signs[4];
    for (int k = 0; k < 4; ++k) {
      // Only 7 sign bits are stored (an even count of minus signs): with an odd count, the
      // value of least weighted square keeps the wrong sign.
      uint8_t sg = split_signs(xb + 8 * k, xval + 8 * k);
      if (std::popcount(unsigned(sg)) % 2) {
        int imin = 0;
        float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
        for (int i = 1; i < 8; ++i) {
          const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
          if (ax < min) {
            min = ax;
            imin = i;
          }
        }
        xval[8 * k + imin] = -xval[8 * k + imin];
        sg = uint8_t(sg ^ (1 << imin));
      }
      signs[k] = sg & 127;
    }
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = fmax_ggml(max, xval[i]);
    if (max < kGroupMaxEpsIq3) {
      scales[ib] = 0;
      std::memset(st.L, 0, 32);
      continue;
    }
    float scale = iq3_group(s, xval, weight, waux, max, 15, false, st);
    if (scale < 0) {  // (not expected; the stored scale is unsigned)
      scale = -scale;
      for (uint8_t& sg : signs) sg = uint8_t(~sg & 127);
    }
    for (int k = 0; k < 8; ++k) grid_idx[8 * ib + k] = uint8_t(iq3_grid_index(s, st.L + 4 * k));
    for (int k = 0; k < 4; ++k) scales_and_signs[ib] |= uint32_t(signs[k]) << 7 * k;
    scales[ib] = scale;
    max_scale = fmax_ggml(max_scale, scale);
  }
  std::memset(out, 0, sizeof(BlockIQ3_XXS));
  if (!max_scale) return;
  // 4-bit group scales: scale ≈ d·(2l + 1) with d = max_scale / 31 (stored 1.25% larger).
  const float d = max_scale / 31;
  const uint16_t dh = f32_to_f16(d * 1.0125f);
  const float id = 1 / d;
  for (int ib = 0; ib < QK_K / 32; ++ib)
    scales_and_signs[ib] |= uint32_t(clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15)) << 28;
  std::memcpy(out, &dh, 2);
  std::memcpy(out + 2, grid_idx, sizeof grid_idx);
  std::memcpy(out + 2 + sizeof grid_idx, scales_and_signs, sizeof scales_and_signs);
}

void iq3_s_block(const Iq3Search& s, const float* x, const float* qw, BlockIQ3_S* y, Iq3State& st) {
  std::memset(y, 0, sizeof *y);
  float scales[QK_K / 32], weight[32], waux[32], xval[32];
  const float sigma2 = iq3_sigma2(x);
  float max_scale = 0;
  // ggml advances its qs / signs pointers only past groups it quantized, so after an all-zero
  // group the later groups' indices and signs land one group earlier (qh and scales do not move).
  uint8_t* qs = y->qs;
  uint8_t* signs = y->signs;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float* xb = x + 32 * ib;
    iq3_weights(xb, qw ? qw + 32 * ib : nullptr, sigma2, weight, waux);
    uint8_t sg[4];
    for (int k = 0; k < 4; ++k) sg[k] = split_signs(xb + 8 * k, xval + 8 * k);
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = fmax_ggml(max, xval[i]);
    if (!max) {
      scales[ib] = 0;
      continue;
    }
    for (bool& b : st.on_grid) b = false;
    float scale = iq3_group(s, xval, weight, waux, max, 9, true, st);
    if (scale < 0) {  // (not expected; the stored scale is unsigned)
      scale = -scale;
      for (uint8_t& b : sg) b = uint8_t(~b);
    }
    for (int k = 0; k < 8; ++k) {
      const int g = iq3_grid_index(s, st.L + 4 * k);
      qs[k] = uint8_t(g & 255);
      y->qh[ib] = uint8_t(y->qh[ib] | ((g >> 8) << k));
    }
    qs += 8;
    std::memcpy(signs, sg, 4);
    signs += 4;
    scales[ib] = scale;
    max_scale = fmax_ggml(max_scale, scale);
  }
  if (!max_scale) return;
  const float d = max_scale / 31;
  const uint16_t dh = f32_to_f16(d * 1.033f);
  std::memcpy(&y->d, &dh, 2);
  const float id = 1 / d;
  for (int ib = 0; ib < QK_K / 32; ib += 2) {
    const int l1 = clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
    const int l2 = clamp(nearest_int(0.5f * (id * scales[ib + 1] - 1)), 0, 15);
    y->scales[ib / 2] = uint8_t(l1 | (l2 << 4));
  }
}

}  // namespace

bool quantize_iq4_iq3(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                      const float* imatrix) {
  if (t != DType::IQ4_NL && t != DType::IQ4_XS && t != DType::IQ3_XXS && t != DType::IQ3_S) return false;
  const int64_t bs = dtype_info(t).block_size;
  const size_t bb = dtype_info(t).block_bytes;
  if (n_per_row % bs != 0)
    fail("quantize", std::string(dtype_name(t)) + ": row length not a multiple of the block size");
  const Iq3Search* search =
      t == DType::IQ3_XXS ? &iq3_search(256) : t == DType::IQ3_S ? &iq3_search(512) : nullptr;
  Iq3State st;
  for (int64_t r = 0; r < nrows; ++r) {
    for (int64_t b = 0; b < n_per_row / bs; ++b) {
      const float* x = src + r * n_per_row + b * bs;
      const float* qw = imatrix ? imatrix + b * bs : nullptr;  // one importance per column
      uint8_t* out = dst + size_t(r * (n_per_row / bs) + b) * bb;
      switch (t) {
        case DType::IQ4_NL: {
          BlockIQ4_NL y;
          iq4_nl_block(x, qw, &y);
          std::memcpy(out, &y, sizeof y);
          break;
        }
        case DType::IQ4_XS: {
          BlockIQ4_XS y;
          iq4_xs_block(x, qw, &y);
          std::memcpy(out, &y, sizeof y);
          break;
        }
        case DType::IQ3_XXS: iq3_xxs_block(*search, x, qw, out, st); break;
        default: {
          BlockIQ3_S y;
          iq3_s_block(*search, x, qw, &y, st);
          std::memcpy(out, &y, sizeof y);
          break;
        }
      }
    }
  }
  return true;
}

}  // namespace mixtral::quant
