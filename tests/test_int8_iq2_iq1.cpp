// The int8-activation path of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M (their unpackers:
// kernels/matmul_q8_unpack.inc; ref::matmul_q8's blocks: kernels/matmul_q8_ref_iq2_iq1.cpp):
//   - the fast path (decode kernels up to 8 tokens, the packed path beyond) == ref::matmul_q8
//     bit for bit, for every SIMD level, 1 and 2 threads, token counts around the kernels'
//     limits, row counts around the 16-row groups; the blocks are random bytes (every bit
//     pattern of indices, signs, deltas and scales) with finite fp16 d's;
//   - ref::matmul_q8 against the float reference ref::matmul (the reference dequantizers) on
//     those blocks, and against ggml's own CPU product of ggml's blocks (../shared/fixtures/blocks),
//     within the activation-rounding bounds of test_int8_family.cpp.
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
#include "quant/blocks.h"
#include "test_util.h"

namespace mixtral {
namespace {

const DType kTypes[] = {DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ1_S, DType::IQ1_M};

std::string lower_name(DType t) {
  std::string n = dtype_name(t);
  for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
  return n;
}

// Writes the fp16 h as block b's d: at byte 0, or (IQ1_M) as the top nibbles of its 4 u16 scales.
void set_d(DType t, uint8_t* b, uint16_t h) {
  if (t != DType::IQ1_M) {
    std::memcpy(b, &h, 2);
    return;
  }
  for (int k = 0; k < 4; ++k) {
    uint16_t s;
    std::memcpy(&s, b + offsetof(BlockIQ1_M, scales) + 2 * k, 2);
    s = uint16_t((s & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12));
    std::memcpy(b + offsetof(BlockIQ1_M, scales) + 2 * k, &s, 2);
  }
}

// rows x cols of random blocks: random bytes, d random in ±[2^-12, 2^-4].
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
      const float v = std::exp2(mag(rng)) * (rng() % 2 ? 1.0f : -1.0f);
      set_d(t, bytes.data() + misalign + i * info.block_bytes, f32_to_f16(v));
    }
    m = Matrix{t, rows, cols, bytes.data() + misalign};
  }
};

std::vector<float> normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
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

// Per output: the int8 path's activation rounding, at most 0.57 d per value (d = amax / 127 of its
// 32-block; test_int8_family.cpp), times sum |w| of the block, + 1e-5 sum |w x|.
double rounding_bound(const float* w, const float* x, int64_t K, double* mag) {
  double bound = 0;
  *mag = 0;
  for (int64_t b0 = 0; b0 < K; b0 += 32) {
    double amax = 0, wsum = 0;
    for (int64_t k = b0; k < b0 + 32; ++k) {
      amax = std::max(amax, double(std::fabs(x[k])));
      wsum += std::fabs(double(w[k]));
      *mag += std::fabs(double(w[k]) * x[k]);
    }
    bound += wsum * 0.57 * amax / 127;
  }
  return bound + 1e-5 * *mag;
}

TEST(Int8IQ2IQ1, RoutedToTheInt8Path) {
  for (DType t : kTypes) EXPECT_TRUE(int8_activation_dtype(t)) << dtype_name(t);
}

