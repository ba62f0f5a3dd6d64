// Decode and small batches (at most kDecodeMaxTokens tokens; AVX2: kAvx2DecodeMaxTokens) of
// y = x·Wᵀ through int8 activations (contract in matmul_q8.h; the packed path and the shared
// pieces in matmul_q8.cpp / matmul_q8_blocks.h).
//
// No packing. Per thread, per group of 16 rows, the accumulators stay in registers while the
// group's blocks are walked in order straight from W: the same loaders that feed the packers build
// each block's transposed quants in registers, the scales and d's come from the 16 rows' block
// headers transposed in registers (AVX-512, but Q8_0 gathers its d's; AVX2 goes through small
// buffers), and the same per-block step as the micro-kernels (vnni_block / avx2_block) adds the
// block. While a group runs, the next group (16 contiguous rows) is prefetched into L2 in step
// with it. Each output is the same chain of blocks as in the packed path, so the bits are the
// same.
//
// Weights in tiles (weight_tiles.h; a model read into memory is tiled at load): the same kernels
// with every register a plain load from the group's tiles, which a thread reads as one run
// (prefetched in step). Q6_K has a tile kernel; its row kernel would be slower than packing.
//
// Q6_K in rows has no decode kernel: the packed path is faster for it at every token count. Measured
// (quiet machine, 2 threads) against an in-place Q6_K kernel (commit 83b4ba7): bench_matmul
// 1 token 47-48 against 43-44 GB/s (up shape), 4-8 tokens 412-591 against 304-354 GFLOP/s;
// tg32 on the Q4_K_M slice 79.0-79.4 against 68.9-75.4 tok/s.
//
// No fused multiply-add contraction in this file: dw * dx is rounded before its FMA.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/matmul_q8_blocks.h"
#include "kernels/matmul_q8_unpack.h"

namespace mixtral::q8 {
namespace {

// ---- AVX-512 VNNI: one zmm = 16 rows ----

MIXTRAL_Q8_BEGIN_AVX512_VNNI

// One Q4_K super-block (8 blocks of 32 columns) for NT tokens, 16 rows in lanes, from rows or
// tiles alike: r = the rows' first 16 bytes as Avx512Loaders::rows16x16 gives them, load(g, v) =
// group g's qs registers as Avx512Loaders::v_q4_K gives them.
template <class P, int NT, class LoadV>
[[gnu::always_inline]] inline void vnni_q4_K(const __m512i r[4], LoadV&& load, const XBlock* x, __m512 f[]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), zi = _mm512_setzero_si512();
  __m512 d, ndmin;
  Avx512Loaders::q4_K_d(r, d, ndmin);
#pragma GCC unroll 4
  for (int gq = 0; gq < 4; ++gq) {
    __m512i v[8], w[8];
    __m512 s0, s1;
    load(gq, v);
    for (int k = 0; k < 8; ++k) w[k] = _mm512_and_si512(v[k], m4);
    Avx512Loaders::q4_K_scale(r, d, ndmin, 2 * gq, s0, s1);
    vnni_block<P, NT>(w, s0, s1, zi, zi, x + 2 * gq * NT, f);
    for (int k = 0; k < 8; ++k) w[k] = _mm512_and_si512(_mm512_srli_epi16(v[k], 4), m4);
    Avx512Loaders::q4_K_scale(r, d, ndmin, 2 * gq + 1, s0, s1);
    vnni_block<P, NT>(w, s0, s1, zi, zi, x + (2 * gq + 1) * NT, f);
  }
}

template <class P, int NT>
struct Vnni512Decode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    const int64_t N = W.rows, nb = W.cols / 32;
    const size_t rb = W.row_bytes();
    const __m512i zi = _mm512_setzero_si512();
    const __m512 zf = _mm512_setzero_ps();
    for (int64_t g = r0; g < r1; g += kRows) {
      const int nr = int(std::min<int64_t>(kRows, r1 - g));
      const uint8_t* rows[kRows];
      group_rows(W, g, nr, rows);
      __m512 f[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) f[t] = zf;
      if constexpr (std::is_same_v<P, Q8_0Policy> || std::is_same_v<P, Q4_0Policy>) {
        constexpr bool q8 = std::is_same_v<P, Q8_0Policy>;
        constexpr size_t bytes = q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
        // byte offsets of the 16 rows from row 0, for gathering Q8_0's d's
        const __m512i idx = _mm512_mullo_epi32(
            _mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                             _mm512_set1_epi32(nr - 1)),
            _mm512_set1_epi32(int(rb)));
        for (int64_t j = 0; j < nb; ++j) {
          const size_t off = size_t(j) * bytes;
          prefetch_next_group(rows[0], rb, off, bytes);
          __m512i w[8];
          if constexpr (q8) Avx512Loaders::w_q8_0(rows, off, w);
          else Avx512Loaders::w_q4_0(rows, off, w);
          // The d's: Q4_0 with its transposed block headers, Q8_0 gathered (each the faster in
          // tg32 on the slice models, quiet machine: Q4_0 ~110 against ~100 tok/s gathered;
          // Q8_0 ~68 against ~50 with the headers, though in cache the headers are faster).
          __m512 s0;
          if constexpr (q8) {
            s0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(idx, rows[0] + off, 1)));
          } else {
            __m512i hd[4];  // hd[0]: d of the 16 rows in the low halves
            Avx512Loaders::rows16x16(rows, off, hd);
            s0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(hd[0]));
          }
          vnni_block<P, NT>(w, s0, zf, zi, zi, xb + j * NT, f);
        }
      } else {  // Q4_K
        for (int64_t j = 0; j < nb; j += 8) {
          const size_t off = size_t(j / 8) * sizeof(BlockQ4_K);
          prefetch_next_group(rows[0], rb, off, sizeof(BlockQ4_K));
          __m512i r[4];
          Avx512Loaders::rows16x16(rows, off, r);
          vnni_q4_K<P, NT>(r, [&](int g, __m512i v[8]) { Avx512Loaders::v_q4_K(rows, off, g, v); }, xb + j * NT, f);
        }
      }
      const __mmask16 m = __mmask16((1u << nr) - 1);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * N + g, m, f[t]);
    }
  }
};

