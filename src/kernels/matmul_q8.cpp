// y = x·Wᵀ for quantized W through int8 activations (contract in matmul_q8.h).
//
// Plan:
//   1. quantize x once per call into XBlocks, block-major (xb[b][t]): all tokens' block b are
//      adjacent, which is what the micro-kernel walks.
//   2. per thread, over its rows in groups of 16 (lanes = rows), per block of up to kTokenBlock
//      tokens (the weights are read once per token block; decode and the server's small batches
//      read them exactly once):
//        for each chunk of kChunk 32-column blocks (prefetching the chunk kPrefetchChunks ahead:
//        a group reads 16 rows in short bursts, which the hardware prefetchers do not follow):
//          pack: the 16 rows' blocks into Packed (below): the quants as unsigned bytes with
//                "dword k of all 16 rows" adjacent (a 4-byte transpose), and per-row scales
//          for each group of up to 8 (AVX2: 4) tokens: micro-kernel: per block, per token
//                I[16 rows] = exact int sums (vpdpbusd with the token's 4 quants broadcast; AVX2:
//                vpmaddubsw + vpmaddwd), then acc[16 rows] = fma(float(I), dw * dx, acc)
//      The accumulators of a row group live in memory between chunks (acc[token][16]).
//   2'. decode and small batches (at most kDecodeMaxTokens tokens; 4 on AVX2): no packing (which
//      costs the same whatever the token count), the weights read in place by the kernels of
//      matmul_q8_decode.cpp, block by block in the same order.
//   Tiles (weight_tiles.h): the groups of a Tiles16 W hold the packers' registers already; they
//   are packed with plain loads, and decoded by matmul_q8_decode.cpp's tile kernels. Its
//   trailing rows (rows % 16) go the rows' way.
// Lanes are rows, so every output is one sequential chain over its blocks: the same whatever the
// ISA, the tile shape, the thread count or the number of tokens. The unsigned-times-signed byte
// products take the weights as the unsigned side: Q4_0 / Q4_K / Q6_K store unsigned quants (the
// offsets 8 and 32 come back through X, the activation block sum), Q8_0 adds 128 on AVX-512 (and
// takes back 128·X); AVX2's vpmaddubsw would saturate on that, so it multiplies |w| by sign(w)·x.
//
// No fused multiply-add contraction in this file: dw * dx is rounded before its FMA.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/matmul_q8.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/dequant.h"
#include "kernels/kernel_util.h"
#include "kernels/matmul_q8_blocks.h"
#include "kernels/matmul_q8_ref_iq2_iq1.h"
#include "kernels/matmul_q8_unpack.h"
#include "kernels/weight_tiles.h"
#include "quant/blocks.h"

namespace mixtral {
namespace {

using namespace q8;

// Measured on Zen 5 (2 threads): chunks of 8 prefetched 3 ahead stream decode's weights at
// 60-90 % of the read bandwidth; 16 or 32 per chunk (bigger prefetch bursts) gave 40-60 %.
constexpr int64_t kChunk = 8;            // 32-column blocks per packed chunk (a K-quant super-block)
constexpr int64_t kPrefetchChunks = 3;   // how far ahead the weights are prefetched
constexpr int64_t kTokenBlock = 64;      // tokens whose activations one pass over the weights uses

inline float half_at(const uint16_t& h) {
  uint16_t v;
  std::memcpy(&v, &h, 2);
  return f16_to_f32(v);
}

// ================================ activations ===================================================

// One block of 32 activations (shared by the reference and the fast path: it is cheap, and one
// definition cannot drift from itself). x * id and nearbyint round as the SIMD forms would.
void quantize_block(const float* x, XBlock* out) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  int32_t sum = 0, sum_lo = 0;
  for (int i = 0; i < 32; ++i) {
    const int q = int(std::nearbyint(x[i] * id));
    out->qs[i] = int8_t(q);
    sum += q;
    if (i < 16) sum_lo += q;
  }
  out->d = f16_to_f32(f32_to_f16(d));
  out->sum = sum;
  out->sum_lo = sum_lo;
  out->dsum = out->d * float(sum);
}

// ================================ packed weights ================================================
// (Packed, the loaders and the transposes: matmul_q8_blocks.h)

// Packs blocks [b0, b0 + nb) of 16 rows (rows[r] = start of row r). AVX2, used at every level:
// the packed bytes are the same however they are computed.
using PackFn = void (*)(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out);

// out->q[k][8h .. 8h+8) = v[k]
inline void store_rows8(Packed* out, int k, int h, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out->q[k][8 * h][0]), v);
}

// Packs 32-column blocks [b0, b0 + nb) of a whole group of a Tiles16 W (group: its first byte;
// row_blocks: 32-column blocks per row, which place the blocks: place).
using PackTilesFn = void (*)(const uint8_t* group, int64_t row_blocks, int64_t b0, int64_t nb, Packed* out);

