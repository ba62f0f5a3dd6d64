// Quantizers of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M, written from ggml's quantize_row_*_impl
// (ggml-quants.c, c392e509) so that they write the same bytes: the same float32 operations in the
// same order, no fused multiply-add (ggml-quants.c is built without -march flags).
//
// All of them fit 8-value patterns from a fixed grid (quant/iq_grids_iq2_iq1.h) to each group
// of a 256-value super-block, with per-value importance w = imatrix * sqrt(sigma2 + x^2)
// (sigma2 = the super-block's mean square, doubled for IQ2_S / IQ1). A pattern that is no grid
// entry is replaced by its best neighbour (quant/iq2_iq1_neighbours.h).
//   IQ2_XXS / IQ2_XS / IQ2_S: quantize |x| to the magnitudes, keep the signs apart (IQ2_XXS and
//     IQ2_XS store 7 of 8 signs, so the least important value of an odd-sign group is flipped);
//     the scale is searched over a small range around max / 5.
//   IQ1_S / IQ1_M: values -1, 0, 1 shifted by +-kIq1Delta; the best split of the sorted group
//     into three is found exhaustively.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/quant_search.h"
#include "quant/iq2_iq1_neighbours.h"
#include "quant/iq_grids_iq2_iq1.h"
#include "quant/quantize_family.h"

