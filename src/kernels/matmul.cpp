// y = x·Wᵀ for weights of any dtype.
//
// Plan (per thread, over its contiguous range of rows):
//   for each tile of kTileRows rows, for each group of up to kTokenGroup tokens:
//     for each chunk of kChunk columns:
//       dequantize the tile's chunk into a per-thread float buffer (F32 weights are used in place)
//       for each block of up to T_MAX tokens, for each block of up to R_MAX rows:
//         micro-kernel: R×T accumulators of 16 lanes in registers, one FMA per (row, token, 16 k)
//     reduce each accumulator's 16 lanes (fixed tree) into y
// The chunk (kTileRows × kChunk floats) and the x block stay in L1/L2 while every token block
// and row block uses them. For one token (decode) this streams the weights once, dequantizing a
// chunk at a time into L1, at close to memory bandwidth.
//
// Accumulators live in memory between chunks (acc[row][token][16]); that is what lets decode
// and prefill share one kernel and one summation order (see matmul.h).
#include "kernels/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/dequant.h"

namespace mixtral {
namespace {

constexpr int kLanes = 16;          // partial sums per output (both ISAs)
constexpr int kTileRows = 16;       // rows dequantized together; the threads' split grain
constexpr int64_t kChunk = 512;     // columns per chunk: a multiple of 256 (Q4_K/Q6_K) and 16
constexpr int64_t kTokenGroup = 64; // tokens whose accumulators are live at once

// acc(r, t) is at acc + r * acc_rs + t * kLanes.
using TileKernel = void (*)(const float* w, int64_t w_stride, const float* x, int64_t x_stride,
                            int64_t n, float* acc, int64_t acc_rs);

constexpr int kMaxR = 4, kMaxT = 6;  // table bounds; each ISA uses up to its own r_max, t_max
struct IsaKernels {
  int r_max, t_max;
  TileKernel k[kMaxR][kMaxT];  // k[R-1][T-1]
};

// The 16 partial sums of one output, added as a fixed tree.
inline float reduce16(const float* v) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

template <template <int, int> class K, int R, int... T>
constexpr void fill_row(IsaKernels& t, std::integer_sequence<int, T...>) {
  ((t.k[R - 1][T] = &K<R, T + 1>::run), ...);
}
template <template <int, int> class K, int RMax, int TMax>
constexpr IsaKernels make_table() {
  IsaKernels t{RMax, TMax, {}};
  [&]<int... R>(std::integer_sequence<int, R...>) {
    (fill_row<K, R + 1>(t, std::make_integer_sequence<int, TMax>{}), ...);
  }(std::make_integer_sequence<int, RMax>{});
  return t;
}

// ================================ AVX-512: one zmm per accumulator ==============================

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12.2 false positive (PR 105593)

template <int R, int T>
struct Avx512Kernel {
  static void run(const float* w, int64_t ws, const float* x, int64_t xs, int64_t n, float* acc,
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
      for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w + r * ws + k);
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
      for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(m, w + r * ws + k);
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

// 4 rows × 6 tokens: 24 accumulators + 4 weight vectors + 1 x vector of the 32 zmm registers.
const IsaKernels kAvx512 = make_table<Avx512Kernel, 4, 6>();

#pragma GCC diagnostic pop
#pragma GCC pop_options

// ================================ AVX2: two ymm (lanes 0-7, 8-15) per accumulator ===============

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")

template <int R, int T>
struct Avx2Kernel {
  static void run(const float* w, int64_t ws, const float* x, int64_t xs, int64_t n, float* acc,
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
        for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * ws + k + 8 * h);
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
        alignas(32) int32_t bits[8];
        for (int i = 0; i < 8; ++i) bits[i] = 8 * h + i < rem ? -1 : 0;
        const __m256i m = _mm256_load_si256(reinterpret_cast<const __m256i*>(bits));
        __m256 wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = _mm256_maskload_ps(w + r * ws + k + 8 * h, m);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256 xv = _mm256_maskload_ps(x + t * xs + k + 8 * h, m);
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

// 2 rows × 3 tokens: 12 accumulators + 2 weight vectors of the 16 ymm registers.
const IsaKernels kAvx2 = make_table<Avx2Kernel, 2, 3>();

#pragma GCC pop_options

const IsaKernels& kernels() { return simd_level() == SimdLevel::AVX512 ? kAvx512 : kAvx2; }

// ================================ driver ========================================================

// A float buffer aligned to 64 bytes that only grows (one per thread: no allocation per call
// once it has reached the largest size used).
class Scratch {
 public:
  float* get(size_t n) {
    if (n > cap_) {
      buf_.reset(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)));
      if (!buf_) throw std::bad_alloc();
      cap_ = n;
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> buf_;
  size_t cap_ = 0;
};

void matmul_rows(const Matrix& W, const float* x, int64_t n_tokens, float* y, int64_t r0,
                 int64_t r1, const IsaKernels& ks, DequantizeFn dequant) {
  thread_local Scratch acc_scratch, w_scratch;
  const int64_t K = W.cols, N = W.rows;
  const int64_t group = std::min(n_tokens, kTokenGroup);
  const int64_t acc_rs = group * kLanes;  // floats per accumulator row
  float* acc = acc_scratch.get(size_t(kTileRows * acc_rs));
  float* wbuf = dequant ? w_scratch.get(size_t(kTileRows * kChunk)) : nullptr;
  const DTypeInfo info = dtype_info(W.dtype);

  for (int64_t rt = r0; rt < r1; rt += kTileRows) {
    const int64_t nr = std::min<int64_t>(kTileRows, r1 - rt);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += group) {
      const int64_t nt = std::min(group, n_tokens - t0);
      std::memset(acc, 0, sizeof(float) * size_t(nr * acc_rs));
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t kc = std::min(kChunk, K - k0);
        const float* wt;
        int64_t ws;
        if (dequant) {  // [nr][kc] floats of the tile's chunk
          const size_t off = size_t(k0 / info.block_size) * info.block_bytes;
          for (int64_t r = 0; r < nr; ++r) dequant(W.row(rt + r) + off, wbuf + r * kChunk, kc);
          wt = wbuf;
          ws = kChunk;
        } else {
          wt = reinterpret_cast<const float*>(W.row(rt)) + k0;
          ws = K;
        }
        for (int64_t tb = 0; tb < nt; tb += ks.t_max) {
          const int64_t ntb = std::min<int64_t>(ks.t_max, nt - tb);
          const float* xb = x + (t0 + tb) * K + k0;
          for (int64_t rb = 0; rb < nr; rb += ks.r_max) {
            const int64_t nrb = std::min<int64_t>(ks.r_max, nr - rb);
            ks.k[nrb - 1][ntb - 1](wt + rb * ws, ws, xb, K, kc, acc + rb * acc_rs + tb * kLanes, acc_rs);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t t = 0; t < nt; ++t)
          y[(t0 + t) * N + rt + r] = reduce16(acc + r * acc_rs + t * kLanes);
    }
  }
}

}  // namespace

void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  const DTypeInfo info = dtype_info(W.dtype);
  if (W.cols % info.block_size != 0)
    fail("matmul", std::string(info.name) + " weights need a multiple of " +
                       std::to_string(info.block_size) + " columns, got " + std::to_string(W.cols));
  if (n_tokens <= 0 || W.rows <= 0) return;
  if (W.cols == 0) {
    for (int64_t i = 0; i < n_tokens * W.rows; ++i) y[i] = 0.0f;
    return;
  }
  const IsaKernels& ks = kernels();
  const DequantizeFn dequant = W.dtype == DType::F32 ? nullptr : dequantize_fn(W.dtype);
  pool.parallel_for(
      W.rows, [&](int64_t r0, int64_t r1) { matmul_rows(W, x, n_tokens, y, r0, r1, ks, dequant); },
      kTileRows);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  alignas(64) float acc[kLanes] = {};
  if (n > 0) kernels().k[0][0](a, 0, b, 0, n, acc, 0);
  return reduce16(acc);
}

namespace ref {

void matmul(const Matrix& W, const float* x, int64_t n_tokens, float* y) {
  const int64_t K = W.cols, N = W.rows;
  std::vector<float> w(size_t(std::max<int64_t>(K, 1)));
  for (int64_t r = 0; r < N; ++r) {
    ref::dequantize_row(W.dtype, W.row(r), w.data(), K);
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