// The packers proper, blocks [b0, b0 + nb): defined inside each Quants struct (so that the
// AVX-512 ones are compiled, and inline their per-block parts, for AVX-512).
#define MIXTRAL_Q8_PACKERS                                                                     \
  static void pack_q8_0(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out) {     \
    for (int64_t j = 0; j < nb; ++j, ++out) {                                                  \
      const size_t off = size_t(b0 + j) * sizeof(BlockQ8_0);                                   \
      q8_0(rows, off, out);                                                                    \
      gather_d16(rows, off, out->d16);                                                         \
    }                                                                                          \
  }                                                                                            \
  static void pack_q4_0(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out) {     \
    for (int64_t j = 0; j < nb; ++j, ++out) {                                                  \
      const size_t off = size_t(b0 + j) * sizeof(BlockQ4_0);                                   \
      q4_0(rows, off, out);                                                                    \
      gather_d16(rows, off, out->d16);                                                         \
    }                                                                                          \
  }                                                                                            \
  static void pack_q4_K(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out) {     \
    for (int64_t j = 0; j < nb; j += 8, out += 8) {                                            \
      const size_t off = size_t((b0 + j) / 8) * sizeof(BlockQ4_K);                             \
      q4_K(rows, off, out);                                                                    \
      q4_K_scales(rows, off, out);                                                             \
    }                                                                                          \
  }                                                                                            \
  static void pack_q6_K(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out) {     \
    for (int64_t j = 0; j < nb; j += 8, out += 8) {                                            \
      const size_t off = size_t((b0 + j) / 8) * sizeof(BlockQ6_K);                             \
      q6_K(rows, off, out);                                                                    \
      q6_K_scales(rows, off, out);                                                             \
    }                                                                                          \
  }
// ---- packers, AVX2: 8 rows at a time ----
// q8_0 / q4_0: one block at byte offset off of every row; q4_K / q6_K: the super-block at off
// into out[0..8).

struct Avx2Quants : Avx2Loaders {
  MIXTRAL_Q8_PACKERS
  // From tiles: the same Packed bytes with plain loads (weight_tiles.h).
  using T = Avx2TileLoaders;
  // Q8_0 and Q4_0: a body of kBody bytes and the d's per 32-column block; load: T::w_q8_0 / w_q4_0.
  template <size_t kBody, void (*load)(const uint8_t*, int, __m256i*)>
  static void tiles_32(const uint8_t* group, int64_t row_blocks, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; ++j, ++out) {
      const Place at = place(b0 + j, row_blocks, kBody);
      prefetch_tiles_ahead(group + at.body, kBody + 32);
      for (int h = 0; h < 2; ++h) {
        __m256i w[8];
        load(group + at.body, h, w);
        for (int k = 0; k < 8; ++k) store_rows8(out, k, h, w[k]);
      }
      std::memcpy(out->d16, group + at.d, sizeof out->d16);
    }
  }
  static constexpr PackTilesFn tiles_q8_0 = tiles_32<kQ8_0, T::w_q8_0>;
  static constexpr PackTilesFn tiles_q4_0 = tiles_32<kQ4_0, T::w_q4_0>;
  static void tiles_q4_K(const uint8_t* group, int64_t, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; j += 8, out += 8) {
      const uint8_t* t = group + size_t((b0 + j) / 8) * kQ4_K;
      prefetch_tiles_ahead(t, kQ4_K);
      q4_K_quants([&](int g, int h, __m256i v[8]) { T::v_q4_K(t, g, h, v); }, out);
      q4_K_tile_scales(t, out);
    }
  }
  static void tiles_q6_K(const uint8_t* group, int64_t row_blocks, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; j += 8, out += 8) {
      const Place at = place((b0 + j) / 8, row_blocks / 8, kQ6_K);
      const uint8_t* t = group + at.body;
      const uint8_t* d = group + at.d;
      prefetch_tiles_ahead(t, kQ6_K + 32);
      for (int b = 0; b < 8; ++b) {
        for (int h = 0; h < 2; ++h) {
          __m256i w[8], i0, i1;
          T::w_q6_K(t, b, h, w);
          for (int k = 0; k < 8; ++k) store_rows8(out + b, k, h, w[k]);
          T::q6_K_scales(t, b, h, i0, i1);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].i0 + 8 * h), i0);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].i1 + 8 * h), i1);
        }
        std::memcpy(out[b].d16, d, sizeof out[b].d16);
      }
    }
  }
  static void q8_0(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int h = 0; h < 2; ++h) {
      __m256i w[8];
      w_q8_0(rows, off, h, w);
      for (int k = 0; k < 8; ++k) store_rows8(out, k, h, w[k]);
    }
  }
  static void q4_0(const uint8_t* const* rows, size_t off, Packed* out) {
    for (int h = 0; h < 2; ++h) {
      __m256i w[8];
      w_q4_0(rows, off, h, w);
      for (int k = 0; k < 8; ++k) store_rows8(out, k, h, w[k]);
    }
  }
  // Group g of 64 values = sub-blocks 2g (low nibbles of qs[32g..32g+32)) and 2g+1 (high).
  static void q4_K(const uint8_t* const* rows, size_t off, Packed* out) {
    q4_K_quants([&](int g, int h, __m256i v[8]) { v_q4_K(rows, off, g, h, v); }, out);
  }
  // The quants of a Q4_K super-block's 8 Packed blocks, rows or tiles alike: load(g, h, v) =
  // group g's qs registers for rows 8h .. 8h+8 (low nibbles: block 2g, high: 2g+1).
  template <class LoadV>
  static void q4_K_quants(LoadV&& load, Packed* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int h = 0; h < 2; ++h)
      for (int g = 0; g < 4; ++g) {
        __m256i v[8];
        load(g, h, v);
        for (int k = 0; k < 8; ++k) {
          store_rows8(out + 2 * g, k, h, _mm256_and_si256(v[k], m4));
          store_rows8(out + 2 * g + 1, k, h, _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m4));
        }
      }
  }
  // Activation block 4·half + q is quarter q of that half: low 4 bits from
  // ql[64·half + 32(q%2) + l] (nibble q/2), high 2 bits from qh[32·half + l] >> 2q.
  static void q6_K(const uint8_t* const* rows, size_t off, Packed* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
    for (int half = 0; half < 2; ++half) {
      for (int h = 0; h < 2; ++h) {
        __m256i a[8], b[8], hb[8];
        for (int i = 0; i < 8; ++i) {
          const uint8_t* p = rows[8 * h + i] + off;
          a[i] = load256(p + 64 * half);
          b[i] = load256(p + 64 * half + 32);
          hb[i] = load256(p + offsetof(BlockQ6_K, qh) + 32 * half);
        }
        transpose8x8(a);
        transpose8x8(b);
        transpose8x8(hb);
        for (int k = 0; k < 8; ++k) {
          const __m256i hi[4] = {_mm256_and_si256(_mm256_slli_epi16(hb[k], 4), m2),
                                 _mm256_and_si256(_mm256_slli_epi16(hb[k], 2), m2),
                                 _mm256_and_si256(hb[k], m2),
                                 _mm256_and_si256(_mm256_srli_epi16(hb[k], 2), m2)};
          const __m256i lo[4] = {_mm256_and_si256(a[k], m4), _mm256_and_si256(b[k], m4),
                                 _mm256_and_si256(_mm256_srli_epi16(a[k], 4), m4),
                                 _mm256_and_si256(_mm256_srli_epi16(b[k], 4), m4)};
          for (int q = 0; q < 4; ++q) store_rows8(out + 4 * half + q, k, h, _mm256_or_si256(lo[q], hi[q]));
        }
      }
    }
  }
};