// Decode from tiles (weight_tiles.h): the group's tiles are one contiguous run, read in order;
// every register comes from a plain load. Rows [r0, r1) are whole groups of a Tiles16 W.
template <class P, int NT>
struct Vnni512TileDecode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    using L = Avx512TileLoaders;
    const int64_t N = W.rows, nb = W.cols / 32;
    const __m512i zi = _mm512_setzero_si512();
    const __m512 zf = _mm512_setzero_ps();
    for (int64_t g = r0; g < r1; g += kRows) {
      const uint8_t* t = W.row(g);
      __m512 f[NT];
#pragma GCC unroll 8
      for (int i = 0; i < NT; ++i) f[i] = zf;
      if constexpr (std::is_same_v<P, Q8_0Policy> || std::is_same_v<P, Q4_0Policy>) {
        constexpr bool q8 = std::is_same_v<P, Q8_0Policy>;
        constexpr size_t bytes = q8 ? kQ8_0 : kQ4_0;
        for (int64_t j = 0; j < nb; ++j) {
          const Place at = place(j, nb, bytes);
          const uint8_t* b = t + at.body;
          prefetch_tiles_ahead(b, bytes + 32);
          __m512i w[8];
          if constexpr (q8) L::w_q8_0(b, w);
          else L::w_q4_0(b, w);
          vnni_block<P, NT>(w, L::d16(t + at.d), zf, zi, zi, xb + j * NT, f);
        }
      } else if constexpr (std::is_same_v<P, Q4_KPolicy>) {
        for (int64_t j = 0; j < nb; j += 8, t += kQ4_K) {
          prefetch_tiles_ahead(t, kQ4_K);
          __m512i r[4];
          L::q4_K_header(t, r);
          vnni_q4_K<P, NT>(r, [&](int g, __m512i v[8]) { L::v_q4_K(t, g, v); }, xb + j * NT, f);
        }
      } else {  // Q6_K
        for (int64_t j = 0; j < nb; j += 8) {
          const Place at = place(j / 8, nb / 8, kQ6_K);
          const uint8_t* t6 = t + at.body;
          prefetch_tiles_ahead(t6, kQ6_K + 32);
          const __m512 d = L::d16(t + at.d);
#pragma GCC unroll 2
          for (int b = 0; b < 8; ++b) {
            __m512i w[8], i0, i1;
            L::w_q6_K(t6, b, w);
            L::q6_K_scales(t6, b, i0, i1);
            vnni_block<P, NT>(w, d, zf, i0, i1, xb + (j + b) * NT, f);
          }
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < NT; ++i) _mm512_storeu_ps(y + i * N + g, f[i]);
    }
  }
};

