// y = x·Wᵀ for weights of any dtype but BF16 (matmul_bf16.cpp: bf16 dot products).
//
// Plan (per thread, over its contiguous range of rows):
//   for each tile of rows, for each group of up to kTokenGroup tokens:
//     for each chunk of columns:
//       dequantize the tile's chunk into a per-thread float buffer
//         (F32 and F16 weights are read in place; so is every quantized dtype for a single
//         token with AVX-512)
//       for each block of up to T_MAX tokens, for each block of up to R_MAX rows:
//         micro-kernel: R×T accumulators of 16 lanes in registers, one FMA per (row, token, 16 k)
//     reduce each accumulator's 16 lanes (fixed tree) into y
// The chunk and the x block stay in L1 while every token block and row block uses them. The next
// chunk's weights are prefetched: a tile reads each row in short bursts, which the hardware
// prefetchers do not follow, and decode (one token) must stream the weights at memory speed.
//
// Accumulators live in memory between chunks (acc[row][token][16]); that is what lets decode
// and prefill share one summation order (see matmul.h). The single-token kernels that read
// quantized blocks in place decode each value exactly as dequantize_row does (tests check both
// give the same bits), so their results equal the tile path's too.
//
// No fused multiply-add contraction in this file: a Q4_K value is (d*sc)*q - dmin*m rounded
// twice, as in dequant.cpp; the FMAs of the dot products are explicit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/dequant.h"
#include "kernels/kernel_util.h"
#include "kernels/matmul_bf16.h"
#include "kernels/matmul_q8.h"
#include "kernels/weight_tiles.h"
#include "quant/blocks.h"

namespace mixtral {
namespace {

using namespace kernel_util;  // kLanes, reduce16, Scratch, prefetch

// Rows per tile: kTileRows (16, core/tensor.h); threads get multiples of this many rows, so a
// tile of a Tiles16 matrix is one of its groups.
// Columns per chunk: multiples of 256 (Q4_K/Q6_K blocks) and 16. For a few tokens a tile is
// used once, and a short chunk keeps it in L1; many tokens reuse it, and longer runs pay off.
constexpr int64_t kFewTokens = 8;
constexpr int64_t kChunkFew = 256, kChunkMany = 512;
constexpr int64_t kTokenGroup = 64;  // tokens whose accumulators are live at once

// Micro-kernel: acc(r, t) += W[r][0..n) · x[t][0..n) lane-wise, for r < R, t < T.
// w: the first weight of row 0 (floats, or the dtype's own encoding for the in-place kernels);
// w_stride: bytes from one row to the next; x_stride in floats; acc(r, t) is at
// acc + r * acc_rs + t * kLanes.
using TileKernel = void (*)(const uint8_t* w, int64_t w_stride, const float* x, int64_t x_stride,
                            int64_t n, float* acc, int64_t acc_rs);

// Quantized encodings a single-token kernel can read in place.
enum InPlace { kQ8_0, kQ4_0, kQ4_K, kQ6_K, kNumInPlace };
inline int in_place_index(DType t) {
  switch (t) {
    case DType::Q8_0: return kQ8_0;
    case DType::Q4_0: return kQ4_0;
    case DType::Q4_K: return kQ4_K;
    case DType::Q6_K: return kQ6_K;
    case DType::F32:
    case DType::F16:
    case DType::BF16: break;
    default: break;
  }
  return -1;
}

constexpr int kMaxR = 4, kMaxT = 6;  // table bounds; each ISA uses up to its own r_max, t_max
struct IsaKernels {
  int r_max, t_max;
  TileKernel f32[kMaxR][kMaxT];            // [R-1][T-1]: float weights
  TileKernel f16[kMaxR][kMaxT];            // [R-1][T-1]: F16 weights read in place
  TileKernel one_token[kNumInPlace][kMaxR];  // [encoding][R-1]: T = 1, in place; null if none
};

template <template <int, int, class> class Kernel, class Load, int R, int... T>
void fill_tiles(TileKernel (&tab)[kMaxR][kMaxT], std::integer_sequence<int, T...>) {
  ((tab[R - 1][T] = &Kernel<R, T + 1, Load>::run), ...);
}
template <template <int> class Kernel, int... R>
void fill_one_token(TileKernel* row, std::integer_sequence<int, R...>) {
  ((row[R] = &Kernel<R + 1>::run), ...);
}

// ================================ AVX-512: one zmm per accumulator ==============================

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12.2 false positive (PR 105593)

// Weight loads for the float-like encodings: 16 values from element i of a row; masked: the
// first lanes of m, the rest 0.
struct Load512F32 {
  static const float* at(const uint8_t* p, int64_t i) { return reinterpret_cast<const float*>(p) + i; }
  static __m512 load(const uint8_t* p, int64_t i) { return _mm512_loadu_ps(at(p, i)); }
  static __m512 load(const uint8_t* p, int64_t i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, at(p, i)); }
};
struct Load512F16 {
  static const uint16_t* at(const uint8_t* p, int64_t i) { return reinterpret_cast<const uint16_t*>(p) + i; }
  static __m512 load(const uint8_t* p, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at(p, i))));
  }
  static __m512 load(const uint8_t* p, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, at(p, i)));
  }
};