TEST(Int8IQ2IQ1, FastPathBitExactWithReference) {
  ThreadPool p1(1), p2(2);
  for (DType t : kTypes) {
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

// IQ2_XXS's AVX-512 paths without VBMI (its grid by gathers, as on Skylake-X / Cascade Lake) ==
// ref::matmul_q8 bit for bit; on a VBMI CPU the test above checks the VBMI ones.
TEST(Int8IQ2IQ1, Iq2XxsWithoutVbmiBitExactWithReference) {
  ThreadPool pool(2);
  set_int8_vbmi(false);
  for (int64_t rows : {16, 40}) {
    const RandomMatrix W(DType::IQ2_XXS, rows, 1024, uint32_t(rows * 17 + 5), 0);
    for (int64_t n : {1, 3, 8, 17}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " tokens=" + std::to_string(n));
      std::vector<float> x = normal(n * 1024, uint32_t(n * 11 + 3));
      std::vector<float> want(size_t(n * rows)), got(size_t(n * rows));
      ref::matmul_q8(W.m, x.data(), n, want.data());
      for_each_simd_level([&] {
        matmul(W.m, x.data(), n, got.data(), pool);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_TRUE(same_bits(got[i], want[i])) << "i=" << i << ": " << got[i] << " vs " << want[i];
      });
    }
  }
  set_int8_vbmi(true);
}

// ref::matmul_q8 vs the float reference (dequantized W times x) on random blocks.
TEST(Int8IQ2IQ1, ReferenceAgreesWithFloatReference) {
  constexpr int64_t R = 24, K = 1024, T = 3;
  for (DType t : kTypes) {
    const RandomMatrix W(t, R, K, 97 + uint32_t(t));
    std::vector<float> x = normal(T * K, 5);
    std::vector<float> wf(size_t(R * K)), q(size_t(T * R)), f(size_t(T * R));
    for (int64_t r = 0; r < R; ++r) dequantize_row(t, W.m.row(r), wf.data() + r * K, K);
    ref::matmul_q8(W.m, x.data(), T, q.data());
    ref::matmul(W.m, x.data(), T, f.data());
    double worst = 0;
    for (int64_t tt = 0; tt < T; ++tt)
      for (int64_t r = 0; r < R; ++r) {
        double mag;
        const double bound = rounding_bound(wf.data() + r * K, x.data() + tt * K, K, &mag);
        const double got = q[size_t(tt * R + r)], want = f[size_t(tt * R + r)];
        EXPECT_LE(std::fabs(got - want), bound) << dtype_name(t) << " token " << tt << " row " << r;
        worst = std::max(worst, std::fabs(got - want) / mag);
      }
    std::printf("[ %-7s ] max |int8 - float| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

// ref::matmul_q8 on ggml's blocks vs ggml's CPU product (q8_K activations: 256 values, float d,
// rounding at most d/2 per value), as Int8Family.ReferenceAgreesWithGgmlWithinActivationRounding.
TEST(Int8IQ2IQ1, ReferenceAgreesWithGgmlWithinActivationRounding) {
  REQUIRE_PATH(testing::blocks_dir());
  using testing::BlocksFixture;
  constexpr int64_t R = BlocksFixture::kRows, K = BlocksFixture::kCols, T = BlocksFixture::kTokens;
  for (DType t : kTypes) {
    const BlocksFixture f = testing::load_blocks(lower_name(t));
    ASSERT_EQ(f.type, t);
    const Matrix W{t, R, K, f.w.data()};
    std::vector<float> y(size_t(T * R));
    ref::matmul_q8(W, f.X.data(), T, y.data());
    double worst = 0;
    for (int64_t tt = 0; tt < T; ++tt)
      for (int64_t r = 0; r < R; ++r) {
        const float* w = f.dequant.data() + r * K;
        const float* x = f.X.data() + tt * K;
        double mag;
        double bound = rounding_bound(w, x, K, &mag);
        for (int64_t b0 = 0; b0 < K; b0 += 256) {
          double amax = 0, wsum = 0;
          for (int64_t k = b0; k < b0 + 256; ++k) {
            amax = std::max(amax, double(std::fabs(x[k])));
            wsum += std::fabs(double(w[k]));
          }
          bound += wsum * 0.5 * amax / 127;
        }
        const double got = y[size_t(tt * R + r)], want = f.matmul[size_t(tt * R + r)];
        EXPECT_LE(std::fabs(got - want), bound) << dtype_name(t) << " token " << tt << " row " << r;
        worst = std::max(worst, std::fabs(got - want) / mag);
      }
    std::printf("[ %-7s ] max |ours - ggml| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

}  // namespace
}  // namespace mixtral