// ---- packers, AVX-512: 16 rows at a time, the same bytes ----

MIXTRAL_Q8_BEGIN_AVX512

inline void store_rows16(Packed* out, int k, __m512i v) { _mm512_store_si512(&out->q[k][0][0], v); }

struct Avx512Quants : Avx512Loaders {
  MIXTRAL_Q8_PACKERS
  using T = Avx512TileLoaders;
  template <size_t kBody, void (*load)(const uint8_t*, __m512i*)>
  static void tiles_32(const uint8_t* group, int64_t row_blocks, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; ++j, ++out) {
      const Place at = place(b0 + j, row_blocks, kBody);
      prefetch_tiles_ahead(group + at.body, kBody + 32);
      __m512i w[8];
      load(group + at.body, w);
      for (int k = 0; k < 8; ++k) store_rows16(out, k, w[k]);
      std::memcpy(out->d16, group + at.d, sizeof out->d16);
    }
  }
  static constexpr PackTilesFn tiles_q8_0 = tiles_32<kQ8_0, T::w_q8_0>;
  static constexpr PackTilesFn tiles_q4_0 = tiles_32<kQ4_0, T::w_q4_0>;
  static void tiles_q4_K(const uint8_t* group, int64_t, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; j += 8, out += 8) {
      const uint8_t* t = group + size_t((b0 + j) / 8) * kQ4_K;
      prefetch_tiles_ahead(t, kQ4_K);
      q4_K_quants([&](int g, __m512i v[8]) { T::v_q4_K(t, g, v); }, out);
      q4_K_tile_scales(t, out);
    }
  }
  static void tiles_q6_K(const uint8_t* group, int64_t row_blocks, int64_t b0, int64_t nb, Packed* out) {
    for (int64_t j = 0; j < nb; j += 8, out += 8) {
      const Place at = place((b0 + j) / 8, row_blocks / 8, kQ6_K);
      const uint8_t* t = group + at.body;
      const uint8_t* d = group + at.d;
      prefetch_tiles_ahead(t, kQ6_K + 32);
      for (int b = 0; b < 8; ++b) {
        __m512i w[8], i0, i1;
        T::w_q6_K(t, b, w);
        for (int k = 0; k < 8; ++k) store_rows16(out + b, k, w[k]);
        T::q6_K_scales(t, b, i0, i1);
        _mm512_store_si512(out[b].i0, i0);
        _mm512_store_si512(out[b].i1, i1);
        std::memcpy(out[b].d16, d, sizeof out[b].d16);
      }
    }
  }
  static void q8_0(const uint8_t* const* rows, size_t off, Packed* out) {
    __m512i w[8];
    w_q8_0(rows, off, w);
    for (int k = 0; k < 8; ++k) store_rows16(out, k, w[k]);
  }
  static void q4_0(const uint8_t* const* rows, size_t off, Packed* out) {
    __m512i w[8];
    w_q4_0(rows, off, w);
    for (int k = 0; k < 8; ++k) store_rows16(out, k, w[k]);
  }
  static void q4_K(const uint8_t* const* rows, size_t off, Packed* out) {
    q4_K_quants([&](int g, __m512i v[8]) { v_q4_K(rows, off, g, v); }, out);
  }
  template <class LoadV>  // as Avx2Quants::q4_K_quants, 16 rows at once
  static void q4_K_quants(LoadV&& load, Packed* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < 4; ++g) {
      __m512i v[8];
      load(g, v);
      for (int k = 0; k < 8; ++k) {
        store_rows16(out + 2 * g, k, _mm512_and_si512(v[k], m4));
        store_rows16(out + 2 * g + 1, k, _mm512_and_si512(_mm512_srli_epi16(v[k], 4), m4));
      }
    }
  }
  static void q6_K(const uint8_t* const* rows, size_t off, Packed* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    for (int half = 0; half < 2; ++half) {
      __m512i a[8], b[8], hb[8];
      const size_t oa = off + 64 * half, ob = oa + 32, oh = off + offsetof(BlockQ6_K, qh) + 32 * half;
      for (int i = 0; i < 8; ++i) {
        a[i] = load_2x256(rows[i] + oa, rows[i + 8] + oa);
        b[i] = load_2x256(rows[i] + ob, rows[i + 8] + ob);
        hb[i] = load_2x256(rows[i] + oh, rows[i + 8] + oh);
      }
      transpose16x8(a);
      transpose16x8(b);
      transpose16x8(hb);
      for (int k = 0; k < 8; ++k) {
        // (hb >> 2q) & 3, moved to bits 4-5; then OR'ed with the low 4 bits (ternary logic)
        const __m512i hi[4] = {_mm512_slli_epi16(hb[k], 4), _mm512_slli_epi16(hb[k], 2), hb[k],
                               _mm512_srli_epi16(hb[k], 2)};
        const __m512i lo[4] = {a[k], b[k], _mm512_srli_epi16(a[k], 4), _mm512_srli_epi16(b[k], 4)};
        for (int q = 0; q < 4; ++q)  // (lo & 0x0F) | (hi & 0x30)
          store_rows16(out + 4 * half + q, k,
                       _mm512_or_si512(_mm512_and_si512(lo[q], m4), _mm512_and_si512(hi[q], m2)));
      }
    }
  }
};

