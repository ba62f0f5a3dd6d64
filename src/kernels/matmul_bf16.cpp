// y = x·Wᵀ for BF16 weights through bf16 dot products (the order is in matmul_bf16.h).
//
// Plan:
//   round x to bf16 once, chunk-major (a block of tokens' chunk is one contiguous run)
//   per thread, over its contiguous range of rows:
//     for each tile of 16 rows, for each group of up to kTokenGroup tokens:
//       for each chunk of 1024 columns (weights read in place: no dequantized copy)
//         for each block of up to t_max tokens, for each block of up to r_max rows:
//           micro-kernel: R×T accumulators of 16 lanes in registers; per 32 columns one
//           vdpbf16ps per (row, token), or two FMAs where the CPU lacks AVX512_BF16; each
//           row's weights prefetched 1 KB ahead
//       reduce each accumulator's 16 lanes (kernel_util::reduce16) into y
//   decode (up to kDecodeMaxTokens tokens): per block of 1 or r_max rows, the whole row through
//   the same micro-kernels chunk after chunk, the next block prefetched in step (dot_rows_decode)
// Up to kTokenGroup tokens, every weight is read from memory once per call, so a serving step
// of a few tokens costs little more than one token; the tile's chunk stays in cache while every
// token block uses it. vdpbf16ps does 32 multiply-adds per instruction, twice the fp32 FMA's
// 16, and reads the bf16 weights as they are stored.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/matmul_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/fp16.h"
#include "kernels/dequant.h"
#include "kernels/kernel_util.h"

namespace mixtral {
namespace {

using namespace kernel_util;  // kLanes, reduce16, Scratch, prefetch_l1

constexpr int64_t kStep = 32;        // columns per dot-product step (16 lanes × 2)
// Rows per tile: kTileRows (16, core/tensor.h); threads get multiples of this many rows.
constexpr int64_t kChunk = 1024;     // columns per chunk: 16 rows × 2 KB of weights
// Each row's weights are prefetched this many bytes ahead while a kernel reads them: a tile
// reads each row in 2 KB bursts, which the hardware prefetchers follow too late. (1 KB measured
// best, against 0.5-8 KB and against prefetching the whole next chunk of the tile at once.)
constexpr int64_t kPrefetchBytes = 1024;
constexpr int64_t kTokenGroup = 64;  // tokens whose accumulators are live at once
constexpr int64_t kDecodeMaxTokens = 4;  // dot_rows_decode up to this many tokens

// Decode: how many bytes of bf16 activations (all tokens) may stay in L1 beside the streamed
// weights for one row per block (see dot_rows_decode).
constexpr int64_t kDecodeL1Bytes = 16 * 1024;

// Micro-kernel: acc(r, t) += W[r][0..n) · x[t][0..n) in the order of matmul_bf16.h, for r < R,
// t < T. w: the chunk's first weight of row 0, w_stride bytes from row to row; x: bf16 rows
// x_stride elements apart, readable (zero) up to n rounded up to 32; acc(r, t) is at
// acc + r * acc_rs + t * kLanes. pf (decode; null: none): step i also prefetches the R·64
// bytes from pf + i·R·64 (the next block of rows, one contiguous run, in step with this one).
using DotKernel = void (*)(const uint8_t* w, int64_t w_stride, const uint16_t* x, int64_t x_stride,
                           int64_t n, float* acc, int64_t acc_rs, const uint8_t* pf);

constexpr int kMaxR = 4, kMaxT = 6;
struct DotKernels {
  int r_max, t_max;
  DotKernel k[kMaxR][kMaxT];  // [R-1][T-1]
};

template <template <int, int> class Kernel, int R, int... T>
void fill_row(DotKernels& tab, std::integer_sequence<int, T...>) {
  ((tab.k[R - 1][T] = &Kernel<R, T + 1>::run), ...);
}
template <template <int, int> class Kernel, int... R>
DotKernels make_table(int t_max, std::integer_sequence<int, R...>) {
  DotKernels tab{int(sizeof...(R)), t_max, {}};
  (fill_row<Kernel, R + 1>(tab, std::make_integer_sequence<int, kMaxT>{}), ...);
  return tab;
}

// MXCSR with DAZ and FTZ (subnormal inputs and results count as zero), as vdpbf16ps always
// behaves, while an emulating kernel runs. The "memory" clobbers keep the kernel's loads and
// stores (hence all its arithmetic) between the two writes.
class FlushSubnormals {
 public:
  FlushSubnormals() {
    asm volatile("stmxcsr %0" : "=m"(saved_) : : "memory");
    const unsigned flush = saved_ | 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
    asm volatile("ldmxcsr %0" : : "m"(flush) : "memory");
  }
  ~FlushSubnormals() { asm volatile("ldmxcsr %0" : : "m"(saved_) : "memory"); }

