// Internal to src/kernels: what the int8-activation paths of matmul_q8.cpp (packed) and
// matmul_q8_decode.cpp (decode, weights read in place) share: the 16-row groups, the loaders that
// build a block's transposed quants in registers, the dtype policies and the per-block steps
// (vnni_block / avx2_block). The plan and the contract are in matmul_q8.cpp / matmul_q8.h.
// Includers turn floating-point contraction off before including this (the contract rounds
// dw * dx before its FMA).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/tensor.h"
#include "kernels/kernel_util.h"
#include "kernels/matmul_q8.h"
#include "kernels/weight_tiles.h"
#include "quant/blocks.h"

// The int8 files' AVX-512 regions: everything between MIXTRAL_Q8_BEGIN_AVX512 (or _VNNI) and
// MIXTRAL_Q8_END is compiled for that ISA, with GCC 12.2's false "maybe uninitialized"
// warnings on register arrays off (PR 105593).
#define MIXTRAL_Q8_BEGIN_(isa)                                                          \
  _Pragma("GCC push_options") _Pragma(isa) _Pragma("GCC diagnostic push")               \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")                      \
          _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define MIXTRAL_Q8_BEGIN_AVX512 \
  MIXTRAL_Q8_BEGIN_("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,fma\")")
#define MIXTRAL_Q8_BEGIN_AVX512_VNNI \
  MIXTRAL_Q8_BEGIN_("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,f16c,fma\")")
#define MIXTRAL_Q8_END _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")

namespace mixtral::q8 {

constexpr int kRows = 16;                // rows per group (the lanes of one accumulator)

// The kRows rows of the group starting at row g, of which nr exist: the missing ones repeat the
// last (their lanes are computed and never stored).
inline void group_rows(const Matrix& W, int64_t g, int64_t nr, const uint8_t* rows[kRows]) {
  for (int r = 0; r < kRows; ++r) rows[r] = W.row(g + std::min<int64_t>(r, nr - 1));
}

inline int32_t dword_at(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ================================ packed weights ================================================

// 16 rows × one 32-column block, as the micro-kernels read it.
struct Packed {
  uint8_t q[8][kRows][4];  // [k][r]: quants 4k..4k+3 of row r, unsigned (see matmul_q8.cpp's plan)
  float s0[kRows];         // Q4_K: dw = d * sc
  float s1[kRows];         // Q4_K: -(dmin * m)
  int32_t i0[kRows];       // Q6_K: scale of values 0..15
  int32_t i1[kRows];       // Q6_K: scale of values 16..31
  uint16_t d16[kRows];     // Q8_0, Q4_0, Q6_K: dw = d, still fp16 (the kernel widens 16 at once)
  uint16_t pad[kRows];
  int32_t m0[kRows];       // Q2_K: min of values 0..15
  int32_t m1[kRows];       // Q2_K: min of values 16..31
};
static_assert(sizeof(Packed) == 960, "Packed is 960 bytes (15 cache lines)");

inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i load2x128(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(hi), reinterpret_cast<const __m128i*>(lo));
}

// 8 rows of 8 dwords -> v[k] = dword k of the 8 rows. (The transposes are forced inline: called
// out of line, their arrays go through memory, which cost the Q6_K packer ~15 %.)
[[gnu::always_inline]] inline void transpose8x8(__m256i v[8]) {
  __m256i a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    b[4 * i + 0] = _mm256_unpacklo_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 1] = _mm256_unpackhi_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 2] = _mm256_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm256_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x20);
    v[k + 4] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x31);
  }
}

