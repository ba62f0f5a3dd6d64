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
// Each unpacker is written once (matmul_q8_unpack.inc) over a vector type V and compiled per ISA:
// q8::avx2 (Avx2Vec: 8 rows per pass, two passes) and q8::avx512 (Avx512Vec: the 16 rows in one
// pass); the Packed bytes are the same either way. They work on the rows' bytes transposed by
// dwords (V::rows32 / rows16): every operation after the transpose is byte-local (shift then
// mask), so dword k of row r holds that row's values 4k .. 4k+3 in order, as Packed::q wants.
//
// IQ4_NL / IQ4_XS map their nibbles through kvalues_iq4nl (quant/iq_grids_iq4_iq3.h); IQ3_XXS /
// IQ3_S gather their 4-byte grid points (V::gather32) and negate bytes by their sign bits.
#pragma once
#include <immintrin.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/dtype.h"
#include "core/fp16.h"
#include "kernels/matmul_q8_blocks.h"
#include "quant/blocks.h"
#include "quant/iq_grids_iq2_iq1.h"
#include "quant/iq_grids_iq4_iq3.h"

namespace mixtral::q8 {

using ::mixtral::kvalues_iq4nl;

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
// IQ1_M's super-block scale d: the fp16 whose nibble k is the top nibble of u16 scales[k].
inline float iq1_m_d(const uint8_t* scales) {
  uint16_t sc[4];
  std::memcpy(sc, scales, 8);
  return f16_to_f32(uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000)));
}

// ---- ISA-free pieces ----

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

// IQ3_XXS / IQ3_S: out[ib].s0 = d * float(mult[ib][r]) * c for blocks ib < n (d: the rows' fp16
// at off); the same float operations as ref::matmul_q8's dw (exact in float either way).
inline void iq3_scales(const uint8_t* const* rows, size_t off, const int32_t (*mult)[kRows], float c, int n,
                       Packed* out) {
  alignas(32) uint16_t h16[kRows];
  gather_d16(rows, off, h16);
  for (int h = 0; h < 2; ++h) {
    const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h16 + 8 * h)));
    for (int ib = 0; ib < n; ++ib) {
      const __m256 m = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mult[ib] + 8 * h)));
      _mm256_storeu_ps(out[ib].s0 + 8 * h, _mm256_mul_ps(_mm256_mul_ps(d, m), _mm256_set1_ps(c)));
    }
  }
}

// ---- the vector types ----