template <int R, int T, class L>
struct Avx512Kernel {
  static void run(const uint8_t* w, int64_t ws, const float* x, int64_t xs, int64_t n, float* acc,
                  int64_t acc_rs) {
    __m512 a[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_loadu_ps(acc + r * acc_rs + t * kLanes);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
      __m512 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * ws, k);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_loadu_ps(x + t * xs + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) a[r][t] = _mm512_fmadd_ps(wv[r], xv, a[r][t]);
      }
    }
    if (k < n) {  // n % 16 columns left (F32/F16/BF16 rows only): zero-filled lanes add 0*0
      const __mmask16 m = __mmask16((1u << (n - k)) - 1);
      __m512 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * ws, k, m);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * xs + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) a[r][t] = _mm512_fmadd_ps(wv[r], xv, a[r][t]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc + r * acc_rs + t * kLanes, a[r][t]);
  }
};

// Block decoders for the single-token kernels: decode(row, k, emit) computes the kStep values
// from column k of a row (k a multiple of kStep; row block-aligned) exactly as dequant.cpp's
// AVX-512 dequantizers do, and calls emit(j, v) for j = 0, 1, ... in increasing column order.
inline float half512(const uint16_t& h) {
  uint16_t v;
  std::memcpy(&v, &h, 2);
  return _cvtsh_ss(v);
}
inline __m512i u8x16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

struct DecodeQ8_0 {
  static constexpr int kStep = QK8_0;
  template <class Emit>
  static void decode(const uint8_t* row, int64_t k, Emit&& emit) {
    const BlockQ8_0& b = reinterpret_cast<const BlockQ8_0*>(row)[k / QK8_0];
    const __m512 d = _mm512_set1_ps(half512(b.d));
    for (int j = 0; j < 2; ++j)
      emit(j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * j)))),
                            d));
  }
};

struct DecodeQ4_0 {  // table[i] = float(i - 8) * d, indexed by the nibbles (vpermps)
  static constexpr int kStep = QK4_0;
  template <class Emit>
  static void decode(const uint8_t* row, int64_t k, Emit&& emit) {
    const BlockQ4_0& b = reinterpret_cast<const BlockQ4_0*>(row)[k / QK4_0];
    const __m512 values = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m512 table = _mm512_mul_ps(values, _mm512_set1_ps(half512(b.d)));
    const __m512i q = u8x16(b.qs);
    emit(0, _mm512_permutexvar_ps(q, table));
    emit(1, _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table));
  }
};