// 4 registers, lane 0 = row g, lane 1 = row 4 + g -> r[k] = dword k of rows 0..7.
[[gnu::always_inline]] inline void transpose4x4_lanes(__m256i z[4]) {
  const __m256i t0 = _mm256_unpacklo_epi32(z[0], z[1]), t1 = _mm256_unpackhi_epi32(z[0], z[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(z[2], z[3]), t3 = _mm256_unpackhi_epi32(z[2], z[3]);
  z[0] = _mm256_unpacklo_epi64(t0, t2);
  z[1] = _mm256_unpackhi_epi64(t0, t2);
  z[2] = _mm256_unpacklo_epi64(t1, t3);
  z[3] = _mm256_unpackhi_epi64(t1, t3);
}

// ---- scales (AVX2 at every level) ----

// The fp16 d at byte offset off of each row.
inline void gather_d16(const uint8_t* const* rows, size_t off, uint16_t* d16) {
  for (int r = 0; r < kRows; ++r) std::memcpy(&d16[r], rows[r] + off, 2);
}

// Q4_K scales and mins of 8 rows (rows 8h .. 8h+8 into out[s].s0 / s1): z[c] lane r = bytes
// 4c..4c+3 of row r's first 16 bytes (d, dmin, scales[12]); q4k_scale_min lane-wise.
inline void q4_K_scales8(const __m256i z[4], __m256 d, __m256 dmin, int h, Packed* out) {
  const __m256i m6 = _mm256_set1_epi32(63), m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3);
  for (int s = 0; s < 8; ++s) {
    __m256i sc, m;
    if (s < 4) {
      sc = _mm256_and_si256(_mm256_srli_epi32(z[1], 8 * s), m6);
      m = _mm256_and_si256(_mm256_srli_epi32(z[2], 8 * s), m6);
    } else {
      const int j = s - 4;
      sc = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(z[3], 8 * j), m4),
                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(z[1], 8 * j + 6), m2), 4));
      m = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(z[3], 8 * j + 4), m4),
                          _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(z[2], 8 * j + 6), m2), 4));
    }
    _mm256_storeu_ps(out[s].s0 + 8 * h, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc)));
    _mm256_storeu_ps(out[s].s1 + 8 * h,
                     _mm256_xor_ps(_mm256_mul_ps(dmin, _mm256_cvtepi32_ps(m)), _mm256_set1_ps(-0.0f)));
  }
}

// Q4_K scales and mins of the 16 rows' super-block at off into out[0..8).
inline void q4_K_scales(const uint8_t* const* rows, size_t off, Packed* out) {
  alignas(32) uint16_t d16[kRows], dmin16[kRows];
  gather_d16(rows, off, d16);
  gather_d16(rows, off + 2, dmin16);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* const* rr = rows + 8 * h;
    __m256i z[4];
    for (int g = 0; g < 4; ++g) z[g] = load2x128(rr[g] + off, rr[4 + g] + off);
    transpose4x4_lanes(z);
    const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d16 + 8 * h)));
    const __m256 dmin = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dmin16 + 8 * h)));
    q4_K_scales8(z, d, dmin, h, out);
  }
}

// The same from a Q4_K super-block tile (weight_tiles.h: its header is z for each half).
inline void q4_K_tile_scales(const uint8_t* t, Packed* out) {
  // the low (d) and high (dmin) halves of the 8 dwords, in order, in the low 128 bits
  const __m256i lo = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9,
                                      12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i hi = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6, 7, 10, 11,
                                      14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int h = 0; h < 2; ++h) {
    __m256i z[4];
    for (int c = 0; c < 4; ++c) z[c] = load256(t + 64 * c + 32 * h);
    auto halves = [&](__m256i sel) {
      return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_shuffle_epi8(z[0], sel), 0x08)));
    };
    q4_K_scales8(z, halves(lo), halves(hi), h, out);
  }
}

// Q6_K: the 16 int8 scales of each row transposed as for Q4_K, sign-extended lane-wise; d fp16.
inline void q6_K_scales(const uint8_t* const* rows, size_t off, Packed* out) {
  alignas(32) uint16_t d16[kRows];
  gather_d16(rows, off + offsetof(BlockQ6_K, d), d16);
  const __m256i dv = _mm256_load_si256(reinterpret_cast<const __m256i*>(d16));
  for (int s = 0; s < 8; ++s) _mm256_store_si256(reinterpret_cast<__m256i*>(out[s].d16), dv);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* const* rr = rows + 8 * h;
    __m256i z[4];
    const size_t so = off + offsetof(BlockQ6_K, scales);
    for (int g = 0; g < 4; ++g) z[g] = load2x128(rr[g] + so, rr[4 + g] + so);
    transpose4x4_lanes(z);
    auto byte = [&](int i) {  // scales[i] of the 8 rows, as int32
      return _mm256_srai_epi32(_mm256_slli_epi32(z[i / 4], 24 - 8 * (i % 4)), 24);
    };
    for (int s = 0; s < 8; ++s) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(out[s].i0 + 8 * h), byte(2 * s));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out[s].i1 + 8 * h), byte(2 * s + 1));
    }
  }
}

// ---- loaders, AVX2: 8 rows at a time ----