MIXTRAL_Q8_END
// ================================ micro-kernels =================================================
// Kernel<NT>: for the nb packed blocks and NT tokens: acc[t][16] (in memory) continues the
// contract's chain with blocks b0 .. b0+nb. xb: the group's first token's XBlock of block b0;
// block j of token t is at xb[j * x_stride + t].
using MicroKernel = void (*)(const Packed* pw, int64_t nb, const XBlock* xb, int64_t x_stride, float* acc);

// (the policies and the per-block steps vnni_block / avx2_block: matmul_q8_blocks.h)

// ---- AVX-512 VNNI: one zmm = 16 rows ----

MIXTRAL_Q8_BEGIN_AVX512_VNNI
template <class P, int NT>
struct Vnni512 {
  static void run(const Packed* pw, int64_t nb, const XBlock* xb, int64_t xs, float* acc) {
    __m512 f[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) f[t] = _mm512_loadu_ps(acc + t * kRows);
    for (int64_t j = 0; j < nb; ++j) vnni_packed<P, NT>(pw[j], xb + j * xs, f);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(acc + t * kRows, f[t]);
  }
};

MIXTRAL_Q8_END

// ---- AVX2: two ymm (rows 0-7, 8-15) ----

template <class P, int NT>
struct Avx2 {
  static void run(const Packed* pw, int64_t nb, const XBlock* xb, int64_t xs, float* acc) {
    __m256 f[NT][2];
    for (int t = 0; t < NT; ++t)
      for (int h = 0; h < 2; ++h) f[t][h] = _mm256_loadu_ps(acc + t * kRows + 8 * h);
    for (int64_t j = 0; j < nb; ++j)
      for (int h = 0; h < 2; ++h) avx2_packed<P, NT>(pw[j], xb + j * xs, f, h);
    for (int t = 0; t < NT; ++t)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(acc + t * kRows + 8 * h, f[t][h]);
  }
};
// ================================ kernel tables =================================================

constexpr int kMaxTg = 8;
struct Q8Kernels {
  int tg;                        // tokens per micro-kernel call
  PackFn pack;
  PackTilesFn pack_tiles;
  MicroKernel kernel[kMaxTg];    // [NT - 1]
};

template <template <class, int> class K, class P, int... NT>
Q8Kernels make_kernels(PackFn pack, PackTilesFn pack_tiles, std::integer_sequence<int, NT...>) {
  return Q8Kernels{int(sizeof...(NT)), pack, pack_tiles, {&K<P, NT + 1>::run...}};
}