namespace mixtral::quant {
namespace {

using iq::GridSearch;

constexpr float kGroupMaxEps = 1e-15f;      // ggml's GROUP_MAX_EPS
constexpr float kGroupMaxEpsIq2S = 1e-8f;   // GROUP_MAX_EPS_IQ2_S
constexpr float kGroupMaxEpsIq1S = 1e-12f;  // GROUP_MAX_EPS_IQ1_S
constexpr float kGroupMaxEpsIq1M = 1e-7f;   // GROUP_MAX_EPS_IQ1_M
constexpr int kMaxQ = 3;                    // IQ2 levels: 0..kMaxQ-1, point 2l+1

inline float fmax_ggml(float a, float b) { return a > b ? a : b; }  // ggml's MAX (b on ties/NaN)
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

inline void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// ================================ IQ2: magnitudes and signs =====================================

// The 2-bit levels of 8 values packed as a grid pattern code.
inline uint16_t code_of(const int8_t* L) {
  uint16_t u = 0;
  for (int i = 0; i < 8; ++i) u = uint16_t(u | L[i] << (2 * i));
  return u;
}

// ggml's iq2_find_best_neighbour: the neighbour of pattern u with the least sum w (s q - x)^2,
// q = 2l+1; writes its levels to L.
int iq2_best_neighbour(const GridSearch& gs, uint16_t u, const float* xval, const float* w, float scale,
                       int8_t* L) {
  float best_d2 = FLT_MAX;
  int best = -1;
  for (const uint16_t k : gs.neighbours(u)) {
    float d2 = 0;
    for (int i = 0; i < 8; ++i) {
      const float q = float(2 * gs.level(k, i) + 1);
      const float diff = scale * q - xval[i];
      d2 += w[i] * diff * diff;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      best = k;
    }
  }
  if (best < 0) fail("quantize", "IQ2 grid search found no neighbour (non-finite input?)");
  for (int i = 0; i < 8; ++i) L[i] = int8_t(gs.level(best, i));
  return best;
}

// Levels of 8 values xval at inverse scale id, replaced by the best neighbour (at scale s) when
// they form no grid entry. Returns whether they did form one.
bool iq2_round_group(const GridSearch& gs, const float* xval, const float* waux, float id, float s, int8_t* L) {
  for (int i = 0; i < 8; ++i) L[i] = int8_t(clampi(nearest_int(0.5f * (id * xval[i] - 1)), 0, kMaxQ - 1));
  const uint16_t u = code_of(L);
  if (gs.entry(u) >= 0) return true;
  iq2_best_neighbour(gs, u, xval, waux, s, L);
  return false;
}

// sum w x q and sum w q^2 over n values with q = 2l+1.
inline void iq2_sums(int n, const float* xval, const float* w, const int8_t* L, float* sumqx, float* sumq2) {
  float a = 0, b = 0;
  for (int i = 0; i < n; ++i) {
    const float q = float(2 * L[i] + 1);
    a += w[i] * xval[i] * q;
    b += w[i] * q * q;
  }
  *sumqx = a;
  *sumq2 = b;
}

// The scale search of one group of `groups` x 8 values (|x| in xval): try inverse scales
// (5 + is/10) / base for is in [-is_max, is_max], keep the one with the best weighted fit, then
// round again at that scale (every sub-group when requant_all, as IQ2_XXS does; else only those
// whose pattern was no grid entry, as IQ2_XS / IQ2_S do) and refit. L (levels) must hold the
// fallback levels on entry. Returns the scale.
float iq2_search_scale(const GridSearch& gs, int groups, const float* xval, const float* w, const float* waux,
                       float base, float scale, int is_max, bool requant_all, int8_t* L) {
  const int n = 8 * groups;
  int8_t Laux[32];
  bool on_grid[4] = {true, true, true, true}, on_grid_aux[4];
  float best = 0;
  for (int is = -is_max; is <= is_max; ++is) {
    const float id = (float(2 * kMaxQ - 1) + float(is) * 0.1f) / base;
    const float this_scale = 1 / id;
    for (int k = 0; k < groups; ++k)
      on_grid_aux[k] = iq2_round_group(gs, xval + 8 * k, waux + 8 * k, id, this_scale, Laux + 8 * k);
    float sumqx, sumq2;
    iq2_sums(n, xval, w, Laux, &sumqx, &sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, size_t(n));
      for (int k = 0; k < groups; ++k) on_grid[k] = on_grid_aux[k];
    }
  }
  bool any_off = false;
  for (int k = 0; k < groups; ++k) any_off = any_off || !on_grid[k];
  if ((requant_all || any_off) && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < groups; ++k)
      if (requant_all || !on_grid[k]) iq2_round_group(gs, xval + 8 * k, waux + 8 * k, id, scale, L + 8 * k);
    float sumqx, sumq2;
    iq2_sums(n, xval, w, L, &sumqx, &sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  return scale;
}

// |x| of 8 values into xval and their sign bits. With even_parity (IQ2_XXS, IQ2_XS store 7 sign
// bits), an odd number of minus signs is made even by flipping the value with the least w x^2.
uint8_t iq2_signs(const float* x, const float* w, bool even_parity, float* xval) {
  int nflip = 0;
  uint8_t s = 0;
  for (int i = 0; i < 8; ++i) {
    if (x[i] >= 0) {
      xval[i] = x[i];
    } else {
      xval[i] = -x[i];
      ++nflip;
      s = uint8_t(s | 1 << i);
    }
  }
  if (even_parity && nflip % 2) {
    int imin = 0;
    float min = w[0] * x[0] * x[0];
    for (int i = 1; i < 8; ++i) {
      const float ax = w[i] * x[i] * x[i];
      if (ax < min) {
        min = ax;
        imin = i;
      }
    }
    xval[imin] = -xval[imin];
    s = uint8_t(s ^ 1 << imin);
  }
  return s;
}

// sigma2 of a super-block: factor * mean square.
inline float super_block_sigma2(const float* x, float factor) {
  float sumx2 = 0;
  for (int i = 0; i < QK_K; ++i) sumx2 += x[i] * x[i];
  return factor * sumx2 / QK_K;
}

// The grid entry of levels L; ggml aborts when they form none (they always do after the search).
int entry_of(const GridSearch& gs, const int8_t* L) {
  const int e = gs.entry(code_of(L));
  if (e < 0) fail("quantize", "IQ2/IQ1 levels off the grid (non-finite input?)");
  return e;
}

// IQ2_XXS: groups of 32 (4 patterns), scale start from make_qp_quants, 4-bit group scales.
void quantize_iq2_xxs_row(const float* x, uint8_t* y, int64_t nbl, const float* qw_row) {
  const GridSearch& gs = iq::grid_search(iq::GridKind::IQ2_XXS);
  for (int64_t ibl = 0; ibl < nbl; ++ibl, y += sizeof(BlockIQ2_XXS)) {
    const float* xbl = x + QK_K * ibl;
    uint32_t q2[2 * (QK_K / 32)] = {};
    float scales[QK_K / 32];
    float max_scale = 0;
    const float sigma2 = super_block_sigma2(xbl, 1.f);
    for (int ib = 0; ib < QK_K / 32; ++ib) {
      const float* xb = xbl + 32 * ib;
      const float* qw = qw_row + QK_K * ibl + 32 * ib;
      float weight[32], waux[32], xval[32];
      int8_t L[32];
      uint8_t signs[4];
      for (int i = 0; i < 32; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
      for (int k = 0; k < 4; ++k) signs[k] = iq2_signs(xb + 8 * k, weight + 8 * k, true, xval + 8 * k) & 127;
      float max = xval[0];
      for (int i = 1; i < 32; ++i) max = fmax_ggml(max, xval[i]);
      if (max < kGroupMaxEps) {
        scales[ib] = 0;
        continue;
      }
      float scale = make_qp_quants(32, kMaxQ + 1, xval, reinterpret_cast<uint8_t*>(L), weight);
      scale = iq2_search_scale(gs, 4, xval, weight, waux, scale * kMaxQ, scale, 6, true, L);
      if (scale < 0) {  // (ggml: cannot happen) a negative fit flips every sign
        scale = -scale;
        for (int k = 0; k < 4; ++k) signs[k] = uint8_t(~signs[k] & 127);
      }
      for (int k = 0; k < 4; ++k) {
        q2[2 * ib] |= uint32_t(entry_of(gs, L + 8 * k)) << (8 * k);
        q2[2 * ib + 1] |= uint32_t(signs[k]) << (7 * k);
      }
      scales[ib] = scale;
      max_scale = fmax_ggml(max_scale, scale);
    }
    put_u16(y, f32_to_f16(0.f));
    if (!max_scale) {
      std::memset(y + 2, 0, QK_K / 4);
      continue;
    }
    const float d = max_scale / 31;
    put_u16(y, f32_to_f16(d));
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
      const int l = clampi(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
      q2[2 * ib + 1] |= uint32_t(l) << 28;
    }
    std::memcpy(y + 2, q2, QK_K / 4);
  }
}

// IQ2_XS and IQ2_S: groups of 16 (2 patterns), scale search around max / 5, a 4-bit scale per 16.
// The types differ in sigma2 (x1 / x2), the weights without an imatrix (IQ2_S only), the signs
// (7 + parity / 8 stored), the zero threshold, the index width (9 / 10 bits) and d (x 0.9875 for
// IQ2_S).
struct Iq2Group16 {
  float scales[QK_K / 16];
  uint16_t index[QK_K / 8];  // grid entry per 8 values
  uint8_t signs[QK_K / 8];
  float max_scale = 0;
};

// L: 16 levels kept across the groups of a row, the fallback when no scale fits (as ggml's).
void iq2_search16(const GridSearch& gs, const float* xbl, const float* qw, bool is_s, int8_t* L, Iq2Group16& g) {
  const float sigma2 = super_block_sigma2(xbl, is_s ? 2.f : 1.f);
  for (int ib = 0; ib < QK_K / 16; ++ib) {
    const float* xb = xbl + 16 * ib;
    float weight[16], waux[16], xval[16];
    if (qw) {
      for (int i = 0; i < 16; ++i) weight[i] = qw[16 * ib + i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    } else {
      for (int i = 0; i < 16; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
    }
    for (int i = 0; i < 16; ++i) waux[i] = std::sqrt(weight[i]);
    uint8_t signs[2];
    for (int k = 0; k < 2; ++k) {
      signs[k] = iq2_signs(xb + 8 * k, weight + 8 * k, !is_s, xval + 8 * k);
      if (!is_s) signs[k] &= 127;
    }
    float max = xval[0];
    for (int i = 1; i < 16; ++i) max = fmax_ggml(max, xval[i]);
    g.index[2 * ib] = g.index[2 * ib + 1] = 0;
    g.signs[2 * ib] = g.signs[2 * ib + 1] = 0;
    if (max < (is_s ? kGroupMaxEpsIq2S : kGroupMaxEps)) {
      g.scales[ib] = 0;
      if (!is_s) std::memset(L, 0, 16);
      continue;
    }
    float scale = iq2_search_scale(gs, 2, xval, weight, waux, max, max / float(2 * kMaxQ - 1), 9, false, L);
    if (scale < 0) {
      scale = -scale;
      for (int k = 0; k < 2; ++k) signs[k] = uint8_t(is_s ? ~signs[k] : ~signs[k] & 127);
    }
    for (int k = 0; k < 2; ++k) {
      g.index[2 * ib + k] = uint16_t(entry_of(gs, L + 8 * k));
      g.signs[2 * ib + k] = signs[k];
    }
    g.scales[ib] = scale;
    g.max_scale = fmax_ggml(g.max_scale, scale);
  }
}

// The 4-bit scales of 16 groups, two per byte, for super-block scale d.
void iq2_pack_scales(const float* scales, float d, uint8_t* out) {
  const float id = 1 / d;
  for (int ib = 0; ib < QK_K / 16; ++ib) {
    const int l = clampi(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
    if (ib % 2 == 0) out[ib / 2] = uint8_t(l);
    else out[ib / 2] = uint8_t(out[ib / 2] | l << 4);
  }
}

void quantize_iq2_xs_row(const float* x, uint8_t* y, int64_t nbl, const float* qw_row) {
  const GridSearch& gs = iq::grid_search(iq::GridKind::IQ2_XS);
  int8_t L[16] = {};
  for (int64_t ibl = 0; ibl < nbl; ++ibl, y += sizeof(BlockIQ2_XS)) {
    Iq2Group16 g;
    iq2_search16(gs, x + QK_K * ibl, qw_row + QK_K * ibl, false, L, g);
    uint8_t* qs = y + offsetof(BlockIQ2_XS, qs);
    uint8_t* scales = y + offsetof(BlockIQ2_XS, scales);
    put_u16(y, f32_to_f16(0.f));
    std::memset(scales, 0, QK_K / 32);
    std::memset(qs, 0, QK_K / 4);
    if (!g.max_scale) continue;
    const float d = g.max_scale / 31;
    put_u16(y, f32_to_f16(d));
    iq2_pack_scales(g.scales, d, scales);
    for (int i = 0; i < QK_K / 8; ++i) put_u16(qs + 2 * i, uint16_t(g.index[i] | g.signs[i] << 9));
  }
}

void quantize_iq2_s_row(const float* x, uint8_t* y, int64_t nbl, const float* qw_row) {
  const GridSearch& gs = iq::grid_search(iq::GridKind::IQ2_S);
  int8_t L[16] = {};
  for (int64_t ibl = 0; ibl < nbl; ++ibl, y += sizeof(BlockIQ2_S)) {
    Iq2Group16 g;
    iq2_search16(gs, x + QK_K * ibl, qw_row ? qw_row + QK_K * ibl : nullptr, true, L, g);
    auto* b = reinterpret_cast<BlockIQ2_S*>(y);
    std::memset(y, 0, sizeof(BlockIQ2_S));
    for (int i = 0; i < QK_K / 8; ++i) {
      b->qs[i] = uint8_t(g.index[i] & 255);
      b->qh[i / 4] = uint8_t(b->qh[i / 4] | (g.index[i] >> 8) << (2 * (i % 4)));
      b->qs[QK_K / 8 + i] = g.signs[i];
    }
    if (!g.max_scale) continue;
    const float d = g.max_scale / 31;
    put_u16(y, f32_to_f16(d * 0.9875f));
    iq2_pack_scales(g.scales, d, b->scales);
  }
}

// ================================ IQ1: -1, 0, 1 plus a shift ===================================

// Grid values of the two shifts: +kIq1Delta (x_p) and -kIq1Delta (x_m), by level.
constexpr float kIq1P[3] = {-1 + iq::kIq1Delta, iq::kIq1Delta, 1 + iq::kIq1Delta};
constexpr float kIq1M[3] = {-1 - iq::kIq1Delta, -iq::kIq1Delta, 1 - iq::kIq1Delta};

// ggml's iq1_find_best_neighbour2: the neighbour of pattern u with the least sum w (s q - x)^2,
// q = xx[level]; writes its levels to L.
int iq1_best_neighbour(const GridSearch& gs, uint16_t u, const float* x, const float* w, float scale,
                       const float* xx, int8_t* L) {
  float best = FLT_MAX;
  int best_k = -1;
  for (const uint16_t k : gs.neighbours(u)) {
    float d2 = 0;
    for (int i = 0; i < 8; ++i) {
      const float diff = scale * xx[gs.level(k, i)] - x[i];
      d2 += w[i] * diff * diff;
    }
    if (d2 < best) {
      best = d2;
      best_k = k;
    }
  }
  if (best_k < 0) fail("quantize", "IQ1 grid search found no neighbour (non-finite input?)");
  for (int i = 0; i < 8; ++i) L[i] = int8_t(gs.level(best_k, i));
  return best_k;
}

// Indices 0..n-1 ordered by x, equal values in index order (glibc's qsort, which ggml calls on
// (x, index) pairs compared by x, is a merge sort for arrays this small: stable).
void sort_by_value(const float* x, int n, int* idx) {
  for (int j = 0; j < n; ++j) idx[j] = j;
  std::stable_sort(idx, idx + n, [x](int a, int b) { return x[a] < x[b]; });
}

// Levels L of `groups` x 8 values after the split search: the grid entries (best neighbours
// where the levels form none), and the refitted scale when any was replaced. xx_of(k): the
// shifted values of sub-group k.
template <class XxOf>
float iq1_fit_grid(const GridSearch& gs, int groups, const float* xb, const float* weight, float scale,
                   XxOf xx_of, int8_t* L, uint16_t* index) {
  bool all_on_grid = true;
  for (int k = 0; k < groups; ++k) {
    const uint16_t u = code_of(L + 8 * k);
    int e = gs.entry(u);
    if (e < 0) {
      all_on_grid = false;
      e = iq1_best_neighbour(gs, u, xb + 8 * k, weight + 8 * k, scale, xx_of(k), L + 8 * k);
    }
    index[k] = uint16_t(e);
  }
  if (!all_on_grid) {
    float sumqx = 0, sumq2 = 0;
    for (int k = 0; k < groups; ++k) {
      const float* xx = xx_of(k);
      for (int j = 0; j < 8; ++j) {
        const float w = weight[8 * k + j];
        const float q = xx[gs.level(index[k], j)];
        sumqx += w * q * xb[8 * k + j];
        sumq2 += w * q * q;
      }
    }
    if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
  }
  return scale;
}

// Level by sorted position: 0 below i1, 1 below i2, 2 from there.
inline void iq1_levels(const int* idx, int n, int i1, int i2, int8_t* L) {
  for (int j = 0; j < n; ++j) L[idx[j]] = int8_t(j < i1 ? 0 : j < i2 ? 1 : 2);
}

// IQ1_S: groups of 32 with one shift sign and a 3-bit scale each. shifts: kept across the
// super-blocks and rows of one call (ggml reads a stale one for an all-zero group).
void quantize_iq1_s_row(const float* x, uint8_t* y, int64_t nbl, const float* qw_row, int8_t* shifts) {
  constexpr int bs = 32;
  const GridSearch& gs = iq::grid_search(iq::GridKind::IQ1);
  for (int64_t ibl = 0; ibl < nbl; ++ibl, y += sizeof(BlockIQ1_S)) {
    auto* b = reinterpret_cast<BlockIQ1_S*>(y);
    std::memset(y, 0, sizeof(BlockIQ1_S));
    uint16_t qh[QK_K / bs] = {};
    const float* xbl = x + QK_K * ibl;
    const float sigma2 = super_block_sigma2(xbl, 2.f);
    float scales[QK_K / bs], max_scale = 0;
    for (int ib = 0; ib < QK_K / bs; ++ib) {
      const float* xb = xbl + bs * ib;
      const float* qw = qw_row + QK_K * ibl + bs * ib;
      float weight[bs], sumx[bs + 1], sumw[bs + 1];
      for (int i = 0; i < bs; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      float max = std::fabs(xb[0]);
      for (int i = 1; i < bs; ++i) max = fmax_ggml(max, std::fabs(xb[i]));
      if (max < kGroupMaxEpsIq1S) {
        scales[ib] = 0;
        continue;
      }
      int idx[bs];
      sort_by_value(xb, bs, idx);
      sumx[0] = sumw[0] = 0;
      for (int j = 0; j < bs; ++j) {
        sumx[j + 1] = sumx[j] + weight[idx[j]] * xb[idx[j]];
        sumw[j + 1] = sumw[j] + weight[idx[j]];
      }
      float best_score = -FLT_MIN, scale = max;
      int besti1 = -1, besti2 = -1, best_shift = 0;
      for (int i1 = 0; i1 <= bs; ++i1) {
        for (int i2 = i1; i2 <= bs; ++i2) {
          for (int shift : {1, -1}) {
            const float* v = shift == 1 ? kIq1P : kIq1M;
            const float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] + (sumx[bs] - sumx[i2]) * v[2];
            const float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                                (sumw[bs] - sumw[i2]) * v[2] * v[2];
            if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
              scale = sumqx / sumq2;
              best_score = scale * sumqx;
              besti1 = i1;
              besti2 = i2;
              best_shift = shift;
            }
          }
        }
      }
      if (besti1 < 0) fail("quantize", "IQ1_S found no split (zero importance weights?)");
      int8_t L[bs];
      iq1_levels(idx, bs, besti1, besti2, L);
      if (scale < 0) {
        for (int j = 0; j < bs; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        best_shift = -best_shift;
      }
      const float* xx = best_shift == 1 ? kIq1P : kIq1M;
      uint16_t index[bs / 8];
      scale = iq1_fit_grid(gs, bs / 8, xb, weight, scale, [xx](int) { return xx; }, L, index);
      for (int k = 0; k < bs / 8; ++k) {
        b->qs[(bs / 8) * ib + k] = uint8_t(index[k] & 255);
        qh[ib] = uint16_t(qh[ib] | (index[k] >> 8) << (3 * k));
      }
      scales[ib] = scale;
      shifts[ib] = int8_t(best_shift);
      max_scale = fmax_ggml(max_scale, scale);
    }
    if (max_scale) {
      const float d = max_scale / 15;
      put_u16(y, f32_to_f16(d * 1.125f));
      const float id = 1 / d;
      for (int ib = 0; ib < QK_K / bs; ++ib) {
        int l = clampi(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
        if (shifts[ib] == -1) l |= 8;
        qh[ib] = uint16_t(qh[ib] | l << 12);
      }
    }
    std::memcpy(y + offsetof(BlockIQ1_S, qh), qh, sizeof(qh));
  }
}

// IQ1_M weights of 16 values: imatrix * sqrt(sigma2 + x^2), or x^2 without an imatrix.
inline void iq1_m_weights(const float* xb, const float* qw, float sigma2, float* weight) {
  if (qw) {
    for (int i = 0; i < 16; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
  } else {
    for (int i = 0; i < 16; ++i) weight[i] = xb[i] * xb[i];
  }
}

// The shifted values of half h (8 values) of an IQ1_M group under shift combination k:
// k = 0: (+, +), 1: (+, -), 2: (-, +), 3: (-, -).
inline const float* iq1_m_xx(int k, int h) { return (h == 0 ? k < 2 : k % 2 == 0) ? kIq1P : kIq1M; }

// The best split (i1, i2) and shift combination of 16 values sorted by idx. Returns the scale.
float iq1_m_split(const float* xb, const float* weight, const int* idx, float max, int* bi1, int* bi2, int* bk) {
  constexpr int bs = 16;
  float best_score = -FLT_MIN, scale = max;
  *bi1 = *bi2 = *bk = -1;
  for (int i1 = 0; i1 <= bs; ++i1) {
    for (int i2 = i1; i2 <= bs; ++i2) {
      float sumqx[4] = {}, sumq2[4] = {};
      for (int j = 0; j < bs; ++j) {
        const int i = idx[j];
        const int lev = j < i1 ? 0 : j < i2 ? 1 : 2;
        for (int k = 0; k < 4; ++k) {
          const float v = iq1_m_xx(k, i < bs / 2 ? 0 : 1)[lev];
          sumqx[k] += weight[i] * v * xb[i];
          sumq2[k] += weight[i] * v * v;
        }
      }
      for (int k = 0; k < 4; ++k) {
        if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
          scale = sumqx[k] / sumq2[k];
          best_score = scale * sumqx[k];
          *bi1 = i1;
          *bi2 = i2;
          *bk = k;
        }
      }
    }
  }
  return scale;
}

// IQ1_M: groups of 16 with a shift combination and a 3-bit scale each; the fp16 super-block
// scale, refitted over the whole block, goes into the top nibbles of the four scale words.
// shifts: as for IQ1_S.
void quantize_iq1_m_row(const float* x, uint8_t* y, int64_t nbl, const float* qw_row, int8_t* shifts) {
  constexpr int bs = 16;
  constexpr uint8_t kShiftMask[4] = {0x00, 0x80, 0x08, 0x88};  // qh bits of the minus halves
  const GridSearch& gs = iq::grid_search(iq::GridKind::IQ1);
  for (int64_t ibl = 0; ibl < nbl; ++ibl, y += sizeof(BlockIQ1_M)) {
    auto* b = reinterpret_cast<BlockIQ1_M*>(y);
    std::memset(y, 0, sizeof(BlockIQ1_M));
    const float* xbl = x + QK_K * ibl;
    const float* qwb = qw_row ? qw_row + QK_K * ibl : nullptr;
    const float sigma2 = super_block_sigma2(xbl, 2.f);
    float scales[QK_K / bs], max_scale = 0;
    for (int ib = 0; ib < QK_K / bs; ++ib) {
      const float* xb = xbl + bs * ib;
      float weight[bs];
      iq1_m_weights(xb, qwb ? qwb + bs * ib : nullptr, sigma2, weight);
      float max = std::fabs(xb[0]);
      for (int i = 1; i < bs; ++i) max = fmax_ggml(max, std::fabs(xb[i]));
      if (max < kGroupMaxEpsIq1M) {
        scales[ib] = 0;
        continue;
      }
      int idx[bs];
      sort_by_value(xb, bs, idx);
      int i1, i2, best_k;
      float scale = iq1_m_split(xb, weight, idx, max, &i1, &i2, &best_k);
      if (best_k < 0) fail("quantize", "IQ1_M found no split (zero importance weights?)");
      int8_t L[bs];
      iq1_levels(idx, bs, i1, i2, L);
      if (scale < 0) {
        for (int j = 0; j < bs; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        best_k = 3 - best_k;
      }
      uint16_t index[2];
      scale = iq1_fit_grid(gs, 2, xb, weight, scale, [best_k](int h) { return iq1_m_xx(best_k, h); }, L, index);
      b->qs[2 * ib] = uint8_t(index[0] & 255);
      b->qs[2 * ib + 1] = uint8_t(index[1] & 255);
      b->qh[ib] = uint8_t((index[0] >> 8) | (index[1] >> 8) << 4);
      scales[ib] = scale;
      shifts[ib] = int8_t(best_k);
      max_scale = fmax_ggml(max_scale, scale);
    }
    if (!max_scale) continue;

    uint16_t sc[4] = {};
    float d = max_scale / 15;
    const float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < QK_K / bs; ++ib) {
      const int l = clampi(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
      sc[ib / 4] = uint16_t(sc[ib / 4] | l << (3 * (ib % 4)));
      b->qh[ib] = uint8_t(b->qh[ib] | kShiftMask[shifts[ib]]);
      const float* xb = xbl + bs * ib;
      float weight[bs];
      iq1_m_weights(xb, qwb ? qwb + bs * ib : nullptr, sigma2, weight);
      for (int k = 0; k < 2; ++k) {
        const float* xx = iq1_m_xx(shifts[ib], k);
        const int e = b->qs[2 * ib + k] + ((b->qh[ib] << (8 - 4 * k)) & 0x700);
        for (int j = 0; j < 8; ++j) {
          const float w = weight[8 * k + j];
          const float q = xx[gs.level(e, j)] * float(2 * l + 1);
          sumqx += w * q * xb[8 * k + j];
          sumq2 += w * q * q;
        }
      }
    }
    if (sumq2 > 0) d = sumqx / sumq2;
    const uint16_t h = f32_to_f16(d * 1.1125f);
    sc[0] = uint16_t(sc[0] | (h & 0x000f) << 12);
    sc[1] = uint16_t(sc[1] | (h & 0x00f0) << 8);
    sc[2] = uint16_t(sc[2] | (h & 0x0f00) << 4);
    sc[3] = uint16_t(sc[3] | (h & 0xf000));
    std::memcpy(b->scales, sc, sizeof(sc));
  }
}

}  // namespace

bool quantize_iq2_iq1(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                      const float* imatrix) {
  const int64_t nbl = n_per_row / QK_K;
  switch (t) {
    case DType::IQ2_XXS:
      if (!imatrix) return false;
      for (int64_t r = 0; r < nrows; ++r)
        quantize_iq2_xxs_row(src + r * n_per_row, dst + r * nbl * int64_t(sizeof(BlockIQ2_XXS)), nbl, imatrix);
      return true;
    case DType::IQ2_XS:
      if (!imatrix) return false;
      for (int64_t r = 0; r < nrows; ++r)
        quantize_iq2_xs_row(src + r * n_per_row, dst + r * nbl * int64_t(sizeof(BlockIQ2_XS)), nbl, imatrix);
      return true;
    case DType::IQ2_S:  // runs without importance weights too (weights from x^2)
      for (int64_t r = 0; r < nrows; ++r)
        quantize_iq2_s_row(src + r * n_per_row, dst + r * nbl * int64_t(sizeof(BlockIQ2_S)), nbl, imatrix);
      return true;
    case DType::IQ1_S: {
      if (!imatrix) return false;
      int8_t shifts[QK_K / 32] = {};
      for (int64_t r = 0; r < nrows; ++r)
        quantize_iq1_s_row(src + r * n_per_row, dst + r * nbl * int64_t(sizeof(BlockIQ1_S)), nbl, imatrix, shifts);
      return true;
    }
    case DType::IQ1_M: {  // runs without importance weights too (weights x^2), as ggml's does
      int8_t shifts[QK_K / 16] = {};
      for (int64_t r = 0; r < nrows; ++r)
        quantize_iq1_m_row(src + r * n_per_row, dst + r * nbl * int64_t(sizeof(BlockIQ1_M)), nbl, imatrix, shifts);
      return true;
    }
    default:
      return false;
  }
}

}  // namespace mixtral::quant
