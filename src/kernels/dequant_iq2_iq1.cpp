// Reference dequantizers of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M. Each value is computed with
// the float operations of ggml's dequantize_row_* (c392e509), in the same order, so the results
// are bit-identical to ggml's (tests/test_iq2_iq1.cpp checks them against ../shared/fixtures).
//
// All five split a 256-value super-block into 8 groups of 32 and those into 8-value grid entries
// (quant/iq_grids_iq2_iq1.h). The IQ2 types store grid magnitudes plus 8 sign bits per entry
// (7 stored, the 8th is the parity: iq_signs); the IQ1 types store grid values in {-1, 0, 1}
// shifted by +-kIq1Delta.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstddef>
#include <cstring>

#include "core/fp16.h"
#include "kernels/dequant_family.h"
#include "quant/blocks.h"
#include "quant/iq_grids_iq2_iq1.h"

namespace mixtral::ref {
namespace {

using iq::grid_byte;

inline float half_bits(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return f16_to_f32(v);
}
inline uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 8 values of an IQ2 grid entry: scale * magnitude, negated where the sign bit is set. (ggml
// multiplies by -1.f or 1.f, which is exact, so the negation is the same value.)
inline void iq2_entry(float scale, uint64_t g, uint8_t signs, float* y) {
  for (int j = 0; j < 8; ++j) {
    const float v = scale * float(grid_byte(g, j));
    y[j] = (signs >> j) & 1 ? -v : v;
  }
}

// IQ2_XXS: per 32 values two u32: aux0 = 4 grid indices (bytes), aux1 = 4x7 sign bits and a
// 4-bit scale in the top bits; scale = d * (0.5 + s) * 0.25.
void dequant_iq2_xxs(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, src += sizeof(BlockIQ2_XXS)) {
    const float d = half_bits(src);
    const uint8_t* qs = src + 2;
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 8) {
      const uint32_t aux1 = u32_at(qs + 4);
      const float db = d * (0.5f + float(aux1 >> 28)) * 0.25f;
      for (int l = 0; l < 4; ++l, y += 8)
        iq2_entry(db, iq::iq2xxs_grid[qs[l]], iq_signs(int((aux1 >> (7 * l)) & 127)), y);
    }
  }
}

// IQ2_XS: 32 u16 = 9-bit grid index | 7 sign bits << 9; a 4-bit scale per 16 values.
void dequant_iq2_xs(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, src += sizeof(BlockIQ2_XS)) {
    const float d = half_bits(src);
    const uint8_t* qs = src + 2;
    const uint8_t* scales = src + 2 + QK_K / 4;
    for (int ib = 0; ib < QK_K / 32; ++ib) {
      const float db[2] = {d * (0.5f + float(scales[ib] & 0xf)) * 0.25f,
                           d * (0.5f + float(scales[ib] >> 4)) * 0.25f};
      for (int l = 0; l < 4; ++l, y += 8) {
        const uint16_t q = u16_at(qs + 2 * (4 * ib + l));
        iq2_entry(db[l / 2], iq::iq2xs_grid[q & 511], iq_signs(q >> 9), y);
      }
    }
  }
}

// IQ2_S: 10-bit grid index = qs byte | 2 bits of qh; 8 explicit sign bits per entry (the second
// half of qs); a 4-bit scale per 16 values.
void dequant_iq2_s(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, src += sizeof(BlockIQ2_S)) {
    const auto* b = reinterpret_cast<const BlockIQ2_S*>(src);
    const float d = half_bits(src);
    const uint8_t* qs = b->qs;
    const uint8_t* signs = b->qs + QK_K / 8;
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, signs += 4) {
      const float db[2] = {d * (0.5f + float(b->scales[ib] & 0xf)) * 0.25f,
                           d * (0.5f + float(b->scales[ib] >> 4)) * 0.25f};
      for (int l = 0; l < 4; ++l, y += 8) {
        const int idx = qs[l] | ((b->qh[ib] << (8 - 2 * l)) & 0x300);
        iq2_entry(db[l / 2], iq::iq2s_grid[idx], signs[l], y);
      }
    }
  }
}

// 8 values of an IQ1 grid entry: scale * (value + delta).
inline void iq1_entry(float scale, float delta, uint64_t g, float* y) {
  for (int j = 0; j < 8; ++j) y[j] = scale * (float(int8_t(grid_byte(g, j))) + delta);
}

// IQ1_S: per 32 values a u16 qh = 4x3 high index bits, a 3-bit scale (bits 12-14) and the delta
// sign (bit 15); scale = d * (2s + 1).
void dequant_iq1_s(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, src += sizeof(BlockIQ1_S)) {
    const auto* b = reinterpret_cast<const BlockIQ1_S*>(src);
    const float d = half_bits(src);
    const uint8_t* qs = b->qs;
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4) {
      const uint16_t qh = u16_at(src + offsetof(BlockIQ1_S, qh) + 2 * ib);
      const float dl = d * float(2 * ((qh >> 12) & 7) + 1);
      const float delta = qh & 0x8000 ? -iq::kIq1Delta : iq::kIq1Delta;
      for (int l = 0; l < 4; ++l, y += 8)
        iq1_entry(dl, delta, iq::iq1s_grid[qs[l] | (((qh >> (3 * l)) & 7) << 8)], y);
    }
  }
}

// IQ1_M: no d field; the fp16 super-block scale is the top nibbles of the four u16 of scales
// (nibble k from u16 k). The rest of each u16 holds four 3-bit scales, one per 16 values. qh: per
// 8 values 3 high index bits and a delta sign bit (one nibble).
void dequant_iq1_m(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, src += sizeof(BlockIQ1_M)) {
    const auto* b = reinterpret_cast<const BlockIQ1_M*>(src);
    uint16_t sc[4];
    std::memcpy(sc, b->scales, 8);
    const uint16_t dbits = uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) |
                                    (sc[3] & 0xf000));
    const float d = f16_to_f32(dbits);
    const uint8_t* qs = b->qs;
    const uint8_t* qh = b->qh;
    for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, qh += 2) {
      const int shift = 6 * (ib % 2);
      const float dl[2] = {d * float(2 * ((sc[ib / 2] >> shift) & 7) + 1),
                           d * float(2 * ((sc[ib / 2] >> (shift + 3)) & 7) + 1)};
      for (int l = 0; l < 4; ++l, y += 8) {
        const uint8_t h = uint8_t(qh[l / 2] >> (4 * (l % 2)));  // this entry's nibble
        const int idx = qs[l] | ((h & 7) << 8);
        const float delta = h & 8 ? -iq::kIq1Delta : iq::kIq1Delta;
        iq1_entry(dl[l / 2], delta, iq::iq1s_grid[idx], y);
      }
    }
  }
}

}  // namespace

DequantizeFn dequant_iq2_iq1(DType t) {
  switch (t) {
    case DType::IQ2_XXS: return dequant_iq2_xxs;
    case DType::IQ2_XS: return dequant_iq2_xs;
    case DType::IQ2_S: return dequant_iq2_s;
    case DType::IQ1_S: return dequant_iq1_s;
    case DType::IQ1_M: return dequant_iq1_m;
    default: return nullptr;
  }
}

}  // namespace mixtral::ref
