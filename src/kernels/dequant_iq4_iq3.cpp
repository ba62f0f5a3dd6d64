// Scalar reference dequantizers of IQ4_NL, IQ4_XS, IQ3_XXS and IQ3_S. Each value is one product
// of floats in the order ggml's dequantize_row_* forms it (scale first, then the level, then the
// sign), so the results equal ggml's bit for bit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/dequant_family.h"

#include <cstring>

#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/iq_grids_iq4_iq3.h"

namespace mixtral::ref {
namespace {


inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint8_t grid_byte(uint32_t g, int j) { return uint8_t(g >> 8 * j); }

void iq4_nl(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockIQ4_NL*>(src);
  for (int64_t i = 0; i < n / QK4_NL; ++i, dst += QK4_NL) {
    const float d = half_at(b[i].d);
    for (int j = 0; j < QK4_NL / 2; ++j) {
      dst[j] = d * float(kvalues_iq4nl[b[i].qs[j] & 0xF]);
      dst[j + QK4_NL / 2] = d * float(kvalues_iq4nl[b[i].qs[j] >> 4]);
    }
  }
}

void iq4_xs(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockIQ4_XS*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    uint16_t scales_h;
    std::memcpy(&scales_h, &b[i].scales_h, 2);
    const uint8_t* qs = b[i].qs;
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 16, dst += 32) {
      // 6-bit scale: low 4 bits from scales_l (two per byte), high 2 from scales_h.
      const int ls = ((b[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4);
      const float dl = d * float(ls - 32);
      for (int j = 0; j < 16; ++j) {
        dst[j] = dl * float(kvalues_iq4nl[qs[j] & 0xF]);
        dst[j + 16] = dl * float(kvalues_iq4nl[qs[j] >> 4]);
      }
    }
  }
}

// 8 values: the magnitudes of two grid points times db, negated where sign bit j is set.
inline void iq3_eight(float db, uint32_t g0, uint32_t g1, uint8_t signs, float* y) {
  for (int j = 0; j < 4; ++j) {
    y[j] = db * float(grid_byte(g0, j)) * ((signs >> j) & 1 ? -1.f : 1.f);
    y[j + 4] = db * float(grid_byte(g1, j)) * ((signs >> (j + 4)) & 1 ? -1.f : 1.f);
  }
}

void iq3_xxs(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockIQ3_XXS*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    const uint8_t* qs = b[i].qs;                          // 64 grid indices, 8 per 32 values
    const uint8_t* scales_and_signs = b[i].qs + QK_K / 4;  // one u32 per 32 values
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 8) {
      const uint32_t aux = u32_at(scales_and_signs + 4 * ib);
      const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
      for (int l = 0; l < 4; ++l, dst += 8) {
        const uint8_t signs = iq_signs(int((aux >> 7 * l) & 127));  // 7 stored bits + parity
        iq3_eight(db, iq3xxs_grid[qs[2 * l]], iq3xxs_grid[qs[2 * l + 1]], signs, dst);
      }
    }
  }
}

void iq3_s(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockIQ3_S*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    for (int ib = 0; ib < QK_K / 32; ++ib) {
      const int sc = (b[i].scales[ib / 2] >> 4 * (ib % 2)) & 0xF;
      const float db = d * float(1 + 2 * sc);
      const uint8_t* qs = b[i].qs + 8 * ib;
      const uint8_t qh = b[i].qh[ib];  // 9th bit of the 8 grid indices
      const uint8_t* signs = b[i].signs + 4 * ib;
      for (int l = 0; l < 4; ++l, dst += 8) {
        const int g0 = qs[2 * l] | (((qh >> (2 * l)) & 1) << 8);
        const int g1 = qs[2 * l + 1] | (((qh >> (2 * l + 1)) & 1) << 8);
        iq3_eight(db, iq3s_grid[g0], iq3s_grid[g1], signs[l], dst);
      }
    }
  }
}

}  // namespace

DequantizeFn dequant_iq4_iq3(DType t) {
  switch (t) {
    case DType::IQ4_NL: return iq4_nl;
    case DType::IQ4_XS: return iq4_xs;
    case DType::IQ3_XXS: return iq3_xxs;
    case DType::IQ3_S: return iq3_s;
    default: return nullptr;
  }
}

}  // namespace mixtral::ref