// One IQ2_XXS super-block of the 16 rows: each block's registers straight from Un::block (the
// unpacker's; Iq2xxsVbmi's, from a function of its region) into the per-block step, no Packed
// buffer (the same operands vnni_packed would load: s0 = d / 8, i0 = i1 = the half scale). A
// macro, defined once per region: a template instance keeps its definition's target, and GCC
// inlines the VBMI blocks only into a function of the VBMI region.
#define MIXTRAL_IQ2_XXS_STEP(name, Un_) \
template <class P, int NT> \
[[gnu::always_inline]] inline void name(const uint8_t* const* rows, size_t off, const XBlock* x, __m512 f[]) { \
  alignas(64) float d[kRows]; \
  floats16(rows, off, false, d); \
  const __m512 s0 = _mm512_mul_ps(_mm512_load_ps(d), _mm512_set1_ps(0.125f)); \
  const __m512 zf = _mm512_setzero_ps(); \
  _Pragma("GCC unroll 2") \
  for (int j = 0; j < 2; ++j) { \
    __m512i v[8]; \
    avx512::V::rows32(rows, off + 2 + 32 * j, 0, v); \
    _Pragma("GCC unroll 4") \
    for (int q = 0; q < 4; ++q) { \
      __m512i w[8], sc; \
      Un_::block(v, q, w, sc); \
      vnni_block<P, NT>(w, s0, zf, sc, sc, x + (4 * j + q) * NT, f); \
    } \
  } \
}

MIXTRAL_IQ2_XXS_STEP(iq2_xxs_step, avx512::UnpackIQ2_XXS)

MIXTRAL_Q8_END

// ---- AVX-512 VNNI + VBMI + BITALG: IQ2_XXS without gathers ----

MIXTRAL_Q8_BEGIN_AVX512_VBMI

MIXTRAL_IQ2_XXS_STEP(iq2_xxs_vbmi_step, avx512::Iq2xxsVbmi)

// Vnni512UnpackDecode of IQ2_XXS with Iq2xxsVbmi's blocks.
template <class P, int NT>
[[gnu::noinline]] void iq2_xxs_vbmi_decode(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
  const int64_t N = W.rows, nb = W.cols / 32;
  const size_t rb = W.row_bytes();
  for (int64_t g = r0; g < r1; g += kRows) {
    const int nr = int(std::min<int64_t>(kRows, r1 - g));
    const uint8_t* rows[kRows];
    group_rows(W, g, nr, rows);
    __m512 f[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) f[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nb; j += 8) {
      const size_t off = size_t(j / 8) * sizeof(BlockIQ2_XXS);
      prefetch_next_group(rows[0], rb, off, sizeof(BlockIQ2_XXS));
      iq2_xxs_vbmi_step<P, NT>(rows, off, xb + j * NT, f);
    }
    const __mmask16 m = __mmask16((1u << nr) - 1);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * N + g, m, f[t]);
  }
}

MIXTRAL_Q8_END

MIXTRAL_Q8_BEGIN_AVX512_VNNI

// Decode for a type fed by an unpacker (matmul_q8_unpack.h): per dtype block, the 16 rows
// unpacked into a Packed buffer (L1), then the same per-block step as the packed path (IQ2_XXS:
// in registers, iq2_xxs_step).
template <class U, int NT>
struct Vnni512UnpackDecode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<U, avx512::UnpackIQ2_XXS>)
      if (has_avx512_vbmi()) return iq2_xxs_vbmi_decode<typename U::Policy, NT>(W, xb, y, r0, r1);
    using P = typename U::Policy;
    constexpr size_t bytes = sizeof(typename U::Block);
    const int64_t N = W.rows, nb = W.cols / 32;
    const size_t rb = W.row_bytes();
    for (int64_t g = r0; g < r1; g += kRows) {
      const int nr = int(std::min<int64_t>(kRows, r1 - g));
      const uint8_t* rows[kRows];
      group_rows(W, g, nr, rows);
      __m512 f[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) f[t] = _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; j += U::kBlocks) {
        const size_t off = size_t(j / U::kBlocks) * bytes;
        prefetch_next_group(rows[0], rb, off, bytes);
        if constexpr (std::is_same_v<U, avx512::UnpackIQ2_XXS>) {
          iq2_xxs_step<P, NT>(rows, off, xb + j * NT, f);
        } else {
          alignas(64) Packed buf[U::kBlocks];
          U::unpack(rows, off, buf);
          for (int b = 0; b < U::kBlocks; ++b) vnni_packed<P, NT>(buf[b], xb + (j + b) * NT, f);
        }
      }
      const __mmask16 m = __mmask16((1u << nr) - 1);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * N + g, m, f[t]);
    }
  }
};

