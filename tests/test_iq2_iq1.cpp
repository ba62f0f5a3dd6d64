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
#include "quant/blocks.h"
#include "quant/quantize.h"
#include "quant/iq_grids_iq2_iq1.h"
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

// Bytes that differ between ours and ggml's, and the first differing block (or -1).
struct ByteDiff {
  int64_t bytes = 0, first_block = -1;
};
ByteDiff diff_bytes(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, size_t block_bytes) {
  ByteDiff d;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) {
      if (d.bytes++ == 0) d.first_block = int64_t(i / block_bytes);
    }
  return d;
}

// quantize_rows(W, QW) must write the bytes ggml wrote into <type>.gguf.
void expect_ggml_bytes(const Case& c) {
  SCOPED_TRACE(c.stem);
  const BlocksFixture f = load_blocks(c.stem);
  ASSERT_TRUE(f.imatrix);
  std::vector<uint8_t> ours(f.w.size());
  quantize_rows(c.type, f.W.data(), ours.data(), f.kRows, f.kCols, f.QW.data());
  const ByteDiff d = diff_bytes(ours, f.w, dtype_info(c.type).block_bytes);
  EXPECT_EQ(d.bytes, 0) << "first differing block " << d.first_block;
}

TEST(Iq2Iq1Quantize, Iq2XxsMatchesGgmlByteForByte) {
  REQUIRE_PATH(blocks_dir());
  expect_ggml_bytes(kCases[0]);
}

TEST(Iq2Iq1Quantize, Iq2XsMatchesGgmlByteForByte) {
  REQUIRE_PATH(blocks_dir());
  expect_ggml_bytes(kCases[1]);
}

TEST(Iq2Iq1Quantize, Iq2SMatchesGgmlByteForByte) {
  REQUIRE_PATH(blocks_dir());
  expect_ggml_bytes(kCases[2]);
}

TEST(Iq2Iq1Quantize, Iq1SMatchesGgmlByteForByte) {
  REQUIRE_PATH(blocks_dir());
  expect_ggml_bytes(kCases[3]);
}

TEST(Iq2Iq1Quantize, Iq1MMatchesGgmlByteForByte) {
  REQUIRE_PATH(blocks_dir());
  expect_ggml_bytes(kCases[4]);
}

struct Grid {
  const char* name;
  const uint64_t* entries;
  int size;
  bool iq1;          // bytes are -1, 0, 1 (IQ1) instead of the magnitudes 8, 25, 43 (IQ2)
  uint64_t fnv1a;    // FNV-1a 64 of the entries' little-endian bytes, computed from ggml-common.h
};
const Grid kGrids[] = {
    {"iq2xxs_grid", iq::iq2xxs_grid, 256, false, 0xbb4ee025b5ac6e8eull},
    {"iq2xs_grid", iq::iq2xs_grid, 512, false, 0xc9b1ee61e79909bdull},
    {"iq2s_grid", iq::iq2s_grid, 1024, false, 0x123edd38a3b62b90ull},
    {"iq1s_grid", iq::iq1s_grid, 2048, true, 0x6703ed863501ae2eull},
};

// 2-bit level code of a grid byte (0, 1, 2), or -1 when the byte is not a level of that grid.
int level_code(uint8_t b, bool iq1) {
  const uint8_t levels[2][3] = {{0x08, 0x19, 0x2b}, {0xff, 0x00, 0x01}};
  for (int c = 0; c < 3; ++c)
    if (b == levels[iq1][c]) return c;
  return -1;
}

TEST(Iq2Iq1Grids, SizesLevelsChecksumsAndOrder) {
  EXPECT_EQ(sizeof(iq::iq2xxs_grid) / 8, 256u);
  EXPECT_EQ(sizeof(iq::iq2xs_grid) / 8, 512u);
  EXPECT_EQ(sizeof(iq::iq2s_grid) / 8, 1024u);
  EXPECT_EQ(sizeof(iq::iq1s_grid) / 8, 2048u);
  for (const Grid& g : kGrids) {
    SCOPED_TRACE(g.name);
    uint64_t h = 0xcbf29ce484222325ull;
    int64_t prev_code = -1;
    for (int k = 0; k < g.size; ++k) {
      int64_t code = 0;  // the entry as 8 base-4 digits, value j in digit j (ggml's kgrid tables)
      for (int j = 0; j < 8; ++j) {
        const uint8_t b = iq::grid_byte(g.entries[k], j);
        const int c = level_code(b, g.iq1);
        ASSERT_GE(c, 0) << "entry " << k << " byte " << j << " = " << int(b);
        code |= int64_t(c) << (2 * j);
        h = (h ^ b) * 0x100000001b3ull;
      }
      // Strictly increasing codes: the entries are distinct (ggml's neighbour tables rely on it).
      EXPECT_GT(code, prev_code) << "entry " << k;
      prev_code = code;
    }
    EXPECT_EQ(h, g.fnv1a);
  }
}

TEST(Iq2Iq1Grids, SignTableHasEvenParity) {
  for (int i = 0; i < 128; ++i) {
    const uint8_t s = iq_signs(i);
    EXPECT_EQ(s & 127, i);
    EXPECT_EQ(__builtin_popcount(s) % 2, 0) << i;
  }
  EXPECT_EQ(iq_signs(0), 0);
  EXPECT_EQ(iq_signs(1), 0x81);    // ggml's ksigns_iq2xs[1] = 129
  EXPECT_EQ(iq_signs(127), 0xff);  // ksigns_iq2xs[127] = 255
}

}  // namespace
