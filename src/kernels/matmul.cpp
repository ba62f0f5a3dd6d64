// y = x·Wᵀ for weights of any dtype but BF16 (matmul_bf16.cpp: bf16 dot products). Quantized
// weights take the int8-activation path (matmul_q8.h) unless set_int8_activations(false): this
// float path is then their reference for comparisons, not a fast path.
//
// Plan (per thread, over its contiguous range of rows):
//   for each tile of rows, for each group of up to kTokenGroup tokens:
//     for each chunk of columns:
//       dequantize the tile's chunk into a per-thread float buffer
//         (F32 and F16 weights are read in place)
//       for each block of up to T_MAX tokens, for each block of up to R_MAX rows:
//         micro-kernel: R×T accumulators of 16 lanes in registers, one FMA per (row, token, 16 k)
//     reduce each accumulator's 16 lanes (fixed tree) into y
// The chunk and the x block stay in L1 while every token block and row block uses them. The next
// chunk's weights are prefetched: a tile reads each row in short bursts, which the hardware
// prefetchers do not follow, and decode (one token) must stream the weights at memory speed.
//
// Accumulators live in memory between chunks (acc[row][token][16]); that is what lets decode
// and prefill share one summation order (see matmul.h).
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

constexpr int kMaxR = 4, kMaxT = 6;  // table bounds; each ISA uses up to its own r_max, t_max
struct IsaKernels {
  int r_max, t_max;
  TileKernel f32[kMaxR][kMaxT];            // [R-1][T-1]: float weights
  TileKernel f16[kMaxR][kMaxT];            // [R-1][T-1]: F16 weights read in place
};

template <template <int, int, class> class Kernel, class Load, int R, int... T>
void fill_tiles(TileKernel (&tab)[kMaxR][kMaxT], std::integer_sequence<int, T...>) {
  ((tab[R - 1][T] = &Kernel<R, T + 1, Load>::run), ...);
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
  IsaKernels t{4, 6, {}, {}};
  const auto tokens = std::make_integer_sequence<int, 6>{};
  fill_tiles<Avx512Kernel, Load512F32, 1>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 2>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 3>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F32, 4>(t.f32, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 1>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 2>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 3>(t.f16, tokens);
  fill_tiles<Avx512Kernel, Load512F16, 4>(t.f16, tokens);
  return t;
}
const IsaKernels kAvx512 = make_avx512_table();

// 2 rows × 3 tokens: 12 accumulators + 2 weight vectors of the 16 ymm registers.
IsaKernels make_avx2_table() {
  IsaKernels t{2, 3, {}, {}};
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
            plan.tiles[nrb - 1][ntb - 1](wt + rb * ws, ws, xb, K, kc, acc + rb * acc_rs + tb * kLanes, acc_rs);
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
  Plan plan{&ks, nullptr, ks.f32, n_tokens <= kFewTokens ? kChunkFew : kChunkMany};
  // F32 and F16 are always read in place (one F16C conversion per weight vector and token
  // block: 2-16 tokens run 1.6-1.9x faster than through a float tile, prefill as fast).
  // Quantized dtypes come here only with int8 activations off (a reference for comparisons):
  // their tiles are dequantized, once for all the tokens.
  if (W.dtype == DType::F16) plan.tiles = ks.f16;
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