MIXTRAL_Q8_END

// ---- AVX2: two ymm (rows 0-7, 8-15) ----

// One Q4_K super-block for NT tokens on AVX2, rows or tiles alike: sc = its 8 blocks' scales
// (q4_K_scales / q4_K_tile_scales), load(g, h, v) = group g's qs registers for rows 8h .. 8h+8.
template <class P, int NT, class LoadV>
[[gnu::always_inline]] inline void avx2_q4_K(const Packed sc[8], LoadV&& load, const XBlock* x, __m256 (*f)[2]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), zi = _mm256_setzero_si256();
  for (int gq = 0; gq < 4; ++gq)
    for (int h = 0; h < 2; ++h) {
      __m256i v[8], w[8];
      load(gq, h, v);
      for (int k = 0; k < 8; ++k) w[k] = _mm256_and_si256(v[k], m4);
      const Packed& a = sc[2 * gq];
      avx2_block<P, NT>(w, _mm256_load_ps(a.s0 + 8 * h), _mm256_load_ps(a.s1 + 8 * h), zi, zi, x + 2 * gq * NT, f, h);
      for (int k = 0; k < 8; ++k) w[k] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m4);
      const Packed& b = sc[2 * gq + 1];
      avx2_block<P, NT>(w, _mm256_load_ps(b.s0 + 8 * h), _mm256_load_ps(b.s1 + 8 * h), zi, zi,
                        x + (2 * gq + 1) * NT, f, h);
    }
}

// Decode on AVX2: as Vnni512Decode, each block as two halves of 8 rows.
template <class P, int NT>
struct Avx2Decode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    const int64_t N = W.rows, nb = W.cols / 32;
    const size_t rb = W.row_bytes();
    const __m256i zi = _mm256_setzero_si256();
    const __m256 zf = _mm256_setzero_ps();
    for (int64_t g = r0; g < r1; g += kRows) {
      const int nr = int(std::min<int64_t>(kRows, r1 - g));
      const uint8_t* rows[kRows];
      group_rows(W, g, nr, rows);
      __m256 f[NT][2];
      for (int t = 0; t < NT; ++t) f[t][0] = f[t][1] = zf;
      if constexpr (std::is_same_v<P, Q8_0Policy> || std::is_same_v<P, Q4_0Policy>) {
        constexpr bool q8 = std::is_same_v<P, Q8_0Policy>;
        constexpr size_t bytes = q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
        for (int64_t j = 0; j < nb; ++j) {
          const size_t off = size_t(j) * bytes;
          prefetch_next_group(rows[0], rb, off, bytes);
          alignas(32) uint16_t d16[kRows];
          gather_d16(rows, off, d16);
          for (int h = 0; h < 2; ++h) {
            __m256i w[8];
            if constexpr (q8) Avx2Loaders::w_q8_0(rows, off, h, w);
            else Avx2Loaders::w_q4_0(rows, off, h, w);
            const __m256 s0 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d16 + 8 * h)));
            avx2_block<P, NT>(w, s0, zf, zi, zi, xb + j * NT, f, h);
          }
        }
      } else {  // Q4_K
        for (int64_t j = 0; j < nb; j += 8) {
          const size_t off = size_t(j / 8) * sizeof(BlockQ4_K);
          prefetch_next_group(rows[0], rb, off, sizeof(BlockQ4_K));
          alignas(64) Packed sc[8];
          q4_K_scales(rows, off, sc);
          avx2_q4_K<P, NT>(sc, [&](int g, int h, __m256i v[8]) { Avx2Loaders::v_q4_K(rows, off, g, h, v); },
                           xb + j * NT, f);
        }
      }
      for (int t = 0; t < NT; ++t) {
        float out[kRows];
        _mm256_storeu_ps(out, f[t][0]);
        _mm256_storeu_ps(out + 8, f[t][1]);
        std::memcpy(y + t * N + g, out, sizeof(float) * size_t(nr));
      }
    }
  }
};

