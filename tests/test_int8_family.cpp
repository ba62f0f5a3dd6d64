// The int8-activation path of the types fed by an unpacker (kernels/matmul_q8_unpack.h: Q4_1,
// Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS):
//   - the fast path (decode kernels up to 8 tokens, the packed path beyond) == ref::matmul_q8
//     bit for bit, for every SIMD level, 1 and 2 threads, token counts around the kernels'
//     limits, row counts around the 16-row groups; the blocks are random bytes (every bit
//     pattern of quants and scales) with finite fp16 fields;
//   - ref::matmul_q8 on ggml's blocks against ggml's own CPU product (../shared/fixtures/blocks),
//     within the activation-rounding error bound of both (below).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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
#include "kernels/matmul_q8_unpack.h"
#include "kernels/weight_tiles.h"
#include "test_util.h"

namespace mixtral {
namespace {

const DType kFamily[] = {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K,
                         DType::Q3_K, DType::Q5_K, DType::IQ4_NL, DType::IQ4_XS};

std::string lower_name(DType t) {
  std::string n = dtype_name(t);
  for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
  return n;
}

// Byte offsets of a block's fp16 fields (quant/blocks.h).
std::vector<size_t> fp16_fields(DType t) {
  switch (t) {
    case DType::Q4_1: case DType::Q5_1: case DType::Q5_K: return {0, 2};
    case DType::Q2_K: return {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)};
    case DType::Q3_K: return {offsetof(BlockQ3_K, d)};
    default: return {0};  // Q5_0, IQ4_NL, IQ4_XS
  }
}

// rows x cols of random blocks: random bytes, the fp16 fields random in ±[2^-12, 2^-4].
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
    for (size_t i = 0; i < nblocks; ++i)
      for (size_t o : fp16_fields(t)) {
        const float v = std::exp2(mag(rng)) * (rng() % 2 ? 1.0f : -1.0f);
        const uint16_t h = f32_to_f16(v);
        std::memcpy(bytes.data() + misalign + i * info.block_bytes + o, &h, 2);
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

TEST(Int8Family, RoutedToTheInt8Path) {
  for (DType t : kFamily) EXPECT_TRUE(int8_activation_dtype(t)) << dtype_name(t);
  for (DType t : {DType::F16})
    EXPECT_FALSE(int8_activation_dtype(t)) << dtype_name(t);
}

TEST(Int8Family, FastPathBitExactWithReference) {
  ThreadPool p1(1), p2(2);
  for (DType t : kFamily) {
    const int64_t bs = dtype_info(t).block_size;
    for (int64_t K : {bs == 32 ? int64_t(32 * 7) : int64_t(256), int64_t(1024)}) {
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

// ref::matmul_q8 on ggml's blocks vs ggml's CPU product of the same blocks and activations. Both
// are the exact product of the dequantized W with x, off by their activations' rounding: ours
// rounds each 32-block to int8 with an fp16 scale d = amax / 127 (per value at most
// d/2 + 127·|fp16(d) - d| <= 0.57 d, as the existing bound in test_kernels.cpp), ggml's rounds
// to q8_0 / q8_1 (32 values, fp16 d: the same 0.57 d) for the legacy types and IQ4_NL, and to
// q8_K (256 values, float d: d/2) for the K types and IQ4_XS. So per output
//   |ours - ggml| <= sum_b |w|_b · 0.57 amax_b / 127 + sum_B |w|_B · c amax_B / 127 + 1e-5 · sum |w x|
// with b the 32-blocks and B ggml's activation blocks. The measured max of |ours - ggml| / sum|w x|
// is printed.
TEST(Int8Family, ReferenceAgreesWithGgmlWithinActivationRounding) {
  REQUIRE_PATH(testing::blocks_dir());
  using testing::BlocksFixture;
  constexpr int64_t R = BlocksFixture::kRows, K = BlocksFixture::kCols, T = BlocksFixture::kTokens;
  for (DType t : kFamily) {
    const BlocksFixture f = testing::load_blocks(lower_name(t));
    ASSERT_EQ(f.type, t);
    const Matrix W{t, R, K, f.w.data()};
    std::vector<float> y(size_t(T * R));
    ref::matmul_q8(W, f.X.data(), T, y.data());
    const bool k_acts = dtype_info(t).block_size == 256;  // ggml multiplies these with q8_K
    const int64_t gb = k_acts ? 256 : 32;
    const double gc = k_acts ? 0.5 : 0.57;
    double worst = 0;
    for (int64_t tt = 0; tt < T; ++tt)
      for (int64_t r = 0; r < R; ++r) {
        double mine = 0, theirs = 0, mag = 0;
        for (int64_t b0 = 0; b0 < K; b0 += 32) {
          double amax = 0, wsum = 0;
          for (int64_t k = b0; k < b0 + 32; ++k) {
            amax = std::max(amax, double(std::fabs(f.X[size_t(tt * K + k)])));
            wsum += std::fabs(double(f.dequant[size_t(r * K + k)]));
            mag += std::fabs(double(f.dequant[size_t(r * K + k)]) * f.X[size_t(tt * K + k)]);
          }
          mine += wsum * 0.57 * amax / 127;
        }
        for (int64_t b0 = 0; b0 < K; b0 += gb) {
          double amax = 0, wsum = 0;
          for (int64_t k = b0; k < b0 + gb; ++k) {
            amax = std::max(amax, double(std::fabs(f.X[size_t(tt * K + k)])));
            wsum += std::fabs(double(f.dequant[size_t(r * K + k)]));
          }
          theirs += wsum * gc * amax / 127;
        }
        const double got = y[size_t(tt * R + r)], want = f.matmul[size_t(tt * R + r)];
        EXPECT_LE(std::fabs(got - want), mine + theirs + 1e-5 * mag)
            << dtype_name(t) << " token " << tt << " row " << r << ": " << got << " vs " << want;
        worst = std::max(worst, std::fabs(got - want) / mag);
      }
    std::printf("[ %-7s ] max |ours - ggml| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

}  // namespace
}  // namespace mixtral