// The packed path of a type fed by an unpacker (matmul_q8_unpack.h): blocks [b0, b0 + nb).
template <class U>
void pack_blocks(const uint8_t* const* rows, int64_t b0, int64_t nb, Packed* out) {
  for (int64_t j = 0; j < nb; j += U::kBlocks, out += U::kBlocks)
    U::unpack(rows, size_t((b0 + j) / U::kBlocks) * sizeof(typename U::Block), out);
}

template <template <class, int> class K, class U, int... NT>
Q8Kernels unpacked(std::integer_sequence<int, NT...> nt) {
  return make_kernels<K, typename U::Policy>(pack_blocks<U>, nullptr, nt);  // (no tiles)
}

// In kInt8Types' order.
template <template <class, int> class K, class Q, class Un, int TG>
std::vector<Q8Kernels> make_table() {
  const auto nt = std::make_integer_sequence<int, TG>{};
  return {make_kernels<K, Q8_0Policy>(Q::pack_q8_0, Q::tiles_q8_0, nt),
          make_kernels<K, Q4_0Policy>(Q::pack_q4_0, Q::tiles_q4_0, nt),
          make_kernels<K, Q4_KPolicy>(Q::pack_q4_K, Q::tiles_q4_K, nt),
          make_kernels<K, Q6_KPolicy>(Q::pack_q6_K, Q::tiles_q6_K, nt),
          unpacked<K, typename Un::Q4_1>(nt),
          unpacked<K, typename Un::Q5_0>(nt),
          unpacked<K, typename Un::Q5_1>(nt),
          unpacked<K, typename Un::Q2_K>(nt),
          unpacked<K, typename Un::Q3_K>(nt),
          unpacked<K, typename Un::Q5_K>(nt),
          unpacked<K, typename Un::IQ4_NL>(nt),
          unpacked<K, typename Un::IQ4_XS>(nt),
          unpacked<K, typename Un::IQ2_XXS>(nt),
          unpacked<K, typename Un::IQ2_XS>(nt),
          unpacked<K, typename Un::IQ2_S>(nt),
          unpacked<K, typename Un::IQ1_S>(nt),
          unpacked<K, typename Un::IQ1_M>(nt),
          unpacked<K, typename Un::IQ3_XXS>(nt),
          unpacked<K, typename Un::IQ3_S>(nt)};
}

// 8 tokens: 8 accumulators + 8 weight vectors + scales and temporaries of the 32 zmm.
const std::vector<Q8Kernels> kVnni512 = make_table<Vnni512, Avx512Quants, avx512::Unpackers, 8>();
const std::vector<Q8Kernels> kAvx2 = make_table<Avx2, Avx2Quants, avx2::Unpackers, 4>();

bool has_avx512_vnni() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return yes;
}

bool use_vnni() { return simd_level() >= SimdLevel::AVX512 && has_avx512_vnni(); }

const Q8Kernels& kernels_for(DType t) { return (use_vnni() ? kVnni512 : kAvx2)[size_t(int8_type_index(t))]; }

// ================================ driver ========================================================

using kernel_util::prefetch;
using kernel_util::Scratch;

// Whether rows g .. g+15 of W are a group stored as tiles (weight_tiles.h).
bool is_tile_group(const Matrix& W, int64_t g) { return W.layout == Layout::Tiles16 && g + kRows <= W.rows; }

void matmul_q8_rows(const Matrix& W, const XBlock* xb, int64_t n_tokens, float* y, int64_t r0,
                    int64_t r1, const Q8Kernels& ks) {
  thread_local Scratch<Packed> pack_scratch;
  thread_local Scratch<float> acc_scratch;
  const int64_t N = W.rows, nb = W.cols / 32;
  const DTypeInfo info = dtype_info(W.dtype);
  const int64_t per_block = info.block_size / 32;  // 32-column blocks per dtype block
  auto byte_offset = [&](int64_t b) { return size_t(b / per_block) * info.block_bytes; };
  Packed* packed = pack_scratch.get(size_t(kChunk));
  float* acc = acc_scratch.get(size_t(kTokenBlock * kRows));

  for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokenBlock) {
    const int64_t nt = std::min(kTokenBlock, n_tokens - t0);
    for (int64_t g = r0; g < r1; g += kRows) {
      const int64_t nr = std::min<int64_t>(kRows, r1 - g);
      const bool tiles = is_tile_group(W, g);
      const uint8_t* rows[kRows];
      group_rows(W, g, nr, rows);
      std::memset(acc, 0, sizeof(float) * size_t(nt * kRows));
      for (int64_t c = 0; c < nb; c += kChunk) {
        const int64_t nc = std::min(kChunk, nb - c);
        {  // prefetch the chunk kPrefetchChunks ahead (in this group or the next)
          int64_t pg = g, pc = c + kPrefetchChunks * kChunk;
          if (pc >= nb) pg += kRows, pc -= nb;
          if (pc < nb) {
            const int64_t pr1 = std::min(pg + kRows, r1);
            const size_t poff = byte_offset(pc), pbytes = byte_offset(std::min(kChunk, nb - pc));
            if (!is_tile_group(W, pg))  // (the tile packers prefetch in step: prefetch_tiles_ahead)
              for (int64_t r = pg; r < pr1; ++r) prefetch(W.row(r) + poff, pbytes);
          }
        }
        if (tiles) ks.pack_tiles(rows[0], nb, c, nc, packed);
        else ks.pack(rows, c, nc, packed);
        for (int64_t tg = 0; tg < nt; tg += ks.tg) {
          const int64_t ntg = std::min<int64_t>(ks.tg, nt - tg);
          ks.kernel[ntg - 1](packed, nc, xb + c * n_tokens + t0 + tg, n_tokens, acc + tg * kRows);
        }
      }
      for (int64_t t = 0; t < nt; ++t)
        std::memcpy(y + (t0 + t) * N + g, acc + t * kRows, sizeof(float) * size_t(nr));
    }
  }
}

