// The int8-activation path of the types fed by an unpacker (kernels/matmul_q8_unpack.h: Q4_1,
// Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, IQ3_XXS, IQ3_S):
//   - the fast path (decode kernels up to 8 tokens, the packed path beyond) == ref::matmul_q8
//     bit for bit, for every SIMD level, 1 and 2 threads, token counts around the kernels'
//     limits, row counts around the 16-row groups; the blocks are random bytes (every bit
//     pattern of quants, grid indices, signs and scales) with finite fp16 fields;
//   - ref::matmul_q8 against the float reference ref::matmul (the reference dequantizers) on
//     those blocks, and on ggml's blocks against ggml's own CPU product
//     (../shared/fixtures/blocks), within the activation-rounding error bounds (below).
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
#include "kernel_test_util.h"
#include "quant/blocks.h"
#include "test_util.h"

namespace mixtral {
namespace {

using testing::for_each_simd_level;
using testing::normal;
using testing::same_bits;

const DType kFamily[] = {DType::Q4_1,   DType::Q5_0,    DType::Q5_1,   DType::Q2_K,  DType::Q3_K,
                         DType::Q5_K,   DType::IQ4_NL,  DType::IQ4_XS, DType::IQ2_XXS, DType::IQ2_XS,
                         DType::IQ2_S,  DType::IQ1_S,   DType::IQ1_M,  DType::IQ3_XXS, DType::IQ3_S};

std::string lower_name(DType t) {
  std::string n = dtype_name(t);
  for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
  return n;
}

// Byte offsets of a block's fp16 fields (quant/blocks.h); IQ1_M has none (set_fp16).
std::vector<size_t> fp16_fields(DType t) {
  switch (t) {
    case DType::Q4_1: case DType::Q5_1: case DType::Q5_K: return {0, 2};
    case DType::Q2_K: return {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)};
    case DType::Q3_K: return {offsetof(BlockQ3_K, d)};
    default: return {0};  // Q5_0, IQ4_NL, IQ4_XS, IQ2_*, IQ1_S, IQ3_*
  }
}

// Writes the fp16 h into field o of block b; IQ1_M keeps its d as the top nibbles of its 4
// u16 scales.
void set_fp16(DType t, uint8_t* b, size_t o, uint16_t h) {
  if (t != DType::IQ1_M) {
    std::memcpy(b + o, &h, 2);
    return;
  }
  for (int k = 0; k < 4; ++k) {
    uint16_t s;
    std::memcpy(&s, b + offsetof(BlockIQ1_M, scales) + 2 * k, 2);
    s = uint16_t((s & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12));
    std::memcpy(b + offsetof(BlockIQ1_M, scales) + 2 * k, &s, 2);
  }
}

// rows x cols of random blocks: random bytes, the fp16 fields random in ±[2^-12, 2^-4].
// misalign: the matrix starts that many bytes into its buffer.
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
        set_fp16(t, bytes.data() + misalign + i * info.block_bytes, o, f32_to_f16(v));
      }
    m = Matrix{t, rows, cols, bytes.data() + misalign};
  }
};

// The int8 activations' rounding: per value at most d/2 + 127·|fp16(d) - d| <= 0.57 d, d =
// amax / 127 of its 32-block (test_kernels.cpp); ggml's q8_K (256 values, float d): d/2. Adds
// sum over the gb-blocks of one row and token of |w|_b · c · amax_b / 127 to bound, and (for
// gb = 32) sum |w x| to mag.
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

// IQ2_XXS's AVX-512 paths without VBMI (its grid by gathers, as on Skylake-X / Cascade Lake) ==
// ref::matmul_q8 bit for bit; on a VBMI CPU the test above checks the VBMI ones.
TEST(Int8Family, Iq2XxsWithoutVbmiBitExactWithReference) {
  ThreadPool pool(2);
  set_int8_vbmi(false);
  for (int64_t rows : {16, 40}) {
    const RandomMatrix W(DType::IQ2_XXS, rows, 1024, uint32_t(rows * 17 + 5));
    for (int64_t n : {1, 3, 8, 17}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " tokens=" + std::to_string(n));
      const std::vector<float> x = normal(n * 1024, uint32_t(n * 11 + 3));
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

// ref::matmul_q8 vs the float reference: both are the exact product of the dequantized W with
// x but for the int8 activations' rounding and float rounding (1e-5 sum |w x|).
TEST(Int8Family, ReferenceAgreesWithFloatReference) {
  constexpr int64_t R = 24, T = 3;
  for (DType t : kFamily) {
    const int64_t K = dtype_info(t).block_size == 32 ? 32 * 33 : 1024;
    const RandomMatrix W(t, R, K, 97 + uint32_t(t));
    std::vector<float> x = normal(T * K, 5);
    for (int64_t i = 0; i < T * K; i += 29) x[size_t(i)] *= 20.0f;  // outliers
    std::vector<float> y(size_t(T * R)), yf(size_t(T * R)), w(static_cast<size_t>(K));
    ref::matmul_q8(W.m, x.data(), T, y.data());
    ref::matmul(W.m, x.data(), T, yf.data());
    double worst = 0;
    for (int64_t r = 0; r < R; ++r) {
      ref::dequantize_row(t, W.m.row(r), w.data(), K);
      for (int64_t tt = 0; tt < T; ++tt) {
        double bound = 0, mag = 0;
        rounding_bound(w.data(), x.data() + tt * K, K, 32, 0.57, bound, mag);
        const double err = std::fabs(double(y[size_t(tt * R + r)]) - yf[size_t(tt * R + r)]);
        EXPECT_LE(err, bound + 1e-5 * mag) << dtype_name(t) << " r=" << r << " t=" << tt;
        worst = std::max(worst, err / mag);
      }
    }
    std::printf("[ %-7s ] max |int8 - float| / sum|w x| = %.3g\n", dtype_name(t), worst);
  }
}

// ref::matmul_q8 on ggml's blocks vs ggml's CPU product of the same blocks and activations. Both
// are the exact product of the dequantized W with x, off by their activations' rounding: ours
// (rounding_bound, 32-blocks), ggml's q8_0 / q8_1 (32 values, fp16 d: the same 0.57 d) for the
// legacy types and IQ4_NL, q8_K (256 values, float d: d/2) for the K and the other IQ types. So
// per output |ours - ggml| <= both bounds + 1e-5 · sum |w x|. The measured max of
// |ours - ggml| / sum|w x| is printed.
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
    double worst = 0;
    for (int64_t tt = 0; tt < T; ++tt)
      for (int64_t r = 0; r < R; ++r) {
        const float* w = f.dequant.data() + r * K;
        const float* x = f.X.data() + tt * K;
        double bound = 0, mag = 0, unused = 0;
        rounding_bound(w, x, K, 32, 0.57, bound, mag);                                  // ours
        rounding_bound(w, x, K, k_acts ? 256 : 32, k_acts ? 0.5 : 0.57, bound, unused);  // ggml's
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