// AVX2: rows 8h .. 8h+8 per pass.
struct Avx2Vec {
  using R = __m256i;
  static constexpr int kPasses = 2;
  // v[k] = dword k of the 32 bytes at o of each row.
  static void rows32(const uint8_t* const* rows, size_t o, int h, R v[8]) {
    for (int i = 0; i < 8; ++i) v[i] = load256(rows[8 * h + i] + o);
    transpose8x8(v);
  }
  // z[k] = dword k of the 16 bytes at o of each row.
  static void rows16(const uint8_t* const* rows, size_t o, int h, R z[4]) {
    const uint8_t* const* rr = rows + 8 * h;
    for (int g = 0; g < 4; ++g) z[g] = load2x128(rr[g] + o, rr[4 + g] + o);
    transpose4x4_lanes(z);
  }
  // The dword at o of each row.
  static R dwords(const uint8_t* const* rows, size_t o, int h) {
    alignas(32) int32_t v[8];
    for (int i = 0; i < 8; ++i) std::memcpy(&v[i], rows[8 * h + i] + o, 4);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
  }
  static R and_(R a, R b) { return _mm256_and_si256(a, b); }
  static R or_(R a, R b) { return _mm256_or_si256(a, b); }
  static R srli16(R a, int n) { return _mm256_srli_epi16(a, n); }
  static R slli16(R a, int n) { return _mm256_slli_epi16(a, n); }
  static R srli32(R a, int n) { return _mm256_srli_epi32(a, n); }
  static R slli32(R a, int n) { return _mm256_slli_epi32(a, n); }
  static R sub32(R a, R b) { return _mm256_sub_epi32(a, b); }
  static R set8(int8_t c) { return _mm256_set1_epi8(char(c)); }
  static R set32(int32_t c) { return _mm256_set1_epi32(c); }
  static R bcast128(const void* p) { return _mm256_broadcastsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p))); }
  static R shuffle8(R table, R idx) { return _mm256_shuffle_epi8(table, idx); }
  static R xor_(R a, R b) { return _mm256_xor_si256(a, b); }
  // val where the bytes of a and b are equal, else 0.
  static R select_eq(R a, R b, int8_t val) { return _mm256_and_si256(_mm256_cmpeq_epi8(a, b), set8(val)); }
  static R sub8(R a, R b) { return _mm256_sub_epi8(a, b); }
  // table[idx] per dword lane (idx < the table's length).
  static R gather32(const uint32_t* table, R idx) { return _mm256_i32gather_epi32(reinterpret_cast<const int*>(table), idx, 4); }
  static void store(Packed* out, int k, int h, R v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out->q[k][8 * h][0]), v);
  }
  static void storei(int32_t* p, int h, R v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8 * h), v); }
  // For the IQ2 / IQ1 unpackers:
  static R add8(R a, R b) { return _mm256_add_epi8(a, b); }
  static R add32(R a, R b) { return _mm256_add_epi32(a, b); }
  // a negated in the bytes where s has every bit of bits set.
  static R neg_where(R a, R s, R bits) {
    const R m = _mm256_cmpeq_epi8(_mm256_and_si256(s, bits), bits);
    return _mm256_sub_epi8(_mm256_xor_si256(a, m), m);
  }
  // table[idx[r]] (idx: a dword per row, rows 8h .. 8h+8): lo = their low dwords, hi = their
  // high dwords.
  static void gather64(const uint64_t* table, R idx, int, R& lo, R& hi) {
    const auto* t = reinterpret_cast<const long long*>(table);
    split64(_mm256_i32gather_epi64(t, _mm256_castsi256_si128(idx), 8),
            _mm256_i32gather_epi64(t, _mm256_extracti128_si256(idx, 1), 8), lo, hi);
  }
  // a, b = 4 u64 each (rows 0..3, 4..7).
  static void split64(R a, R b, R& lo, R& hi) {
    const __m256 fa = _mm256_castsi256_ps(a), fb = _mm256_castsi256_ps(b);
    lo = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(fa, fb, 0x88)), 0xD8);
    hi = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(fa, fb, 0xDD)), 0xD8);
  }
};

MIXTRAL_Q8_BEGIN_AVX512

// AVX-512: the 16 rows in one pass (h = 0).
struct Avx512Vec {
  using R = __m512i;
  static constexpr int kPasses = 1;
  static void rows32(const uint8_t* const* rows, size_t o, int, R v[8]) { Avx512Loaders::rows16x32(rows, o, v); }
  static void rows16(const uint8_t* const* rows, size_t o, int, R z[4]) { Avx512Loaders::rows16x16(rows, o, z); }
  static R dwords(const uint8_t* const* rows, size_t o, int) {
    alignas(64) int32_t v[16];
    for (int i = 0; i < 16; ++i) std::memcpy(&v[i], rows[i] + o, 4);
    return _mm512_load_si512(v);
  }
  static R and_(R a, R b) { return _mm512_and_si512(a, b); }
  static R or_(R a, R b) { return _mm512_or_si512(a, b); }
  static R srli16(R a, int n) { return _mm512_srli_epi16(a, unsigned(n)); }
  static R slli16(R a, int n) { return _mm512_slli_epi16(a, unsigned(n)); }
  static R srli32(R a, int n) { return _mm512_srli_epi32(a, unsigned(n)); }
  static R slli32(R a, int n) { return _mm512_slli_epi32(a, unsigned(n)); }
  static R sub32(R a, R b) { return _mm512_sub_epi32(a, b); }
  static R set8(int8_t c) { return _mm512_set1_epi8(char(c)); }
  static R set32(int32_t c) { return _mm512_set1_epi32(c); }
  static R bcast128(const void* p) { return _mm512_broadcast_i32x4(_mm_loadu_si128(static_cast<const __m128i*>(p))); }
  static R shuffle8(R table, R idx) { return _mm512_shuffle_epi8(table, idx); }
  static R xor_(R a, R b) { return _mm512_xor_si512(a, b); }
  static R select_eq(R a, R b, int8_t val) { return _mm512_maskz_mov_epi8(_mm512_cmpeq_epi8_mask(a, b), set8(val)); }
  static R sub8(R a, R b) { return _mm512_sub_epi8(a, b); }
  static R gather32(const uint32_t* table, R idx) { return _mm512_i32gather_epi32(idx, table, 4); }
  static void store(Packed* out, int k, int, R v) { _mm512_store_si512(&out->q[k][0][0], v); }
  static void storei(int32_t* p, int, R v) { _mm512_store_si512(p, v); }
  // For the IQ2 / IQ1 unpackers (as Avx2Vec's):
  static R add8(R a, R b) { return _mm512_add_epi8(a, b); }
  static R add32(R a, R b) { return _mm512_add_epi32(a, b); }
  static R neg_where(R a, R s, R bits) {  // bits: one bit per byte (a test is the compare)
    return _mm512_mask_sub_epi8(a, _mm512_test_epi8_mask(s, bits), _mm512_setzero_si512(), a);
  }
  static void gather64(const uint64_t* table, R idx, int, R& lo, R& hi) {
    const auto* t = reinterpret_cast<const long long*>(table);
    split64(_mm512_i32gather_epi64(_mm512_castsi512_si256(idx), t, 8),
            _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(idx, 1), t, 8), lo, hi);
  }
  static void split64(R a, R b, R& lo, R& hi) {
    lo = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
    hi = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
  }
};