struct Avx2Loaders {
  // The loaders: w[k] = dword k of rows 8h .. 8h+8's block at byte offset off, as Packed::q
  // holds it (the packers store them; the decode kernels use them in place).
  static void w_q8_0(const uint8_t* const* rows, size_t off, int h, __m256i w[8]) {
    for (int i = 0; i < 8; ++i) w[i] = load256(rows[8 * h + i] + off + 2);
    transpose8x8(w);
    for (int k = 0; k < 8; ++k) w[k] = _mm256_xor_si256(w[k], _mm256_set1_epi8(char(0x80)));  // w + 128
  }
  static void w_q4_0(const uint8_t* const* rows, size_t off, int h, __m256i w[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const uint8_t* const* rr = rows + 8 * h;
    __m256i z[4];
    for (int g = 0; g < 4; ++g) z[g] = load2x128(rr[g] + off + 2, rr[4 + g] + off + 2);
    transpose4x4_lanes(z);
    for (int k = 0; k < 4; ++k) {
      w[k] = _mm256_and_si256(z[k], m4);                              // 4k..
      w[k + 4] = _mm256_and_si256(_mm256_srli_epi16(z[k], 4), m4);  // 16+4k..
    }
  }
  // Q4_K super-block at off, group g: v[k] = dword k of qs[32g .. 32g+32) of rows 8h .. 8h+8.
  static void v_q4_K(const uint8_t* const* rows, size_t off, int g, int h, __m256i v[8]) {
    for (int i = 0; i < 8; ++i) v[i] = load256(rows[8 * h + i] + off + offsetof(BlockQ4_K, qs) + 32 * g);
    transpose8x8(v);
  }
};

// ---- loaders from tiles (kernels/weight_tiles.h), AVX2: half h = rows 8h .. 8h+8 ----
// The tiles hold the loaders' registers as they are: plain loads (Q4_0 / Q4_K: the nibbles
// split; Q6_K: the low 4 and high 2 bits joined). t: the block's body; d: its 32 bytes of d's.

using namespace tiles;  // the format's sizes and offsets (kQ8_0, q4_K_qs, ...) and place()

// A thread reads its rows' tiles as one run, in order, and prefetches each block kTilePrefetch
// bytes ahead into L1 as it reads it: the hardware prefetchers alone fell well short of the
// memory's speed (an uncommitted variant; 4 and 8 KB ahead, into L1 or L2, measured alike). At
// commit 3cbe27b the packed path prefetched tiles a chunk at a time, as it does rows, and trailed
// rows by ~15 % at 16 tokens (bench_matmul --types q8_0 --tokens 16 --layouts rows,tiles).
// t: the block's body; bytes: its body and d's (a pair's prefetches then cover the pair).
constexpr size_t kTilePrefetch = 4096;
inline void prefetch_tiles_ahead(const uint8_t* t, size_t bytes) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(uintptr_t(t + kTilePrefetch) & ~uintptr_t(63));
  for (size_t o = 0; o < bytes; o += 64) kernel_util::prefetch_l1(p + o);
}

struct Avx2TileLoaders {
  static __m256i ld(const uint8_t* p) { return load256(p); }
  static __m256 d16(const uint8_t* d, int h) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + 16 * h)));
  }
  static void w_q8_0(const uint8_t* t, int h, __m256i w[8]) {
    for (int k = 0; k < 8; ++k) w[k] = ld(t + 64 * k + 32 * h);
  }
  static void w_q4_0(const uint8_t* t, int h, __m256i w[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int k = 0; k < 4; ++k) {
      const __m256i n = ld(t + 64 * k + 32 * h);
      w[k] = _mm256_and_si256(n, m4);
      w[k + 4] = _mm256_and_si256(_mm256_srli_epi16(n, 4), m4);
    }
  }
  // Q4_K group g of the super-block tile t: v[k] as Avx2Loaders::v_q4_K.
  static void v_q4_K(const uint8_t* t, int g, int h, __m256i v[8]) {
    for (int k = 0; k < 8; ++k) v[k] = ld(t + q4_K_qs(g) + 64 * k + 32 * h);
  }
  // Q6_K 32-column block b of the super-block tile t: w[k] as Packed::q holds it.
  static void w_q6_K(const uint8_t* t, int b, int h, __m256i w[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
    const uint8_t* p = t + q6_K_block(b) + 32 * h;
    for (int k = 0; k < 4; ++k) {
      const __m256i lo = ld(p + 64 * k);
      w[k] = _mm256_and_si256(lo, m4);
      w[k + 4] = _mm256_and_si256(_mm256_srli_epi16(lo, 4), m4);
    }
    for (int q = 0; q < 2; ++q) {
      const __m256i hb = ld(p + 256 + 64 * q);
      const __m256i hi[4] = {_mm256_slli_epi16(hb, 4), _mm256_slli_epi16(hb, 2), hb, _mm256_srli_epi16(hb, 2)};
      for (int m = 0; m < 4; ++m) w[4 * q + m] = _mm256_or_si256(w[4 * q + m], _mm256_and_si256(hi[m], m2));
    }
  }
  // Q6_K: the int8 scales of 32-column block b's two halves, sign-extended, for rows 8h .. 8h+8.
  static void q6_K_scales(const uint8_t* t, int b, int h, __m256i& i0, __m256i& i1) {
    const __m256i s = ld(t + 64 * (b / 2) + 32 * h);
    const int c = 2 * (b % 2);  // byte c and c + 1 of each lane
    i0 = _mm256_srai_epi32(_mm256_slli_epi32(s, 24 - 8 * c), 24);
    i1 = _mm256_srai_epi32(_mm256_slli_epi32(s, 16 - 8 * c), 24);
  }
};

