// Internal to src/kernels: the one piece a weight type adds to the int8-activation path, its
// unpacker. An unpacker U turns the 16 rows' dtype block at byte offset `off` into U::kBlocks
// Packed blocks (matmul_q8_blocks.h): the quants in Packed::q as the unsigned operand of the
// byte products (0..2^bits-1, or signed values + 128 for a kSigned policy), and the per-row
// scale fields that U::Policy tells the per-block steps to read (d16 / s0, s1, i0 / i1, m0 / m1).
// The packed prefill path calls U::unpack for each chunk (pack_blocks); the decode kernels for
// these types (matmul_q8_decode.cpp, UnpackDecode) call it per dtype block into a Packed buffer
// in L1 and feed the same per-block steps (vnni_packed / avx2_packed), so decode and prefill
// are the same chain of blocks, whatever the ISA.
//
// The unpackers are AVX2 (the baseline), used at every level: the Packed bytes are the same
// however they are computed. They work 8 rows at a time on the rows' bytes transposed by dwords
// (rows8x32 / rows8x16): every operation after the transpose is byte-local (shift then mask),
// so dword k of row r holds that row's values 4k .. 4k+3 in order, as Packed::q wants them.
//
// IQ4_NL / IQ4_XS map their nibbles through kIQ4NLValues (defined here; the IQ types' own
// table file lives with their dequantizers).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/fp16.h"
#include "kernels/matmul_q8_blocks.h"
#include "quant/blocks.h"

namespace mixtral::q8 {

// ggml's kvalues_iq4nl (ggml-quants.c at c392e509), transcribed by script; the test checks its
// sum (-94) and order.
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// ---- scalar pieces shared with ref::matmul_q8 ----

// Q3_K's 6-bit scale j (0..15), without its -32: low 4 bits in scales[j % 8] (nibble j / 8),
// high 2 bits in scales[8 + j % 4] (bits 2(j / 4) ..).
inline int q3_K_scale(int j, const uint8_t* scales) {
  const int lo = (scales[j % 8] >> (4 * (j / 8))) & 0xF;
  const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
  return lo | (hi << 4);
}
// IQ4_XS's 6-bit scale of sub-block ib (0..7), without its -32.
inline int iq4_xs_scale(int ib, const BlockIQ4_XS& b) {
  return ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((b.scales_h >> (2 * ib)) & 3) << 4);
}
inline float fp16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return f16_to_f32(v);
}

// ---- register helpers (AVX2, 8 rows: rows 8h .. 8h+8) ----

// v[k] = dword k of the 32 bytes at o of each row.
inline void rows8x32(const uint8_t* const* rows, size_t o, int h, __m256i v[8]) {
  for (int i = 0; i < 8; ++i) v[i] = load256(rows[8 * h + i] + o);
  transpose8x8(v);
}
// z[k] = dword k of the 16 bytes at o of each row.
inline void rows8x16(const uint8_t* const* rows, size_t o, int h, __m256i z[4]) {
  const uint8_t* const* rr = rows + 8 * h;
  for (int g = 0; g < 4; ++g) z[g] = load2x128(rr[g] + o, rr[4 + g] + o);
  transpose4x4_lanes(z);
}
// The dword at o of each row.
inline __m256i dwords8(const uint8_t* const* rows, size_t o, int h) {
  alignas(32) int32_t v[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&v[i], rows[8 * h + i] + o, 4);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
}
// Byte j of each dword = `val` where bit 4k + j of that dword of qh is set, else 0 (the fifth
// bit of values 4k .. 4k+3 of Q5_0 / Q5_1).
inline __m256i qh_bits(__m256i qh, int k, uint8_t val) {
  const char b = char(k / 2);  // the byte holding bits 4k .. 4k+3, repeated 4 times per dword
  const __m256i idx = _mm256_setr_epi8(b, b, b, b, char(4 + b), char(4 + b), char(4 + b), char(4 + b), char(8 + b),
                                       char(8 + b), char(8 + b), char(8 + b), char(12 + b), char(12 + b), char(12 + b),
                                       char(12 + b), b, b, b, b, char(4 + b), char(4 + b), char(4 + b), char(4 + b),
                                       char(8 + b), char(8 + b), char(8 + b), char(8 + b), char(12 + b), char(12 + b),
                                       char(12 + b), char(12 + b));
  const int s = 4 * (k % 2);
  const __m256i bit = _mm256_set1_epi32(int32_t(uint32_t(1u << s) | (2u << s) << 8 | (4u << s) << 16 | (8u << s) << 24));
  const __m256i spread = _mm256_and_si256(_mm256_shuffle_epi8(qh, idx), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(spread, bit), _mm256_set1_epi8(char(val)));
}
inline void store8(Packed* out, int k, int h, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out->q[k][8 * h][0]), v);
}
inline void store8i(int32_t* p, int h, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8 * h), v); }
inline __m256i nib_lo(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
inline __m256i nib_hi(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }
// 16 nibble bytes (values 0..15 low, 16..31 high) -> Packed::q of one block, rows 8h .. 8h+8,
// each value through map (identity or a table).
template <class Map>
inline void nibbles(const uint8_t* const* rows, size_t o, int h, Packed* out, Map&& map) {
  __m256i z[4];
  rows8x16(rows, o, h, z);
  for (int k = 0; k < 4; ++k) {
    store8(out, k, h, map(k, nib_lo(z[k])));
    store8(out, k + 4, h, map(k + 4, nib_hi(z[k])));
  }
}
// The fp16 at o of each of the 16 rows as floats, negated when neg.
inline void floats16(const uint8_t* const* rows, size_t o, bool neg, float* out) {
  alignas(32) uint16_t h16[kRows];
  gather_d16(rows, o, h16);
  for (int h = 0; h < 2; ++h) {
    __m256 v = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h16 + 8 * h)));
    if (neg) v = _mm256_xor_ps(v, _mm256_set1_ps(-0.0f));
    _mm256_storeu_ps(out + 8 * h, v);
  }
}