// ---- activations, fast: 8 lanes at a time, the same operations as quantize_block ----

void quantize_block_avx2(const float* x, XBlock* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4], m = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float d = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  __m256i q[4];
  for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));  // round to nearest even
  // int32 -> int8 in order: packs work within 128-bit lanes, the permute puts them back.
  const __m256i q16a = _mm256_packs_epi32(q[0], q[1]), q16b = _mm256_packs_epi32(q[2], q[3]);
  const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b),
                                                 _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->qs), q8);
  const __m256i s_lo = _mm256_add_epi32(q[0], q[1]), s_all = _mm256_add_epi32(s_lo, _mm256_add_epi32(q[2], q[3]));
  auto hsum = [](__m256i s) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    return _mm_cvtsi128_si32(t);
  };
  out->d = f16_to_f32(f32_to_f16(d));
  out->sum = hsum(s_all);
  out->sum_lo = hsum(s_lo);
  out->dsum = out->d * float(out->sum);
}

void check_cols(const char* where, int64_t K) {
  if (K % 32 != 0) fail(where, "activations need a multiple of 32 columns, got " + std::to_string(K));
}

}  // namespace

bool int8_activation_dtype(DType t) { return int8_type_index(t) >= 0; }

void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb) {
  check_cols("quantize_activations", K);
  const int64_t nb = K / 32;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t b = 0; b < nb; ++b) quantize_block_avx2(x + t * K + 32 * b, xb + b * n_tokens + t);
}

void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  if (!int8_activation_dtype(W.dtype)) fail("matmul_q8", std::string("no int8 path for ") + dtype_name(W.dtype));
  const DTypeInfo info = dtype_info(W.dtype);
  if (W.cols % info.block_size != 0)
    fail("matmul", std::string(info.name) + " weights need a multiple of " +
                       std::to_string(info.block_size) + " columns, got " + std::to_string(W.cols));
  if (n_tokens <= 0 || W.rows <= 0) return;
  if (W.cols == 0) {
    std::fill(y, y + n_tokens * W.rows, 0.0f);
    return;
  }
  thread_local Scratch<XBlock> x_scratch;  // the calling thread's; the workers only read it
  XBlock* xb = x_scratch.get(size_t(n_tokens * (W.cols / 32)));
  quantize_activations(x, n_tokens, W.cols, xb);
  const bool few = n_tokens <= kDecodeMaxTokens;
  const DecodeFn decode = few ? decode_kernel(W.dtype, int(n_tokens), use_vnni()) : nullptr;
  const DecodeFn decode_tiles =
      few && W.layout == Layout::Tiles16 ? decode_tiles_kernel(W.dtype, int(n_tokens), use_vnni()) : nullptr;
  const Q8Kernels& ks = kernels_for(W.dtype);
  // Rows [0, tiled) are whole groups of tiles; the rest (all rows of a Rows W) plain rows.
  const int64_t tiled = W.layout == Layout::Tiles16 ? W.rows / kRows * kRows : 0;
  pool.parallel_for(
      W.rows,
      [&](int64_t r0, int64_t r1) {
        if (decode_tiles && r0 < tiled) {
          decode_tiles(W, xb, y, r0, std::min(r1, tiled));
          r0 = std::min(r1, tiled);
          if (r0 == r1) return;
        }
        if (decode) decode(W, xb, y, r0, r1);
        else matmul_q8_rows(W, xb, n_tokens, y, r0, r1, ks);
      },
      kRows);
}