// ---- loaders, AVX-512: 16 rows at a time, the same bytes ----

MIXTRAL_Q8_BEGIN_AVX512

inline __m512i load_2x256(const uint8_t* lo, const uint8_t* hi) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(load256(lo)), load256(hi), 1);
}
inline __m128i load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// v[i] = [row i | row i + 8], 8 dwords each -> v[k] = dword k of rows 0..15 (transpose8x8 in
// each 256-bit half, then the halves' 128-bit lanes put in row order).
[[gnu::always_inline]] inline void transpose16x8(__m512i v[8]) {
  __m512i a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm512_permutex2var_epi64(b[k], lo, b[4 + k]);
    v[k + 4] = _mm512_permutex2var_epi64(b[k], hi, b[4 + k]);
  }
}

struct Avx512Loaders {
  // The loaders: w[k] = dword k of the 16 rows' block at byte offset off, as Packed::q holds it
  // (the packers store them; the decode kernels use them in place).
  static void w_q8_0(const uint8_t* const* rows, size_t off, __m512i w[8]) {
    for (int i = 0; i < 8; ++i) w[i] = load_2x256(rows[i] + off + 2, rows[i + 8] + off + 2);
    transpose16x8(w);
    for (int k = 0; k < 8; ++k) w[k] = _mm512_xor_si512(w[k], _mm512_set1_epi8(char(0x80)));
  }
  // r[k] = dword k of the 16 bytes at off of each of the 16 rows.
  static void rows16x16(const uint8_t* const* rows, size_t off, __m512i r[4]) {
    __m512i z[4];  // 128-bit lane i of z[g] = row 4i + g
    for (int g = 0; g < 4; ++g) {
      z[g] = _mm512_zextsi128_si512(load128(rows[g] + off));
      z[g] = _mm512_inserti32x4(z[g], load128(rows[4 + g] + off), 1);
      z[g] = _mm512_inserti32x4(z[g], load128(rows[8 + g] + off), 2);
      z[g] = _mm512_inserti32x4(z[g], load128(rows[12 + g] + off), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    r[0] = _mm512_unpacklo_epi64(t0, t2);
    r[1] = _mm512_unpackhi_epi64(t0, t2);
    r[2] = _mm512_unpacklo_epi64(t1, t3);
    r[3] = _mm512_unpackhi_epi64(t1, t3);
  }
  static void w_q4_0(const uint8_t* const* rows, size_t off, __m512i w[8]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i r[4];
    rows16x16(rows, off + 2, r);
    for (int k = 0; k < 4; ++k) {
      w[k] = _mm512_and_si512(r[k], m4);
      w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(r[k], 4), m4);
    }
  }
  // Q4_K super-block at off, group g: v[k] = dword k of qs[32g .. 32g+32) of the 16 rows (low
  // nibbles: sub-block 2g, high: 2g+1).
  static void v_q4_K(const uint8_t* const* rows, size_t off, int g, __m512i v[8]) {
    rows16x32(rows, off + offsetof(BlockQ4_K, qs) + 32 * g, v);
  }
  // v[k] = dword k of the 32 bytes at o of each of the 16 rows.
  static void rows16x32(const uint8_t* const* rows, size_t o, __m512i v[8]) {
    for (int i = 0; i < 8; ++i) v[i] = load_2x256(rows[i] + o, rows[i + 8] + o);
    transpose16x8(v);
  }
  // Q4_K: r = rows16x16 of the super-block's first 16 bytes (r[0] = d | dmin << 16, r[1..3] =
  // scales[0..12)); d, ndmin = the rows' d and -dmin as floats (q4_K_d). Sub-block s's
  // s0 = d * sc[s] and s1 = -(dmin * m[s]) = (-dmin) * m[s], q4k_scale_min lane-wise.
  static void q4_K_d(const __m512i r[4], __m512& d, __m512& ndmin) {
    d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(r[0]));
    ndmin = _mm512_xor_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(r[0], 16))),
                          _mm512_set1_ps(-0.0f));  // exact negation
  }
  [[gnu::always_inline]] static void q4_K_scale(const __m512i r[4], __m512 d, __m512 ndmin, int s, __m512& s0,
                                                __m512& s1) {
    const __m512i m6 = _mm512_set1_epi32(63), m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(0x30);
    __m512i sc, m;
    if (s < 4) {
      sc = _mm512_and_si512(_mm512_srli_epi32(r[1], 8 * s), m6);
      m = _mm512_and_si512(_mm512_srli_epi32(r[2], 8 * s), m6);
    } else {
      const int j = s - 4;
      sc = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(r[3], 8 * j), m4),
                           _mm512_and_si512(_mm512_srli_epi32(r[1], 8 * j + 2), m2));
      m = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(r[3], 8 * j + 4), m4),
                          _mm512_and_si512(_mm512_srli_epi32(r[2], 8 * j + 2), m2));
    }
    s0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
    s1 = _mm512_mul_ps(ndmin, _mm512_cvtepi32_ps(m));
  }
};