 private:
  unsigned saved_;
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12.2 false positive (PR 105593)

// 32 bf16 weights from element k of a row; masked: the first m, the rest 0.
inline __m512i load_w(const uint8_t* row, int64_t k) {
  return _mm512_loadu_si512(reinterpret_cast<const uint16_t*>(row) + k);
}
inline __m512i load_w(const uint8_t* row, int64_t k, int64_t m) {
  return _mm512_maskz_loadu_epi16(__mmask32((1ull << m) - 1), reinterpret_cast<const uint16_t*>(row) + k);
}

// AVX512_BF16: one vdpbf16ps per (row, token) and 32 columns.
template <int R, int T>
struct DotBf16 {
  static void run(const uint8_t* w, int64_t ws, const uint16_t* x, int64_t xs, int64_t n, float* acc,
                  int64_t acc_rs, const uint8_t* pf) {
    __m512 a[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_loadu_ps(acc + r * acc_rs + t * kLanes);
    auto step = [&](const __m512i (&wv)[R], int64_t k) {
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + t * xs + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) a[r][t] = _mm512_dpbf16_ps(a[r][t], (__m512bh)wv[r], xv);
      }
    };
    int64_t k = 0;
    for (; k + kStep <= n; k += kStep) {
      __m512i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w + r * ws + 2 * k + kPrefetchBytes), _MM_HINT_T0);
        if (pf) prefetch_l1(pf + R * 2 * k + r * 64);
        wv[r] = load_w(w + r * ws, k);
      }
      step(wv, k);
    }
    if (k < n) {  // the row's last n % 32 columns; x is zero past them
      __m512i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = load_w(w + r * ws, k, n - k);
      step(wv, k);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc + r * acc_rs + t * kLanes, a[r][t]);
  }
};

#pragma GCC diagnostic pop
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// AVX-512 without BF16: the same sums with two FMAs per (row, token) and 32 columns. Lane l of
// a 32-bit pair holds element 2l in its low half and 2l+1 in its high half; as floats, the high
// half is the pair with the low 16 bits cleared, the low half is the pair shifted left by 16.
inline __m512 odd512(__m512i v) { return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u)))); }
inline __m512 even512(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }

template <int R, int T>
struct Emu512 {
  static void run(const uint8_t* w, int64_t ws, const uint16_t* x, int64_t xs, int64_t n, float* acc,
                  int64_t acc_rs, const uint8_t* pf) {
    FlushSubnormals flush;
    __m512 a[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_loadu_ps(acc + r * acc_rs + t * kLanes);
    auto step = [&](const __m512i (&wv)[R], int64_t k) {
      __m512 wo[R], we[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wo[r] = odd512(wv[r]), we[r] = even512(wv[r]);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512i xv = _mm512_loadu_si512(x + t * xs + k);
        const __m512 xo = odd512(xv), xe = even512(xv);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) a[r][t] = _mm512_fmadd_ps(we[r], xe, _mm512_fmadd_ps(wo[r], xo, a[r][t]));
      }
    };
    int64_t k = 0;
    for (; k + kStep <= n; k += kStep) {
      __m512i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        if (pf) prefetch_l1(pf + R * 2 * k + r * 64);
        wv[r] = load_w(w + r * ws, k);
      }
      step(wv, k);
    }
    if (k < n) {
      __m512i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = load_w(w + r * ws, k, n - k);
      step(wv, k);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(acc + r * acc_rs + t * kLanes, a[r][t]);
  }
};

#pragma GCC diagnostic pop
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// AVX2: lanes 0-7 of an accumulator take columns 0-15 of every 32, lanes 8-15 columns 16-31;
// the two halves never meet, so each is one pass over the chunk with T×R ymm accumulators.
inline __m256 odd256(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u)))); }
inline __m256 even256(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }

template <int R, int T>
struct Emu256 {
  static void run(const uint8_t* w, int64_t ws, const uint16_t* x, int64_t xs, int64_t n, float* acc,
                  int64_t acc_rs, const uint8_t* pf) {
    FlushSubnormals flush;
    for (int h = 0; h < 2; ++h) {  // h: which 16 of every 32 columns, and which 8 lanes
      __m256 a[R][T];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a[r][t] = _mm256_loadu_ps(acc + r * acc_rs + t * kLanes + 8 * h);
      auto step = [&](const __m256i (&wv)[R], int64_t k) {
        __m256 wo[R], we[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wo[r] = odd256(wv[r]), we[r] = even256(wv[r]);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + t * xs + k));
          const __m256 xo = odd256(xv), xe = even256(xv);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) a[r][t] = _mm256_fmadd_ps(we[r], xe, _mm256_fmadd_ps(wo[r], xo, a[r][t]));
        }
      };
      int64_t k = 16 * h;
      for (; k + 16 <= n; k += kStep) {
        __m256i wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          if (pf && h == 0) prefetch_l1(pf + R * 2 * k + r * 64);  // 64 bytes: both halves' 32 columns
          wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(w + r * ws) + k));
        }
        step(wv, k);
      }
      if (k < n) {  // fewer than 16 columns left (AVX2 has no 16-bit masked load)
        __m256i wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          alignas(32) uint16_t tmp[16] = {};
          std::memcpy(tmp, reinterpret_cast<const uint16_t*>(w + r * ws) + k, size_t(n - k) * 2);
          wv[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
        }
        step(wv, k);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) _mm256_storeu_ps(acc + r * acc_rs + t * kLanes + 8 * h, a[r][t]);
    }
  }
};

#pragma GCC pop_options

// Built outside the target regions: these run at start-up on every CPU.
// BF16: 4 rows × 6 tokens = 24 accumulators + 4 weight vectors + 1 x vector of 32 zmm.
// Emulated AVX-512: 4 × 5 (20 + 8 split weights + 2 split x). AVX2: 2 × 4 of 16 ymm.
const DotKernels kBf16 = make_table<DotBf16>(6, std::make_integer_sequence<int, 4>{});
const DotKernels kEmu512 = make_table<Emu512>(5, std::make_integer_sequence<int, 4>{});
const DotKernels kEmu256 = make_table<Emu256>(4, std::make_integer_sequence<int, 2>{});

const DotKernels& dot_kernels() {
  switch (simd_level()) {
    case SimdLevel::AVX512_BF16: return kBf16;
    case SimdLevel::AVX512: return kEmu512;
    case SimdLevel::AVX2: break;
  }
  return kEmu256;
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// x rounded to bf16, chunk-major: chunk c of token t (kChunk values, zero past K) at
// data + (c * n_tokens + t) * kChunk, so a block of tokens' chunk is contiguous.
void round_to_bf16(const float* x, int64_t K, int64_t n_tokens, int64_t t, uint16_t* xb) {
  for (int64_t k0 = 0, c = 0; k0 < K; k0 += kChunk, ++c) {
    uint16_t* out = xb + (c * n_tokens + t) * kChunk;
    const int64_t kc = std::min(kChunk, K - k0);
    for (int64_t k = 0; k < kc; ++k) out[k] = f32_to_bf16(x[t * K + k0 + k]);
    for (int64_t k = kc; k < kChunk; ++k) out[k] = 0;
  }
}

void dot_rows(const Matrix& W, const uint16_t* xb, int64_t n_tokens, float* y, int64_t r0, int64_t r1,
              const DotKernels& ks) {
  thread_local Scratch<float> acc_scratch;
  const int64_t K = W.cols, N = W.rows, ws = int64_t(W.row_bytes());
  const int64_t group = std::min(n_tokens, kTokenGroup);
  const int64_t acc_rs = group * kLanes;  // floats per accumulator row
  float* acc = acc_scratch.get(size_t(kTileRows * acc_rs));

  for (int64_t rt = r0; rt < r1; rt += kTileRows) {
    const int64_t nr = std::min(kTileRows, r1 - rt);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += group) {
      const int64_t nt = std::min(group, n_tokens - t0);
      std::memset(acc, 0, sizeof(float) * size_t(nr * acc_rs));
      for (int64_t k0 = 0, c = 0; k0 < K; k0 += kChunk, ++c) {
        const int64_t kc = std::min(kChunk, K - k0);
        const uint8_t* wt = W.row(rt) + k0 * 2;  // the tile's chunk, read in place
        for (int64_t tb = 0; tb < nt; tb += ks.t_max) {
          const int64_t ntb = std::min<int64_t>(ks.t_max, nt - tb);
          const uint16_t* xt = xb + (c * n_tokens + t0 + tb) * kChunk;
          for (int64_t rb = 0; rb < nr; rb += ks.r_max) {
            const int64_t nrb = std::min<int64_t>(ks.r_max, nr - rb);
            ks.k[nrb - 1][ntb - 1](wt + rb * ws, ws, xt, kChunk, kc, acc + rb * acc_rs + tb * kLanes, acc_rs, nullptr);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * N + rt + r] = reduce16(acc + r * acc_rs + t * kLanes);
    }
  }
}

// Decode (n_tokens <= kDecodeMaxTokens): per block of R rows, every chunk in turn, so each row
// is read from start to end, and in step with it the kernel prefetches this thread's next block
// (one contiguous run: the block's rows in turn, not side by side). R = 1 (one
// stream of weights) while the tokens' x stays in L1 beside it, else r_max (x read once per r_max
// rows). Measured on Zen 5, 2 threads, 1 token: 80-86 GB/s for W [14336][4096] (R = 1) and 64-70
// for [4096][14336] (R = 4, where R = 1 gave 57-63), against 56-60 and 59-63 for dot_rows.
void dot_rows_decode(const Matrix& W, const uint16_t* xb, int64_t n_tokens, float* y, int64_t r0,
                     int64_t r1, const DotKernels& ks) {
  const int64_t K = W.cols, N = W.rows, ws = int64_t(W.row_bytes());
  const int64_t R = n_tokens * K * 2 <= kDecodeL1Bytes ? 1 : ks.r_max;
  const int64_t acc_rs = n_tokens * kLanes;
  alignas(64) float acc[kMaxR * kDecodeMaxTokens * kLanes];
  for (int64_t rb = r0; rb < r1; rb += R) {
    const int64_t nr = std::min(R, r1 - rb);
    const uint8_t* next = rb + 2 * R <= r1 ? W.row(rb + R) : nullptr;  // a whole next block, if any
    std::memset(acc, 0, sizeof(float) * size_t(nr * acc_rs));
    const DotKernel kernel = ks.k[nr - 1][n_tokens - 1];
    for (int64_t k0 = 0, c = 0; k0 < K; k0 += kChunk, ++c)
      kernel(W.row(rb) + k0 * 2, ws, xb + c * n_tokens * kChunk, kChunk, std::min(kChunk, K - k0), acc,
             acc_rs, next ? next + R * k0 * 2 : nullptr);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t t = 0; t < n_tokens; ++t) y[t * N + rb + r] = reduce16(acc + r * acc_rs + t * kLanes);
  }
}

}  // namespace