namespace ref {
namespace {

// Block b (32 columns) of a row of one of the unpacker types: I, M, dw and the min term of the
// contract (matmul_q8.h), straight from the block layouts.
void ref_block(DType t, const uint8_t* row, int64_t b, const XBlock& xq, int32_t& I, int32_t& M, float& dw,
               float& min_term) {
  const int s = int(b % 8);  // a K-type's 32-column block in its super-block
  auto nibble = [](const uint8_t* qs, int i) { return i < 16 ? qs[i] & 0xF : qs[i - 16] >> 4; };
  switch (t) {
    case DType::Q4_1: case DType::Q5_1: case DType::Q5_0: {
      const uint8_t* blk = row + size_t(b) * dtype_info(t).block_bytes;
      const uint8_t* qs = blk + (t == DType::Q4_1 ? offsetof(BlockQ4_1, qs) : t == DType::Q5_1 ? offsetof(BlockQ5_1, qs)
                                                                                              : offsetof(BlockQ5_0, qs));
      uint32_t qh = 0;
      if (t != DType::Q4_1) std::memcpy(&qh, blk + (t == DType::Q5_1 ? offsetof(BlockQ5_1, qh) : offsetof(BlockQ5_0, qh)), 4);
      for (int i = 0; i < 32; ++i) {
        const int q = nibble(qs, i) | int((qh >> i) & 1) << 4;
        I += (t == DType::Q5_0 ? q - 16 : q) * xq.qs[i];
      }
      dw = fp16_at(blk);
      if (t != DType::Q5_0) min_term = fp16_at(blk + 2);
      break;
    }
    case DType::IQ4_NL: {
      const auto& blk = reinterpret_cast<const BlockIQ4_NL*>(row)[b];
      for (int i = 0; i < 32; ++i) I += kvalues_iq4nl[nibble(blk.qs, i)] * xq.qs[i];
      dw = fp16_at(row + size_t(b) * sizeof(BlockIQ4_NL));
      break;
    }
    case DType::IQ4_XS: {
      const auto& blk = reinterpret_cast<const BlockIQ4_XS*>(row)[b / 8];
      for (int i = 0; i < 32; ++i) I += kvalues_iq4nl[nibble(blk.qs + 16 * s, i)] * xq.qs[i];
      I *= iq4_xs_scale(s, blk) - 32;
      dw = fp16_at(reinterpret_cast<const uint8_t*>(&blk));
      break;
    }
    case DType::Q2_K: {  // block s = 4j + l
      const auto& blk = reinterpret_cast<const BlockQ2_K*>(row)[b / 8];
      const int j = s / 4, l = s % 4;
      int32_t half[2] = {0, 0};
      for (int i = 0; i < 32; ++i) half[i / 16] += ((blk.qs[32 * j + i] >> (2 * l)) & 3) * xq.qs[i];
      const int sc0 = blk.scales[2 * s], sc1 = blk.scales[2 * s + 1];
      I = (sc0 & 0xF) * half[0] + (sc1 & 0xF) * half[1];
      M = (sc0 >> 4) * xq.sum_lo + (sc1 >> 4) * (xq.sum - xq.sum_lo);
      const uint8_t* p = reinterpret_cast<const uint8_t*>(&blk);
      dw = fp16_at(p + offsetof(BlockQ2_K, d));
      min_term = -fp16_at(p + offsetof(BlockQ2_K, dmin));
      break;
    }
    case DType::Q3_K: {
      const auto& blk = reinterpret_cast<const BlockQ3_K*>(row)[b / 8];
      const int j = s / 4, l = s % 4;
      int32_t half[2] = {0, 0};
      for (int i = 0; i < 32; ++i) {
        const int low2 = (blk.qs[32 * j + i] >> (2 * l)) & 3;
        const int q = (blk.hmask[i] >> s) & 1 ? low2 : low2 - 4;
        half[i / 16] += q * xq.qs[i];
      }
      I = (q3_K_scale(2 * s, blk.scales) - 32) * half[0] + (q3_K_scale(2 * s + 1, blk.scales) - 32) * half[1];
      dw = fp16_at(reinterpret_cast<const uint8_t*>(&blk) + offsetof(BlockQ3_K, d));
      break;
    }
    case DType::Q5_K: {  // sub-block s = 2g + p
      const auto& blk = reinterpret_cast<const BlockQ5_K*>(row)[b / 8];
      const int g = s / 2, p = s % 2;
      for (int i = 0; i < 32; ++i) {
        const int q = ((blk.qs[32 * g + i] >> (4 * p)) & 0xF) | ((blk.qh[i] >> s) & 1) << 4;
        I += q * xq.qs[i];
      }
      uint8_t sc, m;
      q4k_scale_min(s, blk.scales, &sc, &m);
      const uint8_t* bp = reinterpret_cast<const uint8_t*>(&blk);
      dw = fp16_at(bp) * float(sc);
      min_term = -(fp16_at(bp + 2) * float(m));
      break;
    }
    case DType::IQ3_XXS: {  // value i: grid point i / 4, sign bit i % 8 of sign byte i / 8
      const auto& blk = reinterpret_cast<const BlockIQ3_XXS*>(row)[b / 8];
      uint32_t aux;
      std::memcpy(&aux, blk.qs + QK_K / 4 + 4 * s, 4);
      for (int i = 0; i < 32; ++i) {
        const int g = int(iq3xxs_grid[blk.qs[8 * s + i / 4]] >> (8 * (i % 4))) & 0xFF;
        const bool neg = (iq_signs(int((aux >> (7 * (i / 8))) & 127)) >> (i % 8)) & 1;
        I += (neg ? -g : g) * xq.qs[i];
      }
      dw = fp16_at(reinterpret_cast<const uint8_t*>(&blk)) * float(2 * int(aux >> 28) + 1) * 0.25f;
      break;
    }
    case DType::IQ3_S: {
      const auto& blk = reinterpret_cast<const BlockIQ3_S*>(row)[b / 8];
      for (int i = 0; i < 32; ++i) {
        const int gi = blk.qs[8 * s + i / 4] | ((blk.qh[s] >> (i / 4)) & 1) << 8;
        const int g = int(iq3s_grid[gi] >> (8 * (i % 4))) & 0xFF;
        const bool neg = (blk.signs[4 * s + i / 8] >> (i % 8)) & 1;
        I += (neg ? -g : g) * xq.qs[i];
      }
      const int sc = (blk.scales[s / 2] >> (4 * (s % 2))) & 0xF;
      dw = fp16_at(reinterpret_cast<const uint8_t*>(&blk)) * float(2 * sc + 1) * 1.0f;
      break;
    }
    default: break;
  }
}

}  // namespace

void quantize_activations(const float* x, int64_t n_tokens, int64_t K, XBlock* xb) {
  check_cols("ref::quantize_activations", K);
  const int64_t nb = K / 32;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t b = 0; b < nb; ++b) quantize_block(x + t * K + 32 * b, xb + b * n_tokens + t);
}