// ---- loaders from tiles, AVX-512: the same registers, 16 rows at once ----

struct Avx512TileLoaders {
  static __m512i ld(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static __m512 d16(const uint8_t* d) { return _mm512_cvtph_ps(load256(d)); }
  static void w_q8_0(const uint8_t* t, __m512i w[8]) {
    for (int k = 0; k < 8; ++k) w[k] = ld(t + 64 * k);
  }
  static void w_q4_0(const uint8_t* t, __m512i w[8]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int k = 0; k < 4; ++k) {
      const __m512i n = ld(t + 64 * k);
      w[k] = _mm512_and_si512(n, m4);
      w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(n, 4), m4);
    }
  }
  // Q4_K super-block tile t: r = Avx512Loaders::rows16x16 of the 16 header bytes; v as v_q4_K.
  static void q4_K_header(const uint8_t* t, __m512i r[4]) {
    for (int k = 0; k < 4; ++k) r[k] = ld(t + 64 * k);
  }
  static void v_q4_K(const uint8_t* t, int g, __m512i v[8]) {
    for (int k = 0; k < 8; ++k) v[k] = ld(t + q4_K_qs(g) + 64 * k);
  }
  static void w_q6_K(const uint8_t* t, int b, __m512i w[8]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    const uint8_t* p = t + q6_K_block(b);
    for (int k = 0; k < 4; ++k) {
      const __m512i lo = ld(p + 64 * k);
      w[k] = _mm512_and_si512(lo, m4);
      w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(lo, 4), m4);
    }
    for (int q = 0; q < 2; ++q) {  // (hb >> 2m) & 3, moved to bits 4-5
      const __m512i hb = ld(p + 256 + 64 * q);
      const __m512i hi[4] = {_mm512_slli_epi16(hb, 4), _mm512_slli_epi16(hb, 2), hb, _mm512_srli_epi16(hb, 2)};
      for (int m = 0; m < 4; ++m) w[4 * q + m] = _mm512_or_si512(w[4 * q + m], _mm512_and_si512(hi[m], m2));
    }
  }
  static void q6_K_scales(const uint8_t* t, int b, __m512i& i0, __m512i& i1) {
    const __m512i s = ld(t + 64 * (b / 2));
    const int c = 2 * (b % 2);
    i0 = _mm512_srai_epi32(_mm512_slli_epi32(s, 24 - 8 * c), 24);
    i1 = _mm512_srai_epi32(_mm512_slli_epi32(s, 16 - 8 * c), 24);
  }
};

MIXTRAL_Q8_END

// ================================ the int8 types ================================================

// Every dtype with an int8 path, in the order of the kernel tables (matmul_q8.cpp and
// matmul_q8_decode.cpp): the four with their own packers and in-place kernels, then those fed by
// an unpacker (matmul_q8_unpack.h).
inline constexpr DType kInt8Types[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K,
                                       DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K,
                                       DType::Q3_K, DType::Q5_K, DType::IQ4_NL, DType::IQ4_XS,
                                       DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ1_S, DType::IQ1_M,
                                       DType::IQ3_XXS, DType::IQ3_S};
constexpr int kNumInt8Types = int(sizeof kInt8Types / sizeof kInt8Types[0]);
// Index of t in kInt8Types; -1 when t has no int8 path.
constexpr int int8_type_index(DType t) {
  for (int i = 0; i < kNumInt8Types; ++i)
    if (kInt8Types[i] == t) return i;
  return -1;
}

// ================================ decode: shared =================================================

