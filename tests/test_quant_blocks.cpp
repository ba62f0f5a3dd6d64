// Every block type of the llama.cpp family against ggml's own blocks (../shared/fixtures/blocks,
// QUANTS.md section 4):
//   - our reference dequantizer gives ggml's dequantization bit for bit;
//   - the fast dequantizer (every SIMD level) gives the reference's bits;
//   - quantizing the fixture's float matrix (with its importance weights where ggml used them)
//     writes ggml's block bytes exactly.
// And the importance-weighted path of the types whose fixture was made without one: deterministic,
// different from the reference path, and no worse by the weighted error it minimises.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "blocks_fixture.h"
#include "kernels/dequant.h"
#include "quant/quantize.h"

namespace mixtral {
namespace {

using testing::BlocksFixture;
using testing::blocks_dir;
using testing::load_blocks;

constexpr const char* kStems[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                                  "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"};

class QuantBlocks : public ::testing::TestWithParam<const char*> {};

size_t first_difference(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(&a[i], &b[i], 4) != 0) return i;
  return n;
}

TEST_P(QuantBlocks, ReferenceDequantIsGgmls) {
  REQUIRE_PATH(blocks_dir());
  const BlocksFixture f = load_blocks(GetParam());
  std::vector<float> out(f.dequant.size());
  ref::dequantize_row(f.type, f.w.data(), out.data(), int64_t(out.size()));
  const size_t i = first_difference(out.data(), f.dequant.data(), out.size());
  EXPECT_EQ(i, out.size()) << "value " << i << ": ours " << out[i] << ", ggml " << f.dequant[i];
}

TEST_P(QuantBlocks, FastDequantIsReferenceAtEverySimdLevel) {
  REQUIRE_PATH(blocks_dir());
  const BlocksFixture f = load_blocks(GetParam());
  const SimdLevel best = best_simd_level();
  for (SimdLevel l : {SimdLevel::AVX2, SimdLevel::AVX512, SimdLevel::AVX512_BF16}) {
    if (l > best) continue;
    set_simd_level(l);
    std::vector<float> out(f.dequant.size());
    dequantize_row(f.type, f.w.data(), out.data(), int64_t(out.size()));
    EXPECT_EQ(first_difference(out.data(), f.dequant.data(), out.size()), out.size())
        << "simd level " << int(l);
  }
  set_simd_level(best);
}

TEST_P(QuantBlocks, QuantizerWritesGgmlsBytes) {
  REQUIRE_PATH(blocks_dir());
  const BlocksFixture f = load_blocks(GetParam());
  std::vector<uint8_t> out(f.w.size());
  quantize_rows(f.type, f.W.data(), out.data(), f.kRows, f.kCols, f.imatrix ? f.QW.data() : nullptr);
  size_t i = 0;
  while (i < out.size() && out[i] == f.w[i]) ++i;
  EXPECT_EQ(i, out.size()) << "first differing byte " << i << " (block "
                           << i / dtype_info(f.type).block_bytes << ")";
}

INSTANTIATE_TEST_SUITE_P(LegacyAndK, QuantBlocks, ::testing::ValuesIn(kStems),
                         [](const auto& info) { return std::string(info.param); });

// ---- the importance-weighted path -------------------------------------------------------------

// sum over values of qw * (x - dequant(x))², the error the weighted path minimises.
double weighted_error(DType t, const std::vector<uint8_t>& q, const std::vector<float>& x,
                      const std::vector<float>& qw, int64_t rows, int64_t cols) {
  std::vector<float> y(x.size());
  ref::dequantize_row(t, q.data(), y.data(), rows * cols);
  double e = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double d = double(x[r * cols + c]) - y[r * cols + c];
      e += qw[c] * d * d;
    }
  return e;
}

class QuantImportance : public ::testing::TestWithParam<const char*> {};

TEST_P(QuantImportance, UsesTheWeightsDeterministicallyAndFitsThemBetter) {
  const DType t = *dtype_from_name(GetParam());
  // Rows with outliers and an importance vector that favours a few columns strongly, so a
  // weighted fit must differ from the unweighted one.
  constexpr int64_t kRows = 16, kCols = 512;
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(kRows * kCols), qw(kCols);
  for (float& v : x) v = g(rng) * (rng() % 17 == 0 ? 6.f : 1.f);
  for (int64_t c = 0; c < kCols; ++c) qw[c] = c % 5 == 0 ? 50.f : 0.1f + float(rng() % 100) / 100.f;

  const size_t bytes = quantized_bytes(t, kCols) * kRows;
  std::vector<uint8_t> plain(bytes), weighted(bytes), again(bytes);
  quantize_rows(t, x.data(), plain.data(), kRows, kCols, nullptr);
  quantize_rows(t, x.data(), weighted.data(), kRows, kCols, qw.data());
  quantize_rows(t, x.data(), again.data(), kRows, kCols, qw.data());
  EXPECT_EQ(weighted, again);
  EXPECT_NE(weighted, plain);
  const double e_plain = weighted_error(t, plain, x, qw, kRows, kCols);
  const double e_weighted = weighted_error(t, weighted, x, qw, kRows, kCols);
  EXPECT_LT(e_weighted, e_plain) << dtype_name(t);
}

INSTANTIATE_TEST_SUITE_P(LegacyAndK, QuantImportance,
                         ::testing::Values("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                                           "Q5_K", "Q6_K"));

TEST(QuantImportance, Q8_0IgnoresTheWeightsAsGgmlDoes) {
  std::vector<float> x(64), qw(64, 3.f);
  for (int i = 0; i < 64; ++i) x[i] = std::sin(float(i));
  std::vector<uint8_t> a(quantized_bytes(DType::Q8_0, 64)), b(a.size());
  quantize_rows(DType::Q8_0, x.data(), a.data(), 1, 64, nullptr);
  quantize_rows(DType::Q8_0, x.data(), b.data(), 1, 64, qw.data());
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace mixtral