struct DecodeQ4_K {  // a super-block: groups of 64 = sub-blocks 2g (low nibbles), 2g+1 (high)
  static constexpr int kStep = QK_K;
  template <class Emit>
  static void decode(const uint8_t* row, int64_t k, Emit&& emit) {
    const BlockQ4_K& b = reinterpret_cast<const BlockQ4_K*>(row)[k / QK_K];
    const float d = half512(b.d), dmin = half512(b.dmin);
    const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      uint8_t sc, m;
      q4k_scale_min(2 * g, b.scales, &sc, &m);
      const __m512 t1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), values), _mm512_set1_ps(dmin * m));
      q4k_scale_min(2 * g + 1, b.scales, &sc, &m);
      const __m512 t2 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), values), _mm512_set1_ps(dmin * m));
      const __m512i v0 = u8x16(b.qs + 32 * g), v1 = u8x16(b.qs + 32 * g + 16);
      emit(4 * g + 0, _mm512_permutexvar_ps(v0, t1));
      emit(4 * g + 1, _mm512_permutexvar_ps(v1, t1));
      emit(4 * g + 2, _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), t2));
      emit(4 * g + 3, _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), t2));
    }
  }
};

struct DecodeQ6_K {  // one half of 128 (layout in quant/blocks.h)
  static constexpr int kStep = 128;
  template <class Emit>
  static void decode(const uint8_t* row, int64_t k, Emit&& emit) {
    const BlockQ6_K& b = reinterpret_cast<const BlockQ6_K*>(row)[k / QK_K];
    const int h = int(k % QK_K) / 128;
    const uint8_t* ql = b.ql + 64 * h;
    const uint8_t* qh = b.qh + 32 * h;
    const int8_t* sc = b.scales + 8 * h;
    const float d = half512(b.d);
    const __m512i m4 = _mm512_set1_epi32(0xF), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
    const __m512i lo[2] = {u8x16(ql), u8x16(ql + 16)}, hi[2] = {u8x16(ql + 32), u8x16(ql + 48)};
    const __m512i hb[2] = {u8x16(qh), u8x16(qh + 16)};
    for (int quarter = 0; quarter < 4; ++quarter) {
      for (int is = 0; is < 2; ++is) {
        const __m512i low4 = quarter == 0 ? _mm512_and_si512(lo[is], m4)
                             : quarter == 1 ? _mm512_and_si512(hi[is], m4)
                             : quarter == 2 ? _mm512_srli_epi32(lo[is], 4)
                                            : _mm512_srli_epi32(hi[is], 4);
        const __m512i high2 = _mm512_and_si512(_mm512_srli_epi32(hb[is], 2 * quarter), m2);
        const __m512i q = _mm512_sub_epi32(_mm512_or_si512(low4, _mm512_slli_epi32(high2, 4)), k32);
        emit(2 * quarter + is, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2 * quarter]), _mm512_cvtepi32_ps(q)));
      }
    }
  }
};

// One token, R rows read in place through a block decoder: per step, each row's kStep values
// go straight from the blocks into its accumulator, 16 columns per FMA in increasing order.
template <int R, class D>
struct Avx512BlockKernel {
  static void run(const uint8_t* w, int64_t ws, const float* x, int64_t, int64_t n, float* acc,
                  int64_t acc_rs) {
    __m512 a[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) a[r] = _mm512_loadu_ps(acc + r * acc_rs);
    for (int64_t k = 0; k < n; k += D::kStep) {
      const float* xk = x + k;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        D::decode(w + r * ws, k, [&](int j, __m512 v) { a[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xk + 16 * j), a[r]); });
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + r * acc_rs, a[r]);
  }
};

template <int R> using K512Q8_0 = Avx512BlockKernel<R, DecodeQ8_0>;
template <int R> using K512Q4_0 = Avx512BlockKernel<R, DecodeQ4_0>;
template <int R> using K512Q4_K = Avx512BlockKernel<R, DecodeQ4_K>;
template <int R> using K512Q6_K = Avx512BlockKernel<R, DecodeQ6_K>;

#pragma GCC diagnostic pop
#pragma GCC pop_options