// Decode from tiles on AVX2: as Vnni512TileDecode, each block as two halves of 8 rows.
template <class P, int NT>
struct Avx2TileDecode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    using L = Avx2TileLoaders;
    const int64_t N = W.rows, nb = W.cols / 32;
    const __m256i zi = _mm256_setzero_si256();
    const __m256 zf = _mm256_setzero_ps();
    for (int64_t g = r0; g < r1; g += kRows) {
      const uint8_t* t = W.row(g);
      __m256 f[NT][2];
      for (int i = 0; i < NT; ++i) f[i][0] = f[i][1] = zf;
      if constexpr (std::is_same_v<P, Q8_0Policy> || std::is_same_v<P, Q4_0Policy>) {
        constexpr bool q8 = std::is_same_v<P, Q8_0Policy>;
        constexpr size_t bytes = q8 ? kQ8_0 : kQ4_0;
        for (int64_t j = 0; j < nb; ++j) {
          const Place at = place(j, nb, bytes);
          const uint8_t* b = t + at.body;
          prefetch_tiles_ahead(b, bytes + 32);
          for (int h = 0; h < 2; ++h) {
            __m256i w[8];
            if constexpr (q8) L::w_q8_0(b, h, w);
            else L::w_q4_0(b, h, w);
            avx2_block<P, NT>(w, L::d16(t + at.d, h), zf, zi, zi, xb + j * NT, f, h);
          }
        }
      } else if constexpr (std::is_same_v<P, Q4_KPolicy>) {
        for (int64_t j = 0; j < nb; j += 8, t += kQ4_K) {
          prefetch_tiles_ahead(t, kQ4_K);
          alignas(64) Packed sc[8];
          q4_K_tile_scales(t, sc);
          avx2_q4_K<P, NT>(sc, [&](int g, int h, __m256i v[8]) { L::v_q4_K(t, g, h, v); }, xb + j * NT, f);
        }
      } else {  // Q6_K
        for (int64_t j = 0; j < nb; j += 8) {
          const Place at = place(j / 8, nb / 8, kQ6_K);
          const uint8_t* t6 = t + at.body;
          prefetch_tiles_ahead(t6, kQ6_K + 32);
          for (int b = 0; b < 8; ++b)
            for (int h = 0; h < 2; ++h) {
              __m256i w[8], i0, i1;
              L::w_q6_K(t6, b, h, w);
              L::q6_K_scales(t6, b, h, i0, i1);
              avx2_block<P, NT>(w, L::d16(t + at.d, h), zf, i0, i1, xb + (j + b) * NT, f, h);
            }
        }
      }
      for (int i = 0; i < NT; ++i) {
        _mm256_storeu_ps(y + i * N + g, f[i][0]);
        _mm256_storeu_ps(y + i * N + g + 8, f[i][1]);
      }
    }
  }
};

// Decode on AVX2 for a type fed by an unpacker: as Vnni512UnpackDecode.
template <class U, int NT>
struct Avx2UnpackDecode {
  static void run(const Matrix& W, const XBlock* xb, float* y, int64_t r0, int64_t r1) {
    using P = typename U::Policy;
    constexpr size_t bytes = sizeof(typename U::Block);
    const int64_t N = W.rows, nb = W.cols / 32;
    const size_t rb = W.row_bytes();
    for (int64_t g = r0; g < r1; g += kRows) {
      const int nr = int(std::min<int64_t>(kRows, r1 - g));
      const uint8_t* rows[kRows];
      group_rows(W, g, nr, rows);
      __m256 f[NT][2];
      for (int t = 0; t < NT; ++t) f[t][0] = f[t][1] = _mm256_setzero_ps();
      for (int64_t j = 0; j < nb; j += U::kBlocks) {
        const size_t off = size_t(j / U::kBlocks) * bytes;
        prefetch_next_group(rows[0], rb, off, bytes);
        alignas(64) Packed buf[U::kBlocks];
        U::unpack(rows, off, buf);
        for (int b = 0; b < U::kBlocks; ++b)
          for (int h = 0; h < 2; ++h) avx2_packed<P, NT>(buf[b], xb + (j + b) * NT, f, h);
      }
      for (int t = 0; t < NT; ++t) {
        float out[kRows];
        _mm256_storeu_ps(out, f[t][0]);
        _mm256_storeu_ps(out + 8, f[t][1]);
        std::memcpy(y + t * N + g, out, sizeof(float) * size_t(nr));
      }
    }
  }
};

// ---- tables ----