void matmul_q8(const Matrix& W, const float* x, int64_t n_tokens, float* y) {
  if (!int8_activation_dtype(W.dtype)) fail("ref::matmul_q8", std::string("no int8 path for ") + dtype_name(W.dtype));
  const int64_t K = W.cols, N = W.rows, nb = K / 32;
  std::vector<XBlock> xb(size_t(n_tokens * nb));
  ref::quantize_activations(x, n_tokens, K, xb.data());
  std::vector<uint8_t> buf(W.row_bytes());
  for (int64_t r = 0; r < N; ++r) {
    const uint8_t* row = row_in_rows_layout(W, r, buf.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const XBlock& xq = xb[size_t(b * n_tokens + t)];
        int32_t I = 0, M = 0;  // M: Q2_K's integer min term
        float dw = 0.0f, min_term = 0.0f;
        switch (W.dtype) {
          case DType::Q8_0: {
            const auto& blk = reinterpret_cast<const BlockQ8_0*>(row)[b];
            for (int i = 0; i < 32; ++i) I += int32_t(blk.qs[i]) * xq.qs[i];
            dw = half_at(blk.d);
            break;
          }
          case DType::Q4_0: {
            const auto& blk = reinterpret_cast<const BlockQ4_0*>(row)[b];
            for (int i = 0; i < 32; ++i) {
              const int q = i < 16 ? blk.qs[i] & 0xF : blk.qs[i - 16] >> 4;
              I += (q - 8) * xq.qs[i];
            }
            dw = half_at(blk.d);
            break;
          }
          case DType::Q4_K: {
            const auto& blk = reinterpret_cast<const BlockQ4_K*>(row)[b / 8];
            const int s = int(b % 8), g = s / 2;
            for (int i = 0; i < 32; ++i) {
              const int q = s % 2 == 0 ? blk.qs[32 * g + i] & 0xF : blk.qs[32 * g + i] >> 4;
              I += q * xq.qs[i];
            }
            uint8_t sc, m;
            q4k_scale_min(s, blk.scales, &sc, &m);
            dw = half_at(blk.d) * float(sc);
            min_term = -(half_at(blk.dmin) * float(m));
            break;
          }
          case DType::Q6_K: {
            const auto& blk = reinterpret_cast<const BlockQ6_K*>(row)[b / 8];
            const int s = int(b % 8), h = s / 4, q = s % 4;
            int32_t half_sum[2] = {0, 0};
            for (int i = 0; i < 32; ++i) {
              const int low4 = (blk.ql[64 * h + 32 * (q % 2) + i] >> (4 * (q / 2))) & 0xF;
              const int high2 = (blk.qh[32 * h + i] >> (2 * q)) & 3;
              half_sum[i / 16] += ((low4 | (high2 << 4)) - 32) * xq.qs[i];
            }
            I = blk.scales[2 * s] * half_sum[0] + blk.scales[2 * s + 1] * half_sum[1];
            dw = half_at(blk.d);
            break;
          }
          default:
            if (!iq2_iq1_block(W.dtype, row, b, xq, I, dw)) ref_block(W.dtype, row, b, xq, I, M, dw, min_term);
            break;
        }
        acc = std::fma(float(I), dw * xq.d, acc);
        switch (W.dtype) {
          case DType::Q4_K: case DType::Q5_K: case DType::Q4_1: case DType::Q5_1:
            acc = std::fma(min_term, xq.dsum, acc);
            break;
          case DType::Q2_K: acc = std::fma(float(M), min_term * xq.d, acc); break;
          default: break;
        }
      }
      y[t * N + r] = acc;
    }
  }
}

}  // namespace ref

}  // namespace mixtral