using DecodeFn = void (*)(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1);
// Up to 8 tokens the in-place kernels beat the packed path (bench_matmul --shapes up, 2 threads,
// Zen 5, GFLOP/s packed -> in place: 5 tokens Q8_0 296-421 -> 442-597, Q4_0 525-536 -> 753,
// Q4_K 571-577 -> 650-676; 8 tokens Q8_0 448-460 -> 621-646, Q4_0 707-716 -> 981-992, Q4_K
// 734-758 -> 832-846; the packed path gives 790-980 at 16 tokens). The server's 16-stream step gives most experts 2-8 tokens. AVX2 keeps 4: its 16
// registers hold no more accumulators.
constexpr int kDecodeMaxTokens = 8;
constexpr int kAvx2DecodeMaxTokens = 4;

// A group reads its 16 rows in short bursts, which the hardware prefetchers do not follow. The
// rows are contiguous, so the next group is one contiguous run of 16 row lengths: each step that
// advances the rows by `step` bytes from `off` prefetches the next 16·step bytes of that run into
// L2 (prefetcht1), so the next group is in L2 when it starts. Measured on Zen 5 (2 threads, decode):
// 67-73 GB/s for Q8_0 / Q4_K; prefetching each row 256-1024 bytes ahead into L1 gave 57-69.
inline void prefetch_next_group(const uint8_t* row0, size_t rb, size_t off, size_t step) {
  const uint8_t* next = row0 + kRows * rb;
  for (size_t o = (kRows * off) & ~size_t(63); o < kRows * (off + step); o += 64)
    kernel_util::prefetch_l2(next + o);
}

// ================================ per-block steps ================================================