MIXTRAL_Q8_END

// ---- the unpackers, per ISA ----

// iq2xxs_grid with 128 added to every byte (its bytes are < 128: an xor), for the unpacker's
// signed values + 128.
struct Iq2xxsBiased {
  alignas(64) uint64_t v[256];
};
inline const Iq2xxsBiased kIq2xxsBiased = [] {
  Iq2xxsBiased g{};
  for (int i = 0; i < 256; ++i) g.v[i] = iq::iq2xxs_grid[i] ^ 0x8080808080808080ull;
  return g;
}();

// Whether the CPU has AVX-512 VBMI and BITALG, and VNNI, which the regions below also target
// (Ice Lake, Zen 4 and later; not Skylake-X / Cascade Lake). set_int8_vbmi(false) turns it off.
inline std::atomic<bool> g_vbmi_allowed{true};
inline bool has_avx512_vbmi() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bitalg") &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return yes && g_vbmi_allowed.load(std::memory_order_relaxed);
}

#define MIXTRAL_Q8_BEGIN_AVX512_VBMI \
  MIXTRAL_Q8_BEGIN_("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bitalg,avx512vnni,avx2,f16c,fma\")")

MIXTRAL_Q8_BEGIN_AVX512_VBMI
namespace avx512 {
// UnpackIQ2_XXS::unpack by Iq2xxsVbmi's blocks (its AVX-512 instance calls it where has_avx512_vbmi).
void iq2xxs_unpack_vbmi(const uint8_t* const* rows, size_t off, Packed* out);
}  // namespace avx512
MIXTRAL_Q8_END

namespace avx2 {
using V = Avx2Vec;
#include "kernels/matmul_q8_unpack.inc"
}  // namespace avx2

MIXTRAL_Q8_BEGIN_AVX512
namespace avx512 {
using V = Avx512Vec;
#include "kernels/matmul_q8_unpack.inc"
}  // namespace avx512
MIXTRAL_Q8_END

// ---- IQ2_XXS without gathers (AVX-512 VBMI + BITALG) ----
// The grid's bytes are 8, 25 or 43: codes 0, 1, 2, two bits per value. kIq2xxsCodes holds the
// codes of every entry's values 0..3 (lo) and 4..7 (hi), one byte each, so a block's 64 grid
// indices (16 rows x 4 entries) become their codes by two-register byte permutes, and each
// value's byte by a multishift of its 2-bit field and a byte permute of the biased magnitudes;
// its sign is a bit shuffle of the sign bytes (the mask of a masked negation).
// The gathers it replaces bound the decode (bench_matmul --shapes up, 1 token, 2 threads, Zen 5:
// 98 GFLOP/s CPU time with them, ~257 with them stubbed out); with it 222, with the bit shuffles
// (instead of a broadcast and two tests per entry) 240; tg32 on the IQ2_XXS slice 44-46 ->
// 91-101 tok/s.
struct Iq2xxsCodes {
  alignas(64) uint8_t lo[256];
  alignas(64) uint8_t hi[256];
};
inline const Iq2xxsCodes kIq2xxsCodes = [] {
  Iq2xxsCodes c{};
  for (int i = 0; i < 256; ++i)
    for (int b = 0; b < 8; ++b) {
      const unsigned v = unsigned(iq::iq2xxs_grid[i] >> (8 * b)) & 0xFF;
      const unsigned code = v == 0x08 ? 0u : v == 0x19 ? 1u : 2u;
      (b < 4 ? c.lo[i] : c.hi[i]) |= uint8_t(code << (2 * (b % 4)));
    }
  return c;
}();