// ================================ AVX2: two ymm (lanes 0-7, 8-15) per accumulator ===============

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")

// Weight loads: 8 values from element i of a row; masked: the first m (0..8) lanes, the rest 0.
inline __m256i first_lanes(int m) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
template <class Widen>
__m256 load_u16_partial(const uint16_t* p, int m) {  // AVX2 has no 16-bit masked load
  alignas(16) uint16_t tmp[8] = {};
  for (int i = 0; i < m; ++i) tmp[i] = p[i];
  return Widen::widen(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}
struct Load256F32 {
  static const float* at(const uint8_t* p, int64_t i) { return reinterpret_cast<const float*>(p) + i; }
  static __m256 load(const uint8_t* p, int64_t i) { return _mm256_loadu_ps(at(p, i)); }
  static __m256 load(const uint8_t* p, int64_t i, int m) { return _mm256_maskload_ps(at(p, i), first_lanes(m)); }
};
struct Load256F16 {
  static const uint16_t* at(const uint8_t* p, int64_t i) { return reinterpret_cast<const uint16_t*>(p) + i; }
  static __m256 widen(__m128i h) { return _mm256_cvtph_ps(h); }
  static __m256 load(const uint8_t* p, int64_t i) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at(p, i))));
  }
  static __m256 load(const uint8_t* p, int64_t i, int m) { return load_u16_partial<Load256F16>(at(p, i), m); }
};

template <int R, int T, class L>
struct Avx2Kernel {
  static void run(const uint8_t* w, int64_t ws, const float* x, int64_t xs, int64_t n, float* acc,
                  int64_t acc_rs) {
    __m256 a[R][T][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) a[r][t][h] = _mm256_loadu_ps(acc + r * acc_rs + t * kLanes + 8 * h);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256 wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * ws, k + 8 * h);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256 xv = _mm256_loadu_ps(x + t * xs + k + 8 * h);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) a[r][t][h] = _mm256_fmadd_ps(wv[r], xv, a[r][t][h]);
        }
      }
    }
    if (k < n) {
      const int rem = int(n - k);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const int m = std::clamp(rem - 8 * h, 0, 8);
        __m256 wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * ws, k + 8 * h, m);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256 xv = _mm256_maskload_ps(x + t * xs + k + 8 * h, first_lanes(m));
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) a[r][t][h] = _mm256_fmadd_ps(wv[r], xv, a[r][t][h]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) _mm256_storeu_ps(acc + r * acc_rs + t * kLanes + 8 * h, a[r][t][h]);
  }
};


#pragma GCC pop_options

// ================================ kernel tables =================================================
// Built outside the target regions above: they run at start-up on every CPU, so they must not
// contain AVX-512 instructions themselves.

// 4 rows × 6 tokens: 24 accumulators + 4 weight vectors + 1 x vector of the 32 zmm registers.
IsaKernels make_avx512_table() {
  IsaKernels t{4, 6, {}, {}, {}};
  const auto tokens = std::make_integer_sequence<int, 6>{};
  fill_tiles<Avx512Kernel, Load512F32, 1>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 2>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 3>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 4>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 1>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 2>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 3>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 4>(t.f16, tokens);
  const auto rows = std::make_integer_sequence<int, 4>{};
  fill_one_token<K512Q8_0>(t.one_token[kQ8_0], rows);
  fill_one_token<K512Q4_0>(t.one_token[kQ4_0], rows);
  fill_one_token<K512Q4_K>(t.one_token[kQ4_K], rows);
  fill_one_token<K512Q6_K>(t.one_token[kQ6_K], rows);
  return t;
}
const IsaKernels kAvx512 = make_avx512_table();