// What differs between dtypes: the integer offset folded into I, how the two halves of I
// combine, and the min term.
struct Q8_0Policy {  // AVX-512 path stores w + 128
  static int32_t corr_lo(const XBlock& x) { return -128 * x.sum; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = true, kHalves = false, kMin = false, kHalfScale = true;
};
struct Q4_0Policy {
  static int32_t corr_lo(const XBlock& x) { return -8 * x.sum; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = false, kHalves = false, kMin = false, kHalfScale = true;
};
struct Q4_KPolicy {
  static int32_t corr_lo(const XBlock&) { return 0; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = false, kHalves = false, kMin = true, kHalfScale = false;
};
struct Q6_KPolicy {
  static int32_t corr_lo(const XBlock& x) { return -32 * x.sum_lo; }
  static int32_t corr_hi(const XBlock& x) { return -32 * (x.sum - x.sum_lo); }
  static constexpr bool kSigned = false, kHalves = true, kMin = false, kHalfScale = true;
};
// The other types (their unpackers: matmul_q8_unpack.h). kMinHalves: Q2_K's integer min term
// M = m0·X_lo + m1·X_hi, added as fma(float(M), s1 * dx, acc) with s1 = -dmin.
struct Q4_1Policy {  // Q4_1 / Q5_1: unsigned q, min term fma(m, dx·X)
  static int32_t corr_lo(const XBlock&) { return 0; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = false, kHalves = false, kMin = true, kHalfScale = true;
};
struct Q5_0Policy {
  static int32_t corr_lo(const XBlock& x) { return -16 * x.sum; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = false, kHalves = false, kMin = false, kHalfScale = true;
};
struct Q2_KPolicy {
  static int32_t corr_lo(const XBlock&) { return 0; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = false, kHalves = true, kMin = false, kHalfScale = true, kMinHalves = true;
};
struct Q3_KPolicy {
  static int32_t corr_lo(const XBlock& x) { return -4 * x.sum_lo; }
  static int32_t corr_hi(const XBlock& x) { return -4 * (x.sum - x.sum_lo); }
  static constexpr bool kSigned = false, kHalves = true, kMin = false, kHalfScale = true;
};
struct IQ4_XSPolicy {  // signed values (+128 on AVX-512) with an integer scale per block: the
                       // offset has to come back per half, since each half is scaled
  static int32_t corr_lo(const XBlock& x) { return -128 * x.sum_lo; }
  static int32_t corr_hi(const XBlock& x) { return -128 * (x.sum - x.sum_lo); }
  static constexpr bool kSigned = true, kHalves = true, kMin = false, kHalfScale = true;
};
// IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: as IQ4_XS (signed values, an integer scale per half),
// with the float scale s0 = d / 8: the IQ2 scales are d (2 ls + 1) / 8, the IQ1 values 8 g +- 1
// eighths.
struct IQ2_IQ1Policy {
  static int32_t corr_lo(const XBlock& x) { return -128 * x.sum_lo; }
  static int32_t corr_hi(const XBlock& x) { return -128 * (x.sum - x.sum_lo); }
  static constexpr bool kSigned = true, kHalves = true, kMin = false, kHalfScale = false;
};
struct IQ3Policy {  // IQ3_XXS / IQ3_S: signed grid values (+128 on AVX-512), one float scale per
                    // block in s0 (d times the block's scale: exact in float)
  static int32_t corr_lo(const XBlock& x) { return -128 * x.sum; }
  static int32_t corr_hi(const XBlock&) { return 0; }
  static constexpr bool kSigned = true, kHalves = false, kMin = false, kHalfScale = false;
};
template <class P>
constexpr bool min_halves() {
  if constexpr (requires { P::kMinHalves; }) return P::kMinHalves;
  else return false;
}

// ---- AVX-512 VNNI: one zmm = 16 rows ----

MIXTRAL_Q8_BEGIN_AVX512_VNNI

// One 32-column block of the contract for NT tokens, 16 rows in lanes: w as Packed::q holds it,
// s0 = the rows' dw (dx not yet applied), s1 = Q4_K's -(dmin * m), i0 / i1 = Q6_K's half
// scales; x[t] = token t's XBlock of this block.
template <class P, int NT>
inline void vnni_block(const __m512i w[8], __m512 s0, __m512 s1, __m512i i0, __m512i i1,
                       const XBlock* x, __m512 f[], __m512i m0 = _mm512_setzero_si512(),
                       __m512i m1 = _mm512_setzero_si512()) {
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    const XBlock& xt = x[t];
    __m512i lo = _mm512_set1_epi32(P::corr_lo(xt)), hi = _mm512_set1_epi32(P::corr_hi(xt));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      lo = _mm512_dpbusd_epi32(lo, w[k], _mm512_set1_epi32(dword_at(xt.qs + 4 * k)));
      hi = _mm512_dpbusd_epi32(hi, w[k + 4], _mm512_set1_epi32(dword_at(xt.qs + 16 + 4 * k)));
    }
    __m512i I;
    if constexpr (P::kHalves)
      I = _mm512_add_epi32(_mm512_mullo_epi32(lo, i0), _mm512_mullo_epi32(hi, i1));
    else
      I = _mm512_add_epi32(lo, hi);
    f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(s0, _mm512_set1_ps(xt.d)), f[t]);
    if constexpr (P::kMin) f[t] = _mm512_fmadd_ps(s1, _mm512_set1_ps(xt.dsum), f[t]);
    if constexpr (min_halves<P>()) {
      const __m512i M = _mm512_add_epi32(_mm512_mullo_epi32(m0, _mm512_set1_epi32(xt.sum_lo)),
                                         _mm512_mullo_epi32(m1, _mm512_set1_epi32(xt.sum - xt.sum_lo)));
      f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), _mm512_mul_ps(s1, _mm512_set1_ps(xt.d)), f[t]);
    }
  }
}

// vnni_block on one Packed block (its fields as P reads them).
template <class P, int NT>
[[gnu::always_inline]] inline void vnni_packed(const Packed& p, const XBlock* x, __m512 f[]) {
  __m512i w[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) w[k] = _mm512_load_si512(&p.q[k][0][0]);
  const __m512 s0 = P::kHalfScale ? _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.d16)))
                                  : _mm512_load_ps(p.s0);
  const __m512 s1 = P::kMin || min_halves<P>() ? _mm512_load_ps(p.s1) : _mm512_setzero_ps();
  const __m512i i0 = P::kHalves ? _mm512_load_si512(p.i0) : _mm512_setzero_si512();
  const __m512i i1 = P::kHalves ? _mm512_load_si512(p.i1) : _mm512_setzero_si512();
  const __m512i m0 = min_halves<P>() ? _mm512_load_si512(p.m0) : _mm512_setzero_si512();
  const __m512i m1 = min_halves<P>() ? _mm512_load_si512(p.m1) : _mm512_setzero_si512();
  vnni_block<P, NT>(w, s0, s1, i0, i1, x, f, m0, m1);
}

MIXTRAL_Q8_END

// ---- AVX2: two ymm (rows 0-7, 8-15) ----

