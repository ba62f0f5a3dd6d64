// IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: the reference dequantizers bit for bit against ggml's
// (../shared/fixtures/blocks), the grids they use, the quantizers byte for byte against ggml's
// blocks, and a quantize -> dequantize round trip on random data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "blocks_fixture.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/dequant.h"
#include "quant/blocks.h"
#include "quant/quantize.h"
#include "quant/iq2_iq1_neighbours.h"
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

// The quantizers keep no state between calls: four threads quantizing the fixture at once (the
// first use of a type also races on building its search table when the test runs alone) all
// write ggml's bytes.
TEST(Iq2Iq1Quantize, ConcurrentCallsGiveTheSameBytes) {
  REQUIRE_PATH(blocks_dir());
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.stem);
    const BlocksFixture f = load_blocks(c.stem);
    std::vector<std::vector<uint8_t>> out(4, std::vector<uint8_t>(f.w.size()));
    std::vector<std::thread> threads;
    for (auto& o : out)
      threads.emplace_back([&f, &o, &c] { quantize_rows(c.type, f.W.data(), o.data(), f.kRows, f.kCols, f.QW.data()); });
    for (auto& t : threads) t.join();
    for (const auto& o : out) EXPECT_TRUE(o == f.w);
  }
}

TEST(Iq2Iq1Quantize, RefusesWithoutImatrixWhereGgmlDoes) {
  std::vector<float> x(QK_K, 0.01f);
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.stem);
    std::vector<uint8_t> out(row_bytes(c.type, QK_K));
    if (quantize_requires_imatrix(c.type)) {
      EXPECT_THROW(quantize_rows(c.type, x.data(), out.data(), 1, QK_K, nullptr), Error);
    } else {
      EXPECT_NO_THROW(quantize_rows(c.type, x.data(), out.data(), 1, QK_K, nullptr));
    }
  }
  EXPECT_TRUE(quantize_requires_imatrix(DType::IQ2_XXS));
  EXPECT_TRUE(quantize_requires_imatrix(DType::IQ2_XS));
  EXPECT_TRUE(quantize_requires_imatrix(DType::IQ1_S));
  EXPECT_FALSE(quantize_requires_imatrix(DType::IQ2_S));  // ggml quantizes these two without one
  EXPECT_FALSE(quantize_requires_imatrix(DType::IQ1_M));
}

// sqrt(sum w (a - b)^2 / sum w b^2) over rows of n values with per-column weights w.
double weighted_rel_err(const std::vector<float>& a, const std::vector<float>& b, const float* w, int64_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - b[i];
    num += w[i % size_t(n)] * d * d;
    den += w[i % size_t(n)] * double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Quantize -> dequantize on Gaussian rows with outliers: the relative L2 error stays within a
// bound per type (measured with imatrix: IQ2_XXS 0.398, IQ2_XS 0.339, IQ2_S 0.285, IQ1_S 0.543,
// IQ1_M 0.494), and for the types that also run without one, the importance weights lower the
// weighted error (IQ2_S 0.304 -> 0.272, IQ1_M 0.585 -> 0.441).
TEST(Iq2Iq1Quantize, RoundTripErrorIsBounded) {
  constexpr int64_t kRows = 16, kCols = 1024;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 0.02f);
  std::uniform_real_distribution<float> uni(0.1f, 4.f);
  std::vector<float> x(static_cast<size_t>(kRows * kCols)), w(static_cast<size_t>(kCols));
  for (float& v : x) v = normal(rng);
  for (int64_t r = 0; r < kRows; ++r) x[size_t(r * kCols + (r * 97 + 5) % kCols)] *= 8.f;
  for (float& v : w) v = uni(rng);
  struct Bound {
    DType type;
    double rel_l2;
  };
  const Bound bounds[] = {{DType::IQ2_XXS, 0.44}, {DType::IQ2_XS, 0.38}, {DType::IQ2_S, 0.32},
                          {DType::IQ1_S, 0.60},   {DType::IQ1_M, 0.55}};
  for (const Bound& bd : bounds) {
    SCOPED_TRACE(dtype_name(bd.type));
    std::vector<uint8_t> q(row_bytes(bd.type, kCols) * size_t(kRows));
    std::vector<float> back(x.size());
    quantize_rows(bd.type, x.data(), q.data(), kRows, kCols, w.data());
    dequantize_row(bd.type, q.data(), back.data(), int64_t(x.size()));
    const double err = rel_l2(back.data(), x.data(), int64_t(x.size()));
    const double werr = weighted_rel_err(back, x, w.data(), kCols);
    EXPECT_LT(err, bd.rel_l2);
    if (!quantize_requires_imatrix(bd.type)) {
      quantize_rows(bd.type, x.data(), q.data(), kRows, kCols, nullptr);
      dequantize_row(bd.type, q.data(), back.data(), int64_t(x.size()));
      EXPECT_LT(rel_l2(back.data(), x.data(), int64_t(x.size())), bd.rel_l2 * 1.2);
      EXPECT_LT(werr, weighted_rel_err(back, x, w.data(), kCols));
    }
  }
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

// Every grid entry is found by its own pattern; every other pattern of levels 0..2 has
// neighbours, and they are at the smallest distance from it that any entry has.
TEST(Iq2Iq1Grids, NeighbourTablesCoverEveryPattern) {
  for (const iq::GridKind kind : {iq::GridKind::IQ2_XXS, iq::GridKind::IQ2_XS, iq::GridKind::IQ2_S, iq::GridKind::IQ1}) {
    const iq::GridSearch& gs = iq::grid_search(kind);
    const int size = int(gs.codes.size());
    for (int k = 0; k < size; ++k) ASSERT_EQ(gs.entry(gs.codes[size_t(k)]), k);
    auto dist = [&gs](int code, int k) {
      int d = 0;
      for (int j = 0; j < 8; ++j) d += (((code >> (2 * j)) & 3) - gs.level(k, j)) * (((code >> (2 * j)) & 3) - gs.level(k, j));
      return d;
    };
    for (int code = 0; code < 6561; ++code) {  // all 3^8 patterns
      int u = 0;
      for (int j = 0, c = code; j < 8; ++j, c /= 3) u |= (c % 3) << (2 * j);
      if (gs.entry(uint16_t(u)) >= 0) continue;
      const auto nb = gs.neighbours(uint16_t(u));
      ASSERT_FALSE(nb.empty()) << u;
      int best = 1 << 30;
      for (int k = 0; k < size; ++k) best = std::min(best, dist(u, k));
      ASSERT_EQ(dist(u, nb[0]), best) << u;
    }
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