MIXTRAL_Q8_BEGIN_AVX512_VBMI
namespace avx512 {
struct Iq2xxsVbmi {
  // The byte of each index byte of ix in a 256-byte table t.
  [[gnu::always_inline]] static inline __m512i lookup256(const uint8_t* t, __m512i ix) {
    const __m512i a = _mm512_permutex2var_epi8(_mm512_load_si512(t), ix, _mm512_load_si512(t + 64));
    const __m512i b = _mm512_permutex2var_epi8(_mm512_load_si512(t + 128), ix, _mm512_load_si512(t + 192));
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(ix), a, b);
  }
  // As UnpackIQ2_XXS::block (the same bytes).
  [[gnu::always_inline]] static inline void block(const __m512i v[8], int q, __m512i w[8], __m512i& sc) {
    // byte i of mag = the biased magnitude of code i % 4 (byte permutes read 6 index bits)
    const __m512i mag = _mm512_set1_epi32(int32_t(0x00AB9988u));
    const __m512i aux = v[2 * q + 1], sg = iq2xxs_signs(aux);
    const __m512i cl = lookup256(kIq2xxsCodes.lo, v[2 * q]), ch = lookup256(kIq2xxsCodes.hi, v[2 * q]);
    for (int l = 0; l < 4; ++l) {
      // byte b of the dword of row r: the code field of value b at bit 2b of byte l
      const int o = 8 * l;
      const __m512i ctrl = _mm512_set1_epi64(int64_t(
          uint64_t(o) | uint64_t(o + 2) << 8 | uint64_t(o + 4) << 16 | uint64_t(o + 6) << 24 |
          uint64_t(o + 32) << 32 | uint64_t(o + 34) << 40 | uint64_t(o + 36) << 48 | uint64_t(o + 38) << 56));
      const __m512i lo = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(ctrl, cl), mag);
      const __m512i hi = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(ctrl, ch), mag);
      // sign bits 8l + b (values 0..3) and 8l + 4 + b (4..7) of each row's dword
      const __m512i sl = _mm512_set1_epi64(int64_t(0x0101010101010101ull * uint64_t(o) + 0x2322212003020100ull));
      const __m512i sh = _mm512_add_epi8(sl, _mm512_set1_epi8(4));
      const __m512i z = _mm512_setzero_si512();
      w[2 * l] = _mm512_mask_sub_epi8(lo, _mm512_bitshuffle_epi64_mask(sg, sl), z, lo);
      w[2 * l + 1] = _mm512_mask_sub_epi8(hi, _mm512_bitshuffle_epi64_mask(sg, sh), z, hi);
    }
    sc = iq_odd(V::srli32(aux, 28), 15);
  }
};
[[gnu::noinline]] inline void iq2xxs_unpack_vbmi(const uint8_t* const* rows, size_t off, Packed* out) {
  for (int j = 0; j < 2; ++j) {
    __m512i v[8];
    V::rows32(rows, off + 2 + 32 * j, 0, v);
    for (int q = 0; q < 4; ++q) {
      __m512i w[8], sc;
      Iq2xxsVbmi::block(v, q, w, sc);
      for (int k = 0; k < 8; ++k) V::store(out + 4 * j + q, k, 0, w[k]);
      iq_store_scales(out + 4 * j + q, 0, sc, sc);
    }
  }
  iq_d8_at(rows, off, out);
}
}  // namespace avx512
MIXTRAL_Q8_END

}  // namespace mixtral::q8