// Exact sums of 4 products per int32 lane: vpmaddubsw (u8 × s8 pairs, exact for these ranges)
// then vpmaddwd with ones.
inline __m256i dot4(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// One 32-column block of the contract for NT tokens, rows 8h .. 8h+8 in lanes (f[t][h]); the
// arguments as vnni_block's.
template <class P, int NT>
inline void avx2_block(const __m256i w_in[8], __m256 s0, __m256 s1, __m256i i0, __m256i i1,
                       const XBlock* x, __m256 (*f)[2], int h, __m256i m0 = _mm256_setzero_si256(),
                       __m256i m1 = _mm256_setzero_si256()) {
  __m256i w[8];
  for (int k = 0; k < 8; ++k) {
    w[k] = w_in[k];
    if constexpr (P::kSigned) w[k] = _mm256_xor_si256(w[k], _mm256_set1_epi8(char(0x80)));  // back to signed w
  }
  for (int t = 0; t < NT; ++t) {
    const XBlock& xt = x[t];
    __m256i lo, hi;
    if constexpr (P::kSigned) {  // |w| · (sign(w) x): no offset, so no correction
      lo = hi = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        const __m256i xl = _mm256_set1_epi32(dword_at(xt.qs + 4 * k));
        const __m256i xh = _mm256_set1_epi32(dword_at(xt.qs + 16 + 4 * k));
        lo = _mm256_add_epi32(lo, dot4(_mm256_abs_epi8(w[k]), _mm256_sign_epi8(xl, w[k])));
        hi = _mm256_add_epi32(hi, dot4(_mm256_abs_epi8(w[k + 4]), _mm256_sign_epi8(xh, w[k + 4])));
      }
    } else {
      lo = _mm256_set1_epi32(P::corr_lo(xt));
      hi = _mm256_set1_epi32(P::corr_hi(xt));
      for (int k = 0; k < 4; ++k) {
        lo = _mm256_add_epi32(lo, dot4(w[k], _mm256_set1_epi32(dword_at(xt.qs + 4 * k))));
        hi = _mm256_add_epi32(hi, dot4(w[k + 4], _mm256_set1_epi32(dword_at(xt.qs + 16 + 4 * k))));
      }
    }
    __m256i I;
    if constexpr (P::kHalves)
      I = _mm256_add_epi32(_mm256_mullo_epi32(lo, i0), _mm256_mullo_epi32(hi, i1));
    else
      I = _mm256_add_epi32(lo, hi);
    f[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(s0, _mm256_set1_ps(xt.d)), f[t][h]);
    if constexpr (P::kMin) f[t][h] = _mm256_fmadd_ps(s1, _mm256_set1_ps(xt.dsum), f[t][h]);
    if constexpr (min_halves<P>()) {
      const __m256i M = _mm256_add_epi32(_mm256_mullo_epi32(m0, _mm256_set1_epi32(xt.sum_lo)),
                                         _mm256_mullo_epi32(m1, _mm256_set1_epi32(xt.sum - xt.sum_lo)));
      f[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(M), _mm256_mul_ps(s1, _mm256_set1_ps(xt.d)), f[t][h]);
    }
  }
}

// avx2_block on rows 8h .. 8h+8 of one Packed block.
template <class P, int NT>
[[gnu::always_inline]] inline void avx2_packed(const Packed& p, const XBlock* x, __m256 (*f)[2], int h) {
  auto ldi = [](const void* a) { return _mm256_load_si256(static_cast<const __m256i*>(a)); };
  __m256i w[8];
  for (int k = 0; k < 8; ++k) w[k] = ldi(&p.q[k][8 * h][0]);
  const __m256 s0 = P::kHalfScale ? _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p.d16 + 8 * h)))
                                  : _mm256_load_ps(p.s0 + 8 * h);
  const __m256 s1 = P::kMin || min_halves<P>() ? _mm256_load_ps(p.s1 + 8 * h) : _mm256_setzero_ps();
  const __m256i z = _mm256_setzero_si256();
  const __m256i i0 = P::kHalves ? ldi(p.i0 + 8 * h) : z, i1 = P::kHalves ? ldi(p.i1 + 8 * h) : z;
  const __m256i m0 = min_halves<P>() ? ldi(p.m0 + 8 * h) : z, m1 = min_halves<P>() ? ldi(p.m1 + 8 * h) : z;
  avx2_block<P, NT>(w, s0, s1, i0, i1, x, f, h, m0, m1);
}

// The decode kernel for n_tokens (1..kDecodeMaxTokens) tokens of dtype t (an
// int8_activation_dtype) on AVX-512 VNNI (vnni) or AVX2; null where t has none (the packed path
// serves it).
DecodeFn decode_kernel(DType t, int n_tokens, bool vnni);
// The same for the whole groups of a Tiles16 W (weight_tiles.h); every dtype has one.
DecodeFn decode_tiles_kernel(DType t, int n_tokens, bool vnni);

}  // namespace mixtral::q8