// ================================ the unpackers ================================================

// Q4_1 / Q5_1: x = d * q + m (q 4 / 5 bits): q unsigned; d16 = d, s1 = m.
template <bool kFive>
struct UnpackQx_1 {
  using Policy = Q4_1Policy;
  using Block = std::conditional_t<kFive, BlockQ5_1, BlockQ4_1>;
  static constexpr int kBlocks = 1;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int h = 0; h < 2; ++h) {
      if constexpr (kFive) {
        const __m256i qh = dwords8(rows, off + offsetof(BlockQ5_1, qh), h);
        nibbles(rows, off + offsetof(BlockQ5_1, qs), h, out,
                [&](int k, __m256i v) { return _mm256_or_si256(v, qh_bits(qh, k, 0x10)); });
      } else {
        nibbles(rows, off + offsetof(BlockQ4_1, qs), h, out, [](int, __m256i v) { return v; });
      }
    }
    gather_d16(rows, off, out->d16);
    floats16(rows, off + 2, false, out->s1);
  }
};
using UnpackQ4_1 = UnpackQx_1<false>;
using UnpackQ5_1 = UnpackQx_1<true>;

// Q5_0: x = d * (q - 16): q unsigned (the 16 comes back through X).
struct UnpackQ5_0 {
  using Policy = Q5_0Policy;
  using Block = BlockQ5_0;
  static constexpr int kBlocks = 1;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = dwords8(rows, off + offsetof(BlockQ5_0, qh), h);
      nibbles(rows, off + offsetof(BlockQ5_0, qs), h, out,
              [&](int k, __m256i v) { return _mm256_or_si256(v, qh_bits(qh, k, 0x10)); });
    }
    gather_d16(rows, off, out->d16);
  }
};

// IQ4_NL: x = d * kIQ4NLValues[nibble]: the signed value + 128 (kSigned), d16 = d.
inline __m256i iq4nl_lookup(__m256i nib) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
  const __m256i tu = _mm256_xor_si256(_mm256_broadcastsi128_si256(t), _mm256_set1_epi8(char(0x80)));
  return _mm256_shuffle_epi8(tu, nib);
}
struct UnpackIQ4_NL {
  using Policy = Q8_0Policy;
  using Block = BlockIQ4_NL;
  static constexpr int kBlocks = 1;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int h = 0; h < 2; ++h)
      nibbles(rows, off + offsetof(BlockIQ4_NL, qs), h, out, [](int, __m256i v) { return iq4nl_lookup(v); });
    gather_d16(rows, off, out->d16);
  }
};

// IQ4_XS: sub-block ib (32 values): x = d * (ls - 32) * kIQ4NLValues[nibble]; i0 = i1 = ls - 32.
struct UnpackIQ4_XS {
  using Policy = IQ4_XSPolicy;
  using Block = BlockIQ4_XS;
  static constexpr int kBlocks = 8;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int ib = 0; ib < 8; ++ib) {
      for (int h = 0; h < 2; ++h)
        nibbles(rows, off + offsetof(BlockIQ4_XS, qs) + 16 * ib, h, out + ib,
                [](int, __m256i v) { return iq4nl_lookup(v); });
    }
    alignas(32) uint16_t d16[kRows];
    gather_d16(rows, off, d16);
    for (int r = 0; r < kRows; ++r) {
      const auto& b = *reinterpret_cast<const BlockIQ4_XS*>(rows[r] + off);
      for (int ib = 0; ib < 8; ++ib) out[ib].i0[r] = out[ib].i1[r] = iq4_xs_scale(ib, b) - 32;
    }
    for (int ib = 0; ib < 8; ++ib) std::memcpy(out[ib].d16, d16, sizeof d16);
  }
};