// 2 rows × 3 tokens: 12 accumulators + 2 weight vectors of the 16 ymm registers. Quantized
// weights always go through a dequantized tile here.
IsaKernels make_avx2_table() {
  IsaKernels t{2, 3, {}, {}, {}};
  const auto tokens = std::make_integer_sequence<int, 3>{};
  fill_tiles<Avx2Kernel, Load256F32, 1>(t.f32, tokens);
  fill_tiles<Avx2Kernel, Load256F32, 2>(t.f32, tokens);
  fill_tiles<Avx2Kernel, Load256F16, 1>(t.f16, tokens);
  fill_tiles<Avx2Kernel, Load256F16, 2>(t.f16, tokens);
  return t;
}
const IsaKernels kAvx2 = make_avx2_table();

const IsaKernels& kernels() { return simd_level() >= SimdLevel::AVX512 ? kAvx512 : kAvx2; }

// ================================ driver ========================================================

// How one matmul call reads its weights.
struct Plan {
  const IsaKernels* ks;
  DequantizeFn dequant;        // set: dequantize tiles into a float buffer; null: read in place
  const TileKernel (*tiles)[kMaxT];  // [R-1][T-1]: f32 (F32 or dequantized tiles) or f16 in place
  const TileKernel* in_place;  // single-token kernels by R-1 for a non-F32 dtype read in place
  int64_t chunk;               // columns per chunk
};

void matmul_rows(const Matrix& W, const float* x, int64_t n_tokens, float* y, int64_t r0,
                 int64_t r1, const Plan& plan) {
  thread_local Scratch<float> acc_scratch, w_scratch;
  thread_local Scratch<uint8_t> untiled_scratch;
  const IsaKernels& ks = *plan.ks;
  const int64_t K = W.cols, N = W.rows, chunk = plan.chunk;
  const int64_t group = std::min(n_tokens, kTokenGroup);
  const int64_t acc_rs = group * kLanes;  // floats per accumulator row
  float* acc = acc_scratch.get(size_t(kTileRows * acc_rs));
  float* wbuf = plan.dequant ? w_scratch.get(size_t(kTileRows * chunk)) : nullptr;
  const DTypeInfo info = dtype_info(W.dtype);
  auto byte_offset = [&](int64_t col) { return size_t(col / info.block_size) * info.block_bytes; };
  // Tiled weights (weight_tiles.h; quantized dtypes only) are read from a copy of each tile's
  // rows in Rows layout: this path is for comparisons (int8 activations off), not for speed.
  const bool tiled = W.layout != Layout::Rows;
  const size_t rb = W.row_bytes();
  uint8_t* untiled = tiled ? untiled_scratch.get(size_t(kTileRows) * rb) : nullptr;

  for (int64_t rt = r0; rt < r1; rt += kTileRows) {
    const int64_t nr = std::min(kTileRows, r1 - rt);
    const uint8_t* rows = W.row(rt);  // the tile's nr rows in Rows layout, rb bytes apart
    if (tiled) {
      for (int64_t r = 0; r < nr; ++r) copy_row(W, rt + r, untiled + size_t(r) * rb);
      rows = untiled;
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += group) {
      const int64_t nt = std::min(group, n_tokens - t0);
      std::memset(acc, 0, sizeof(float) * size_t(nr * acc_rs));
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t kc = std::min(chunk, K - k0);
        if (!tiled) {  // prefetch the next chunk of this tile, or the first of the next tile
          const bool last = k0 + chunk >= K;
          const int64_t pr0 = last ? rt + kTileRows : rt, pk = last ? 0 : k0 + chunk;
          const int64_t pr1 = std::min(pr0 + kTileRows, r1);
          const size_t poff = byte_offset(pk), pbytes = byte_offset(std::min(chunk, K - pk));
          for (int64_t r = pr0; r < pr1; ++r) prefetch(W.row(r) + poff, pbytes);
        }
        const uint8_t* wt;  // the tile's chunk: nr rows of kc weights, ws bytes apart
        int64_t ws;
        if (plan.dequant) {
          for (int64_t r = 0; r < nr; ++r)
            plan.dequant(rows + size_t(r) * rb + byte_offset(k0), wbuf + r * chunk, kc);
          wt = reinterpret_cast<const uint8_t*>(wbuf);
          ws = chunk * int64_t(sizeof(float));
        } else {
          wt = rows + byte_offset(k0);
          ws = int64_t(rb);
        }
        for (int64_t tb = 0; tb < nt; tb += ks.t_max) {
          const int64_t ntb = std::min<int64_t>(ks.t_max, nt - tb);
          const float* xb = x + (t0 + tb) * K + k0;
          for (int64_t rb = 0; rb < nr; rb += ks.r_max) {
            const int64_t nrb = std::min<int64_t>(ks.r_max, nr - rb);
            const TileKernel kern = plan.in_place ? plan.in_place[nrb - 1] : plan.tiles[nrb - 1][ntb - 1];
            kern(wt + rb * ws, ws, xb, K, kc, acc + rb * acc_rs + tb * kLanes, acc_rs);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t t = 0; t < nt; ++t)
          y[(t0 + t) * N + rt + r] = reduce16(acc + r * acc_rs + t * kLanes);
    }
  }
}

std::atomic<bool> g_int8_activations{true};

}  // namespace

