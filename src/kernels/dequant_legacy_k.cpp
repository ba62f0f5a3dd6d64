// Scalar reference dequantizers of Q4_1, Q5_0, Q5_1 (blocks of 32) and Q2_K, Q3_K, Q5_K
// (super-blocks of 256). Each value is computed with the float operations of ggml's
// dequantize_row_* in the same order, so the results equal ggml's bit for bit; no contraction into
// fused multiply-add (ggml's reference code is built without it).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstring>

#include "core/fp16.h"
#include "kernels/dequant_family.h"
#include "quant/blocks.h"

namespace mixtral::ref {
namespace {


// The fifth bits of a Q5_0 / Q5_1 block: bit j is value j's (j < 32).
inline uint32_t high_bits(const uint8_t qh[4]) {
  uint32_t v;
  std::memcpy(&v, qh, 4);
  return v;
}

// ---- blocks of 32: byte j holds value j (low nibble) and value j + 16 (high nibble) -------------

void q4_1(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_1*>(src);
  for (int64_t i = 0; i < n / 32; ++i, dst += 32) {
    const float d = half_at(b[i].d), m = half_at(b[i].m);
    for (int j = 0; j < 16; ++j) {
      dst[j] = float(b[i].qs[j] & 0xF) * d + m;
      dst[j + 16] = float(b[i].qs[j] >> 4) * d + m;
    }
  }
}

void q5_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ5_0*>(src);
  for (int64_t i = 0; i < n / 32; ++i, dst += 32) {
    const float d = half_at(b[i].d);
    const uint32_t qh = high_bits(b[i].qh);
    for (int j = 0; j < 16; ++j) {
      const int q0 = int((b[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
      const int q1 = int((b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
      dst[j] = float(q0) * d;
      dst[j + 16] = float(q1) * d;
    }
  }
}

void q5_1(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ5_1*>(src);
  for (int64_t i = 0; i < n / 32; ++i, dst += 32) {
    const float d = half_at(b[i].d), m = half_at(b[i].m);
    const uint32_t qh = high_bits(b[i].qh);
    for (int j = 0; j < 16; ++j) {
      const int q0 = int((b[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4));
      const int q1 = int((b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
      dst[j] = float(q0) * d + m;
      dst[j + 16] = float(q1) * d + m;
    }
  }
}

// ---- super-blocks of 256 ------------------------------------------------------------------------

// Q2_K: the 256 values form 2 halves of 128 using qs[32h .. 32h+31]; in a half, value 32s + l
// (s < 4, l < 32) is bits 2s..2s+1 of qs[32h + l], in sub-block 8h + 2s + l / 16 whose scale byte
// holds the 4-bit scale (low) and 4-bit min (high).
void q2_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ2_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d), dmin = half_at(b[i].dmin);
    const uint8_t* q = b[i].qs;
    const uint8_t* sc = b[i].scales;
    for (int h = 0; h < 2; ++h, q += 32) {
      for (int s = 0; s < 4; ++s) {
        for (int half16 = 0; half16 < 2; ++half16) {
          const uint8_t scale = *sc++;
          const float dl = d * float(scale & 0xF), ml = dmin * float(scale >> 4);
          for (int l = 0; l < 16; ++l)
            *dst++ = dl * float((q[16 * half16 + l] >> (2 * s)) & 3) - ml;
        }
      }
    }
  }
}

// Q3_K's 16 sub-block scales, 6 bits each, as unsigned 0..63 (the value uses scale - 32): the low
// 4 bits of scale j are byte j % 8's low (j < 8) or high (j >= 8) nibble, the top 2 bits are bits
// 2 (j / 4) .. +1 of byte 8 + j % 4.
inline int q3k_scale(const uint8_t* s, int j) {
  const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
  const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return lo | (hi << 4);
}

// Q3_K: low 2 bits as Q2_K's; the third bit of value 32s + l of half h is bit 4h + s of hmask[l]
// (clear means subtract 4).
void q3_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ3_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    const uint8_t* q = b[i].qs;
    const uint8_t* hm = b[i].hmask;
    int is = 0;
    for (int h = 0; h < 2; ++h, q += 32) {
      for (int s = 0; s < 4; ++s) {
        const uint8_t bit = uint8_t(1u << (4 * h + s));
        for (int half16 = 0; half16 < 2; ++half16) {
          const float dl = d * float(q3k_scale(b[i].scales, is++) - 32);
          for (int l = 16 * half16; l < 16 * half16 + 16; ++l) {
            const int v = int((q[l] >> (2 * s)) & 3) - ((hm[l] & bit) ? 0 : 4);
            *dst++ = dl * float(v);
          }
        }
      }
    }
  }
}

// Q5_K: as Q4_K (quant/blocks.h) with the fifth bit of value 64g + l (low nibbles) in bit 2g of
// qh[l], of value 64g + 32 + l (high nibbles) in bit 2g + 1.
void q5_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ5_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d), dmin = half_at(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    const uint8_t* qh = b[i].qh;
    for (int g = 0; g < 4; ++g, ql += 32) {
      uint8_t sc, m;
      q4k_scale_min(2 * g, b[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      q4k_scale_min(2 * g + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      const uint8_t u1 = uint8_t(1u << (2 * g)), u2 = uint8_t(2u << (2 * g));
      for (int l = 0; l < 32; ++l) *dst++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}

}  // namespace

DequantizeFn dequant_legacy_k(DType t) {
  switch (t) {
    case DType::Q4_1: return q4_1;
    case DType::Q5_0: return q5_0;
    case DType::Q5_1: return q5_1;
    case DType::Q2_K: return q2_K;
    case DType::Q3_K: return q3_K;
    case DType::Q5_K: return q5_K;
    default: return nullptr;
  }
}

}  // namespace mixtral::ref