// Q2_K: 32-column block b = 4j + l: q = (qs[32j + i] >> 2l) & 3; its halves' scales
// scales[2b], scales[2b + 1] (low nibble: the scale, i0 / i1; high: the min, m0 / m1);
// d16 = d, s1 = -dmin.
struct UnpackQ2_K {
  using Policy = Q2_KPolicy;
  using Block = BlockQ2_K;
  static constexpr int kBlocks = 8;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    const __m256i m2 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi32(0xF);
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 2; ++j) {
        __m256i v[8];
        rows8x32(rows, off + offsetof(BlockQ2_K, qs) + 32 * j, h, v);
        for (int l = 0; l < 4; ++l)
          for (int k = 0; k < 8; ++k) store8(out + 4 * j + l, k, h, _mm256_and_si256(_mm256_srli_epi16(v[k], 2 * l), m2));
      }
      __m256i z[4];  // z[c] = scales dword c: the bytes of blocks 2c, 2c + 1
      rows8x16(rows, off + offsetof(BlockQ2_K, scales), h, z);
      for (int b = 0; b < 8; ++b) {
        const int s = 16 * (b % 2);
        const __m256i v = z[b / 2];
        store8i(out[b].i0, h, _mm256_and_si256(_mm256_srli_epi32(v, s), m4));
        store8i(out[b].m0, h, _mm256_and_si256(_mm256_srli_epi32(v, s + 4), m4));
        store8i(out[b].i1, h, _mm256_and_si256(_mm256_srli_epi32(v, s + 8), m4));
        store8i(out[b].m1, h, _mm256_and_si256(_mm256_srli_epi32(v, s + 12), m4));
      }
    }
    alignas(32) uint16_t d16[kRows];
    alignas(32) float nd[kRows];
    gather_d16(rows, off + offsetof(BlockQ2_K, d), d16);
    floats16(rows, off + offsetof(BlockQ2_K, dmin), true, nd);
    for (int b = 0; b < 8; ++b) {
      std::memcpy(out[b].d16, d16, sizeof d16);
      std::memcpy(out[b].s1, nd, sizeof nd);
    }
  }
};

// Q3_K: 32-column block b = 4j + l: u = ((qs[32j + i] >> 2l) & 3) | ((hmask[i] >> b) & 1) << 2,
// x = d * (sc - 32) * (u - 4) (the 4 comes back through X per half); i0 / i1 = sc - 32 of
// its halves (scales 2b, 2b + 1), d16 = d.
struct UnpackQ3_K {
  using Policy = Q3_KPolicy;
  using Block = BlockQ3_K;
  static constexpr int kBlocks = 8;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    const __m256i m2 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    for (int h = 0; h < 2; ++h) {
      __m256i hm[8];
      rows8x32(rows, off + offsetof(BlockQ3_K, hmask), h, hm);
      for (int j = 0; j < 2; ++j) {
        __m256i v[8];
        rows8x32(rows, off + offsetof(BlockQ3_K, qs) + 32 * j, h, v);
        for (int l = 0; l < 4; ++l) {
          const int b = 4 * j + l;
          for (int k = 0; k < 8; ++k) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(v[k], 2 * l), m2);
            const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm[k], b), m1), 2);
            store8(out + b, k, h, _mm256_or_si256(lo, hi));
          }
        }
      }
    }
    alignas(32) uint16_t d16[kRows];
    gather_d16(rows, off + offsetof(BlockQ3_K, d), d16);
    for (int r = 0; r < kRows; ++r) {
      const uint8_t* sc = rows[r] + off + offsetof(BlockQ3_K, scales);
      for (int b = 0; b < 8; ++b) {
        out[b].i0[r] = q3_K_scale(2 * b, sc) - 32;
        out[b].i1[r] = q3_K_scale(2 * b + 1, sc) - 32;
      }
    }
    for (int b = 0; b < 8; ++b) std::memcpy(out[b].d16, d16, sizeof d16);
  }
};

// Q5_K: as Q4_K (Q4_KPolicy, its header's scales and mins: q4_K_scales) with a fifth bit:
// sub-block s = 2g + p: q = ((qs[32g + i] >> 4p) & 15) | ((qh[i] >> s) & 1) << 4.
struct UnpackQ5_K {
  using Policy = Q4_KPolicy;
  using Block = BlockQ5_K;
  static constexpr int kBlocks = 8;
  static void unpack(const uint8_t* const* rows, size_t off, Packed* out) {
    const __m256i m1 = _mm256_set1_epi8(1);
    for (int h = 0; h < 2; ++h) {
      __m256i qh[8];
      rows8x32(rows, off + offsetof(BlockQ5_K, qh), h, qh);
      for (int g = 0; g < 4; ++g) {
        __m256i v[8];
        rows8x32(rows, off + offsetof(BlockQ5_K, qs) + 32 * g, h, v);
        for (int p = 0; p < 2; ++p) {
          const int s = 2 * g + p;
          for (int k = 0; k < 8; ++k) {
            const __m256i lo = p ? nib_hi(v[k]) : nib_lo(v[k]);
            const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[k], s), m1), 4);
            store8(out + s, k, h, _mm256_or_si256(lo, hi));
          }
        }
      }
    }
    q4_K_scales(rows, off, out);  // d, dmin, scales[12] as Q4_K's first 16 bytes
  }
};

}  // namespace mixtral::q8
