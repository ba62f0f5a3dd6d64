// ref::matmul_q8's IQ2 / IQ1 blocks (matmul_q8_ref_iq2_iq1.h). The values and scales are those
// of the reference dequantizers (dequant_iq2_iq1.cpp) times 8: IQ2: d (0.5 + s) / 4 = d / 8 ·
// (2s + 1); IQ1: d (2s + 1) (g +- 1/8) = d / 8 · (2s + 1) (8g +- 1).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/matmul_q8_ref_iq2_iq1.h"

#include <cstddef>
#include <cstring>

#include "kernels/matmul_q8_unpack.h"
#include "quant/blocks.h"
#include "quant/iq_grids_iq2_iq1.h"

namespace mixtral::ref {
namespace {

using iq::grid_byte;
using q8::fp16_at;
using q8::iq1_m_d;

uint16_t u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Entry l's 8 values: magnitudes of grid entry g with sign bits `signs`.
void iq2_values(uint64_t g, uint8_t signs, int* v) {
  for (int j = 0; j < 8; ++j) v[j] = (signs >> j) & 1 ? -int(grid_byte(g, j)) : int(grid_byte(g, j));
}
// Entry l's 8 values: 8 · grid entry g (-1, 0, 1) + 1, or - 1 where neg.
void iq1_values(uint64_t g, bool neg, int* v) {
  for (int j = 0; j < 8; ++j) v[j] = 8 * int(int8_t(grid_byte(g, j))) + (neg ? -1 : 1);
}

}  // namespace

bool iq2_iq1_block(DType t, const uint8_t* row, int64_t b, const XBlock& xq, int32_t& I, float& dw) {
  const int ib = int(b % 8);
  const uint8_t* blk = row + size_t(b / 8) * dtype_info(t).block_bytes;
  int v[32], s[2];  // the values and the two half scales 2 s + 1
  float d;
  switch (t) {
    case DType::IQ2_XXS: {
      const uint8_t* qs = blk + offsetof(BlockIQ2_XXS, qs) + 8 * ib;
      const uint32_t aux = u32(qs + 4);
      for (int l = 0; l < 4; ++l) iq2_values(iq::iq2xxs_grid[qs[l]], iq_signs(int((aux >> (7 * l)) & 127)), v + 8 * l);
      s[0] = s[1] = 2 * int(aux >> 28) + 1;
      d = fp16_at(blk);
      break;
    }
    case DType::IQ2_XS: {
      for (int l = 0; l < 4; ++l) {
        const uint16_t q = u16(blk + offsetof(BlockIQ2_XS, qs) + 2 * (4 * ib + l));
        iq2_values(iq::iq2xs_grid[q & 511], iq_signs(q >> 9), v + 8 * l);
      }
      const int sc = blk[offsetof(BlockIQ2_XS, scales) + ib];
      s[0] = 2 * (sc & 15) + 1, s[1] = 2 * (sc >> 4) + 1;
      d = fp16_at(blk);
      break;
    }
    case DType::IQ2_S: {
      const auto& q = *reinterpret_cast<const BlockIQ2_S*>(blk);
      for (int l = 0; l < 4; ++l) {
        const int idx = q.qs[4 * ib + l] | ((q.qh[ib] >> (2 * l)) & 3) << 8;
        iq2_values(iq::iq2s_grid[idx], q.qs[QK_K / 8 + 4 * ib + l], v + 8 * l);
      }
      s[0] = 2 * (q.scales[ib] & 15) + 1, s[1] = 2 * (q.scales[ib] >> 4) + 1;
      d = fp16_at(blk);
      break;
    }
    case DType::IQ1_S: {
      const uint16_t qh = u16(blk + offsetof(BlockIQ1_S, qh) + 2 * ib);
      const uint8_t* qs = blk + offsetof(BlockIQ1_S, qs) + 4 * ib;
      for (int l = 0; l < 4; ++l) iq1_values(iq::iq1s_grid[qs[l] | ((qh >> (3 * l)) & 7) << 8], qh & 0x8000, v + 8 * l);
      s[0] = s[1] = 2 * ((qh >> 12) & 7) + 1;
      d = fp16_at(blk);
      break;
    }
    case DType::IQ1_M: {
      const auto& q = *reinterpret_cast<const BlockIQ1_M*>(blk);
      for (int l = 0; l < 4; ++l) {
        const int h = q.qh[2 * ib + l / 2] >> (4 * (l % 2));
        iq1_values(iq::iq1s_grid[q.qs[4 * ib + l] | (h & 7) << 8], h & 8, v + 8 * l);
      }
      const int sc = u16(q.scales + 2 * (ib / 2)) >> (6 * (ib % 2));
      s[0] = 2 * (sc & 7) + 1, s[1] = 2 * ((sc >> 3) & 7) + 1;
      d = iq1_m_d(q.scales);
      break;
    }
    default: return false;
  }
  int32_t half[2] = {0, 0};
  for (int i = 0; i < 32; ++i) half[i / 16] += v[i] * xq.qs[i];
  I = s[0] * half[0] + s[1] * half[1];
  dw = d * 0.125f;
  return true;
}

}  // namespace mixtral::ref