void set_int8_activations(bool on) { g_int8_activations.store(on, std::memory_order_relaxed); }
bool int8_activations() { return g_int8_activations.load(std::memory_order_relaxed); }

void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  if (int8_activations() && int8_activation_dtype(W.dtype)) return matmul_q8(W, x, n_tokens, y, pool);
  if (W.layout != Layout::Rows && !tileable(W.dtype))  // BF16 (matmul_bf16) and F32/F16 read rows
    fail("matmul", "only quantized weights have a tiled layout");
  const DTypeInfo info = dtype_info(W.dtype);
  if (W.cols % info.block_size != 0)
    fail("matmul", std::string(info.name) + " weights need a multiple of " +
                       std::to_string(info.block_size) + " columns, got " + std::to_string(W.cols));
  if (n_tokens <= 0 || W.rows <= 0) return;
  if (W.cols == 0) {
    for (int64_t i = 0; i < n_tokens * W.rows; ++i) y[i] = 0.0f;
    return;
  }
  if (W.dtype == DType::BF16) return matmul_bf16(W, x, n_tokens, y, pool);  // bf16 dot products
  const IsaKernels& ks = kernels();
  Plan plan{&ks, nullptr, ks.f32, nullptr, n_tokens <= kFewTokens ? kChunkFew : kChunkMany};
  // F32 and F16 are always read in place (one F16C conversion per weight vector and token
  // block: 2-16 tokens run 1.6-1.9x faster than through a float tile, prefill as fast).
  // Quantized dtypes are for a single token when this ISA has a kernel for them (nothing is
  // reused across tokens then); otherwise tiles are dequantized, once for all the tokens.
  const int enc = in_place_index(W.dtype);
  if (W.dtype == DType::F16) plan.tiles = ks.f16;
  else if (enc >= 0 && n_tokens == 1 && ks.one_token[enc][0]) plan.in_place = ks.one_token[enc];
  else if (W.dtype != DType::F32) plan.dequant = dequantize_fn(W.dtype);
  pool.parallel_for(
      W.rows, [&](int64_t r0, int64_t r1) { matmul_rows(W, x, n_tokens, y, r0, r1, plan); },
      kTileRows);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  alignas(64) float acc[kLanes] = {};
  if (n > 0) kernels().f32[0][0](reinterpret_cast<const uint8_t*>(a), 0, b, 0, n, acc, 0);
  return reduce16(acc);
}

namespace ref {

void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y) {
  const int64_t K = W.cols, N = W.rows;
  std::vector<float> w(size_t(std::max<int64_t>(K, 1)));
  std::vector<uint8_t> row(W.row_bytes());
  for (int64_t r = 0; r < N; ++r) {
    ref::dequantize_row(W.dtype, row_in_rows_layout(W, r, row.data()), w.data(), K);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * K;
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += w[size_t(k)] * xt[k];
      y[t * N + r] = s;
    }
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace ref

}  // namespace mixtral