// AVX2 stops at kAvx2DecodeMaxTokens (null entries: the packed path).
template <template <class, int> class D, class P, int N>
constexpr DecodeFn decode_fn() {
  if constexpr (N > kAvx2DecodeMaxTokens &&
                (std::is_same_v<D<P, N>, Avx2Decode<P, N>> || std::is_same_v<D<P, N>, Avx2TileDecode<P, N>> ||
                 std::is_same_v<D<P, N>, Avx2UnpackDecode<P, N>>))
    return nullptr;
  else return &D<P, N>::run;
}
template <template <class, int> class D, class P, int... NT>
constexpr std::array<DecodeFn, kDecodeMaxTokens> decode_fns(std::integer_sequence<int, NT...>) {
  return {decode_fn<D, P, NT + 1>()...};
}

}  // namespace

namespace {
using DecodeTable = std::array<DecodeFn, kDecodeMaxTokens>;
DecodeFn pick(const DecodeTable (&vnni512)[kNumInt8Types], const DecodeTable (&avx2)[kNumInt8Types], DType t,
              int n_tokens, bool vnni) {
  const int type = int8_type_index(t);
  if (type < 0 || n_tokens < 1 || n_tokens > kDecodeMaxTokens) return nullptr;
  return (vnni ? vnni512 : avx2)[type][size_t(n_tokens - 1)];
}
// The decode tables of the unpacker types, in kInt8Types' order (after the first four).
#define MIXTRAL_Q8_UNPACKED(D, U)                                                                   \
  decode_fns<D, U::Q4_1>(nt), decode_fns<D, U::Q5_0>(nt), decode_fns<D, U::Q5_1>(nt),              \
      decode_fns<D, U::Q2_K>(nt), decode_fns<D, U::Q3_K>(nt), decode_fns<D, U::Q5_K>(nt),          \
      decode_fns<D, U::IQ4_NL>(nt), decode_fns<D, U::IQ4_XS>(nt),                                 \
      decode_fns<D, U::IQ2_XXS>(nt), decode_fns<D, U::IQ2_XS>(nt), decode_fns<D, U::IQ2_S>(nt),    \
      decode_fns<D, U::IQ1_S>(nt), decode_fns<D, U::IQ1_M>(nt),                                \
      decode_fns<D, U::IQ3_XXS>(nt), decode_fns<D, U::IQ3_S>(nt)
}  // namespace

DecodeFn decode_kernel(DType t, int n_tokens, bool vnni) {
  constexpr auto nt = std::make_integer_sequence<int, kDecodeMaxTokens>{};
  static const DecodeTable kVnni512[] = {
      decode_fns<Vnni512Decode, Q8_0Policy>(nt), decode_fns<Vnni512Decode, Q4_0Policy>(nt),
      decode_fns<Vnni512Decode, Q4_KPolicy>(nt), {} /* Q6_K: the packed path */,
      MIXTRAL_Q8_UNPACKED(Vnni512UnpackDecode, avx512::Unpackers)};
  static const DecodeTable kAvx2[] = {
      decode_fns<Avx2Decode, Q8_0Policy>(nt), decode_fns<Avx2Decode, Q4_0Policy>(nt),
      decode_fns<Avx2Decode, Q4_KPolicy>(nt), {} /* Q6_K */, MIXTRAL_Q8_UNPACKED(Avx2UnpackDecode, avx2::Unpackers)};
  return pick(kVnni512, kAvx2, t, n_tokens, vnni);
}

// (The unpacker types have no tiles: their entries stay null.)
DecodeFn decode_tiles_kernel(DType t, int n_tokens, bool vnni) {
  constexpr auto nt = std::make_integer_sequence<int, kDecodeMaxTokens>{};
  static const DecodeTable kVnni512[kNumInt8Types] = {
      decode_fns<Vnni512TileDecode, Q8_0Policy>(nt), decode_fns<Vnni512TileDecode, Q4_0Policy>(nt),
      decode_fns<Vnni512TileDecode, Q4_KPolicy>(nt), decode_fns<Vnni512TileDecode, Q6_KPolicy>(nt)};
  static const DecodeTable kAvx2[kNumInt8Types] = {
      decode_fns<Avx2TileDecode, Q8_0Policy>(nt), decode_fns<Avx2TileDecode, Q4_0Policy>(nt),
      decode_fns<Avx2TileDecode, Q4_KPolicy>(nt), decode_fns<Avx2TileDecode, Q6_KPolicy>(nt)};
  return pick(kVnni512, kAvx2, t, n_tokens, vnni);
}

}  // namespace mixtral::q8

namespace mixtral {
void set_int8_vbmi(bool on) { q8::g_vbmi_allowed.store(on, std::memory_order_relaxed); }
}  // namespace mixtral
