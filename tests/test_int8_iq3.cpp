// The int8-activation path of IQ3_XXS and IQ3_S (their unpackers: kernels/matmul_q8_unpack.inc):
//   - the fast path (decode kernels up to 8 tokens, the packed path beyond) == ref::matmul_q8
//     bit for bit, for every SIMD level, 1 and 2 threads, token counts around the kernels'
//     limits, row counts around the 16-row groups; the blocks are random bytes (every grid
//     index, sign pattern and scale) with finite fp16 d's;
//   - ref::matmul_q8 against the float reference ref::matmul (dequantized W times x) on random
//     blocks, and against ggml's own CPU product on ggml's blocks (../shared/fixtures/blocks),
//     within the activations' rounding error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "blocks_fixture.h"
#include "core/fp16.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/matmul_q8.h"
#include "test_util.h"

namespace mixtral {
namespace {

const DType kIQ3[] = {DType::IQ3_XXS, DType::IQ3_S};

// rows x cols of random blocks: random bytes, d (each block's first two bytes) random in
// ±[2^-12, 2^-4]. misalign: the matrix starts that many bytes into its buffer.
struct RandomMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
  RandomMatrix(DType t, int64_t rows, int64_t cols, uint32_t seed, size_t misalign = 0) {
    const DTypeInfo info = dtype_info(t);
    const size_t nblocks = size_t(rows * cols / info.block_size);
    bytes.resize(nblocks * info.block_bytes + misalign);
    std::mt19937 rng(seed);
    for (uint8_t& b : bytes) b = uint8_t(rng());
    std::uniform_real_distribution<float> mag(-12.0f, -4.0f);
    for (size_t i = 0; i < nblocks; ++i) {
      const uint16_t h = f32_to_f16(std::exp2(mag(rng)) * (rng() % 2 ? 1.0f : -1.0f));
      std::memcpy(bytes.data() + misalign + i * info.block_bytes, &h, 2);
    }
    m = Matrix{t, rows, cols, bytes.data() + misalign};
  }
};

std::vector<float> normal(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(float a, float b) { return f32_to_bits(a) == f32_to_bits(b); }

template <class F>
void for_each_simd_level(F body) {
  const SimdLevel best = best_simd_level();
  for (SimdLevel l : {SimdLevel::AVX2, SimdLevel::AVX512, SimdLevel::AVX512_BF16}) {
    if (int(l) > int(best)) continue;
    set_simd_level(l);
    SCOPED_TRACE(l == SimdLevel::AVX512_BF16 ? "AVX512_BF16" : l == SimdLevel::AVX512 ? "AVX512" : "AVX2");
    body();
  }
  set_simd_level(best);
}

// Sum over the 32-blocks b of one row and token of |w|_b · 0.57 amax_b / 127: the activations'
// rounding (per value at most d/2 + 127·|fp16(d) - d| <= 0.57 d, d = amax / 127), and sum |w x|.
// gb: the activation block length (ggml's q8_K: 256, with a float d: c = 0.5).
void rounding_bound(const float* w, const float* x, int64_t K, int64_t gb, double c, double& bound, double& mag) {
  for (int64_t b0 = 0; b0 < K; b0 += gb) {
    double amax = 0, wsum = 0;
    for (int64_t k = b0; k < b0 + gb; ++k) {
      amax = std::max(amax, double(std::fabs(x[k])));
      wsum += std::fabs(double(w[k]));
      if (gb == 32) mag += std::fabs(double(w[k]) * x[k]);
    }
    bound += wsum * c * amax / 127;
  }
}

TEST(Int8IQ3, RoutedToTheInt8Path) {
  for (DType t : kIQ3) EXPECT_TRUE(int8_activation_dtype(t)) << dtype_name(t);
}

TEST(Int8IQ3, FastPathBitExactWithReference) {
  ThreadPool p1(1), p2(2);
  for (DType t : kIQ3) {
    for (int64_t K : {int64_t(256), int64_t(1024)}) {
      for (int64_t rows : {7, 16, 40}) {
        const RandomMatrix W(t, rows, K, uint32_t(rows * 31 + K + int(t)), rows == 7 ? 2 : 0);
        for (int64_t n : {1, 2, 3, 5, 8, 9, 17, 64}) {
          SCOPED_TRACE(std::string(dtype_name(t)) + " K=" + std::to_string(K) + " rows=" + std::to_string(rows) +
                       " tokens=" + std::to_string(n));
          std::vector<float> x = normal(n * K, uint32_t(n * 7 + K));
          for (int64_t i = 0; i < n * K; i += 37) x[size_t(i)] *= 30.0f;  // outliers
          std::vector<float> want(size_t(n * rows));
          ref::matmul_q8(W.m, x.data(), n, want.data());
          for_each_simd_level([&] {
            for (ThreadPool* p : {&p1, &p2}) {
              std::vector<float> got(size_t(n * rows) + 1, NAN);
              matmul(W.m, x.data(), n, got.data(), *p);
              for (size_t i = 0; i < want.size(); ++i)
                ASSERT_TRUE(same_bits(got[i], want[i]))
                    << p->size() << " threads, i=" << i << ": " << got[i] << " vs " << want[i];
              ASSERT_TRUE(std::isnan(got.back())) << "written past y";
            }
          });
        }
      }
    }
  }
}

// ref::matmul_q8 vs the float reference: both are the exact product of the dequantized W with
// x but for the int8 activations' rounding (rounding_bound) and float rounding (1e-5 sum |w x|).
TEST(Int8IQ3, ReferenceAgreesWithFloatReference) {
  constexpr int64_t rows = 24, K = 2048, T = 3;
  for (DType t : kIQ3) {
    const RandomMatrix W(t, rows, K, 99 + uint32_t(t));
    std::vector<float> x = normal(T * K, 5);
    for (int64_t i = 0; i < T * K; i += 29) x[size_t(i)] *= 20.0f;
    std::vector<float> y(size_t(T * rows)), yf(size_t(T * rows)), w(static_cast<size_t>(K));
    ref::matmul_q8(W.m, x.data(), T, y.data());
    ref::matmul(W.m, x.data(), T, yf.data());
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
      ref::dequantize_row(t, W.m.row(r), w.data(), K);
      for (int64_t tt = 0; tt < T; ++tt) {
        double bound = 0, mag = 0;
        rounding_bound(w.data(), x.data() + tt * K, K, 32, 0.57, bound, mag);
        const double err = std::fabs(double(y[size_t(tt * rows + r)]) - yf[size_t(tt * rows + r)]);
        EXPECT_LE(err, bound + 1e-5 * mag) << dtype_name(t) << " r=" << r << " t=" << tt;
        worst = std::max(worst, err / mag);
      }
    }
    std::printf("[ %-7s ] max |int8 - float| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

// ref::matmul_q8 on ggml's blocks vs ggml's CPU product of them, which takes q8_K activations
// (256 values, float d: at most d/2 per value): both bounds add up.
TEST(Int8IQ3, ReferenceAgreesWithGgmlWithinActivationRounding) {
  REQUIRE_PATH(testing::blocks_dir());
  using testing::BlocksFixture;
  constexpr int64_t R = BlocksFixture::kRows, K = BlocksFixture::kCols, T = BlocksFixture::kTokens;
  for (DType t : kIQ3) {
    const BlocksFixture f = testing::load_blocks(t == DType::IQ3_XXS ? "iq3_xxs" : "iq3_s");
    ASSERT_EQ(f.type, t);
    const Matrix W{t, R, K, f.w.data()};
    std::vector<float> y(size_t(T * R));
    ref::matmul_q8(W, f.X.data(), T, y.data());
    double worst = 0;
    for (int64_t tt = 0; tt < T; ++tt)
      for (int64_t r = 0; r < R; ++r) {
        double bound = 0, mag = 0;
        const float* w = f.dequant.data() + r * K;
        const float* x = f.X.data() + tt * K;
        rounding_bound(w, x, K, 32, 0.57, bound, mag);
        rounding_bound(w, x, K, 256, 0.5, bound, mag);
        const double got = y[size_t(tt * R + r)], want = f.matmul[size_t(tt * R + r)];
        EXPECT_LE(std::fabs(got - want), bound + 1e-5 * mag)
            << dtype_name(t) << " token " << tt << " row " << r << ": " << got << " vs " << want;
        worst = std::max(worst, std::fabs(got - want) / mag);
      }
    std::printf("[ %-7s ] max |ours - ggml| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

}  // namespace
}  // namespace mixtral