void matmul_bf16(const Matrix& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  thread_local Scratch<uint16_t> x_scratch;  // the caller's thread
  const int64_t K = W.cols;
  uint16_t* xb = x_scratch.get(size_t(n_tokens * round_up(K, kChunk)));
  pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) round_to_bf16(x, K, n_tokens, t, xb);
  });
  const DotKernels& ks = dot_kernels();
  const bool decode = n_tokens <= std::min<int64_t>(ks.t_max, kDecodeMaxTokens);
  pool.parallel_for(
      W.rows,
      [&](int64_t r0, int64_t r1) {
        if (decode) dot_rows_decode(W, xb, n_tokens, y, r0, r1, ks);
        else dot_rows(W, xb, n_tokens, y, r0, r1, ks);
      },
      kTileRows);
}

namespace ref {

namespace {
// Subnormal -> zero of the same sign (vdpbf16ps's DAZ and FTZ).
float flush(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
float flushed_fma(float a, float b, float c) { return flush(std::fma(flush(a), flush(b), flush(c))); }
}  // namespace

void matmul_bf16(const Matrix& W, const float* x, int64_t n_tokens, float* y) {
  const int64_t K = W.cols, N = W.rows, Kp = round_up(K, kStep);
  std::vector<float> xr(static_cast<size_t>(Kp));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t k = 0; k < Kp; ++k) xr[size_t(k)] = k < K ? bf16_to_f32(f32_to_bf16(x[t * K + k])) : 0.0f;
    for (int64_t r = 0; r < N; ++r) {
      const uint8_t* row = W.row(r);
      auto w = [&](int64_t k) {
        uint16_t h = 0;
        if (k < K) std::memcpy(&h, row + 2 * k, 2);
        return bf16_to_f32(h);
      };
      float lanes[kLanes] = {};
      for (int64_t k0 = 0; k0 < Kp; k0 += kStep)
        for (int l = 0; l < kLanes; ++l) {
          const int64_t odd = k0 + 2 * l + 1, even = k0 + 2 * l;
          lanes[l] = flushed_fma(w(odd), xr[size_t(odd)], lanes[l]);
          lanes[l] = flushed_fma(w(even), xr[size_t(even)], lanes[l]);
        }
      y[t * N + r] = ref_reduce16(lanes);
    }
  }
}

}  // namespace ref

}  // namespace mixtral
