// The Tiles16 weight layout (kernels/weight_tiles.h), on random bytes (tiling only moves bits,
// so any bytes do):
//   - to_tiles then copy_row / row_in_rows_layout gives back every row byte for byte, for full
//     groups, tail rows (rows % 16) and matrices with no full group; tails stay in place
//   - what to_tiles refuses (dtypes without tiles, a second tiling) and Matrix::slice_rows' rule
//   - the format itself, independently of the untiler: every byte of a block tile where the
//     header's formulas put it (Q8_0, Q4_0, Q4_K), and for Q6_K the 6-bit values decoded from
//     lo/hi as the header states give ref::dequantize_row's values
//   - the float matmul path (int8 activations off) and ref::matmul read tiled weights: the same
//     bits as from Rows layout, at every SIMD level, thread count and token count; so does the
//     int8-activation path (matmul_q8)
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/weight_tiles.h"
#include "quant/blocks.h"
#include "quant/quantize.h"

namespace mixtral {
namespace {

const DType kTiled[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K};

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

// A rows × (blocks · block size) matrix of `t` over random bytes (owned by `bytes`).
Matrix random_matrix(DType t, int64_t rows, int64_t blocks, std::vector<uint8_t>& bytes, uint32_t seed) {
  const int64_t cols = blocks * dtype_info(t).block_size;
  bytes = random_bytes(row_bytes(t, cols) * size_t(rows), seed);
  return {t, rows, cols, bytes.data()};
}

TEST(WeightTiles, RowsComeBackByteForByte) {
  uint32_t seed = 1;
  for (DType t : kTiled)
    for (int64_t rows : {16, 48, 40, 5})
      for (int64_t blocks : {1, 2, 5}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " rows " + std::to_string(rows) + " blocks " + std::to_string(blocks));
        std::vector<uint8_t> bytes;
        Matrix m = random_matrix(t, rows, blocks, bytes, seed++);
        const std::vector<uint8_t> orig = bytes;
        const size_t rb = m.row_bytes();
        const int64_t full = rows / kTileRows * kTileRows;
        ASSERT_TRUE(to_tiles(m, bytes.data()));
        EXPECT_EQ(m.layout, Layout::Tiles16);
        // Full groups are rearranged (random bytes: the chance that a group comes out unchanged
        // is nil), the tail stays where it was.
        if (full > 0) {
          EXPECT_NE(0, std::memcmp(bytes.data(), orig.data(), size_t(full) * rb));
        }
        EXPECT_EQ(0, std::memcmp(bytes.data() + size_t(full) * rb, orig.data() + size_t(full) * rb,
                                 size_t(rows - full) * rb));
        std::vector<uint8_t> row(rb), buf(rb);
        for (int64_t r = 0; r < rows; ++r) {
          copy_row(m, r, row.data());
          EXPECT_EQ(0, std::memcmp(row.data(), orig.data() + size_t(r) * rb, rb)) << "copy_row " << r;
          const uint8_t* p = row_in_rows_layout(m, r, buf.data());
          EXPECT_EQ(0, std::memcmp(p, orig.data() + size_t(r) * rb, rb)) << "row_in_rows_layout " << r;
          EXPECT_EQ(p == buf.data(), r < full) << "a tail row is read in place";
        }
        // The same bytes untiled again: the tiler and the untiler are inverses.
        std::vector<uint8_t> back(bytes.size());
        for (int64_t r = 0; r < rows; ++r) copy_row(m, r, back.data() + size_t(r) * rb);
        EXPECT_EQ(back, orig);
      }
}

TEST(WeightTiles, RowsLayoutReadsInPlace) {
  std::vector<uint8_t> bytes;
  const Matrix m = random_matrix(DType::Q4_K, 32, 2, bytes, 7);
  std::vector<uint8_t> buf(m.row_bytes()), row(m.row_bytes());
  for (int64_t r = 0; r < m.rows; ++r) {
    EXPECT_EQ(row_in_rows_layout(m, r, buf.data()), m.row(r));
    copy_row(m, r, row.data());
    EXPECT_EQ(0, std::memcmp(row.data(), m.row(r), m.row_bytes()));
  }
}

TEST(WeightTiles, ToTilesRefuses) {
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint8_t> bytes;
    Matrix m = random_matrix(t, 32, 64, bytes, 3);
    const auto orig = bytes;
    EXPECT_FALSE(to_tiles(m, bytes.data())) << dtype_name(t);
    EXPECT_EQ(m.layout, Layout::Rows);
    EXPECT_EQ(bytes, orig);
  }
  for (DType t : kTiled) {
    std::vector<uint8_t> bytes;
    Matrix m = random_matrix(t, 32, 2, bytes, 4);
    ASSERT_TRUE(to_tiles(m, bytes.data()));
    const auto once = bytes;
    EXPECT_FALSE(to_tiles(m, bytes.data())) << dtype_name(t) << ": tiled twice";
    EXPECT_EQ(bytes, once);
    EXPECT_EQ(m.layout, Layout::Tiles16);
  }
  std::vector<uint8_t> bytes;
  Matrix m = random_matrix(DType::Q8_0, 16, 1, bytes, 5);
  std::vector<uint8_t> other(bytes.size());
  EXPECT_THROW(to_tiles(m, other.data()), Error);  // the writable bytes must be the matrix's
}

// Matrix::slice_rows keeps tile groups whole, and a tiled slice reads back its own rows.
TEST(WeightTiles, SliceRowsKeepsGroupsWhole) {
  std::vector<uint8_t> bytes;
  Matrix m = random_matrix(DType::Q4_0, 40, 1, bytes, 6);  // groups 0-15, 16-31; tail 32-39
  const std::vector<uint8_t> rows = bytes;
  for (auto [first, n] : {std::pair<int64_t, int64_t>{3, 5}, {0, 40}, {39, 1}}) EXPECT_NO_THROW(m.slice_rows(first, n));
  EXPECT_THROW(m.slice_rows(30, 11), Error);  // past the end, either layout
  EXPECT_THROW(m.slice_rows(-1, 2), Error);
  ASSERT_TRUE(to_tiles(m, bytes.data()));
  const size_t rb = m.row_bytes();
  std::vector<uint8_t> row(rb);
  for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 16}, {16, 16}, {0, 32}, {0, 40}, {16, 24}, {32, 8}, {16, 0}}) {
    const Matrix s = m.slice_rows(first, n);
    EXPECT_EQ(s.layout, Layout::Tiles16);
    for (int64_t r = 0; r < n; ++r) {
      copy_row(s, r, row.data());
      ASSERT_EQ(std::memcmp(row.data(), rows.data() + size_t(first + r) * rb, rb), 0) << first << " + " << n << " row " << r;
    }
  }
  for (auto [first, n] : {std::pair<int64_t, int64_t>{8, 16}, {0, 8}, {16, 8}, {0, 24}, {33, 7}, {39, 1}, {30, 11}})
    EXPECT_THROW(m.slice_rows(first, n), Error) << first << " + " << n;
}

// Tiles one 16-row group of random bytes; `rows` the original rows, `tile` the tiled bytes.
void tile_random_group(DType t, int64_t blocks, uint32_t seed, std::vector<uint8_t>& rows, std::vector<uint8_t>& tile) {
  Matrix m = random_matrix(t, kTileRows, blocks, tile, seed);
  if (t == DType::Q6_K)  // finite d (exponent below 31): the value check below compares floats
    for (int64_t r = 0; r < kTileRows; ++r)
      for (int64_t j = 0; j < blocks; ++j) {
        auto* b = reinterpret_cast<BlockQ6_K*>(tile.data() + size_t(r) * m.row_bytes()) + j;
        uint16_t d;
        std::memcpy(&d, &b->d, 2);
        d = uint16_t(d & ~0x4000);
        std::memcpy(&b->d, &d, 2);
      }
  rows = tile;
  ASSERT_TRUE(to_tiles(m, tile.data()));
}

// The header's byte formulas, checked at every byte of every block's body and d's.
TEST(WeightTiles, FormatMatchesTheHeader) {
  constexpr int64_t kBlocks = 3;
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    SCOPED_TRACE(dtype_name(t));
    std::vector<uint8_t> rows, tile;
    tile_random_group(t, kBlocks, 11, rows, tile);
    const size_t bb = dtype_info(t).block_bytes, rb = bb * kBlocks;
    const size_t body = t == DType::Q8_0 ? 512 : t == DType::Q4_0 ? 256 : 2304;  // the header's sizes
    ASSERT_EQ(body, tiles::body_bytes(t));
    for (int64_t j = 0; j < kBlocks; ++j) {
      // blocks in pairs [d's 2p | d's 2p+1 | body 2p | body 2p+1], the odd last one [d's | body];
      // Q4_K: bodies back to back
      const size_t pair = size_t(j / 2) * (64 + 2 * body), in_pair = 2 * (j / 2) + 1 < kBlocks ? 2 : 1;
      const bool q4k = t == DType::Q4_K;
      const uint8_t* T = tile.data() + (q4k ? size_t(j) * body : pair + 32 * in_pair + size_t(j % 2) * body);
      const uint8_t* D = tile.data() + pair + 32 * size_t(j % 2);  // its d's (not Q4_K)
      for (int r = 0; r < 16; ++r) {
        const uint8_t* b = rows.data() + size_t(r) * rb + size_t(j) * bb;  // row r's block j
        if (t == DType::Q8_0) {  // q[8][16][4], q = qs + 128; d[16]
          EXPECT_EQ(0, std::memcmp(D + 2 * r, b, 2));
          for (int k = 0; k < 8; ++k)
            for (int i = 0; i < 4; ++i) ASSERT_EQ(T[64 * k + 4 * r + i], uint8_t(b[2 + 4 * k + i] ^ 0x80)) << k;
        } else if (t == DType::Q4_0) {  // n[4][16][4]; d[16]
          EXPECT_EQ(0, std::memcmp(D + 2 * r, b, 2));
          for (int k = 0; k < 4; ++k) ASSERT_EQ(0, std::memcmp(T + 64 * k + 4 * r, b + 2 + 4 * k, 4)) << k;
        } else {  // h[4][16][4] (bytes 0..15: d, dmin, scales) | n[4][8][16][4] (qs dword 8g + k)
          for (int k = 0; k < 4; ++k) ASSERT_EQ(0, std::memcmp(T + 64 * k + 4 * r, b + 4 * k, 4)) << k;
          for (int g = 0; g < 4; ++g)
            for (int k = 0; k < 8; ++k)
              ASSERT_EQ(0, std::memcmp(T + 256 + 512 * g + 64 * k + 4 * r, b + offsetof(BlockQ4_K, qs) + 4 * (8 * g + k), 4))
                  << g << " " << k;
        }
      }
    }
  }
}

// Q6_K: d and the scales where the header puts them, and the 6-bit values decoded from lo/hi
// as the header states are the quants ref::dequantize_row uses: x = (d · scale) · (v − 32).
TEST(WeightTiles, Q6KValuesDecodeAsTheHeaderSays) {
  constexpr int64_t kBlocks = 2;
  std::vector<uint8_t> rows, tile;
  tile_random_group(DType::Q6_K, kBlocks, 12, rows, tile);
  const size_t bb = sizeof(BlockQ6_K), rb = bb * kBlocks;
  std::vector<float> want(size_t(kBlocks) * QK_K);
  for (int r = 0; r < 16; ++r) {
    ref::dequantize_row(DType::Q6_K, rows.data() + size_t(r) * rb, want.data(), kBlocks * QK_K);
    for (int64_t j = 0; j < kBlocks; ++j) {
      // kBlocks = 2: one pair, [d's 0 | d's 1 | body 0 | body 1], bodies of the header's 3328 bytes
      const uint8_t* T = tile.data() + 64 + size_t(j) * 3328;
      const uint8_t* D = tile.data() + 32 * size_t(j);
      const auto& blk = *reinterpret_cast<const BlockQ6_K*>(rows.data() + size_t(r) * rb + size_t(j) * bb);
      // s[4][16][4]: row r's 16 int8 scales as 4 dwords; its fp16 d with the pair's d's
      EXPECT_EQ(0, std::memcmp(D + 2 * r, &blk.d, 2));
      for (int k = 0; k < 4; ++k) EXPECT_EQ(0, std::memcmp(T + 64 * k + 4 * r, blk.scales + 4 * k, 4));
      uint16_t dh;
      std::memcpy(&dh, D + 2 * r, 2);
      const float d = f16_to_f32(dh);
      for (int b = 0; b < 8; ++b) {  // 32-column block b: lo[4][16][4] | hi[2][16][4]
        const uint8_t* lo = T + 256 + 384 * b;
        const uint8_t* hi = lo + 4 * 64;
        for (int k = 0; k < 8; ++k)
          for (int i = 0; i < 4; ++i) {
            const int v = ((lo[64 * (k % 4) + 4 * r + i] >> (4 * (k / 4))) & 15) |
                          ((hi[64 * (k / 4) + 4 * r + i] >> (2 * (k % 4))) & 3) << 4;
            const int col = 32 * b + 4 * k + i;
            const auto scale = int8_t(T[64 * (col / 16 / 4) + 4 * r + (col / 16) % 4]);
            const float x = (d * float(scale)) * float(v - 32);
            ASSERT_EQ(f32_to_bits(x), f32_to_bits(want[size_t(j) * QK_K + size_t(col)]))
                << "row " << r << " block " << j << " column " << col;
          }
      }
    }
  }
}

// Quantized weights give the same bits from tiles as from rows, through the int8-activation path
// (matmul_q8) or the float path (int8 off; there ref::matmul too): single tokens (the float
// path's in-place kernels where the ISA has them), a few and many tokens, full groups and tail
// rows, both ISAs, 1 and 2 threads.
void expect_matmul_reads_tiles(bool int8) {
  const bool int8_was = int8_activations();
  set_int8_activations(int8);
  const SimdLevel best = best_simd_level();
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (DType t : kTiled)
    for (int64_t rows : {48, 40, 5}) {
      const int64_t cols = 512;
      std::vector<float> wf(size_t(rows * cols));
      for (float& v : wf) v = normal(rng);
      std::vector<uint8_t> bytes(row_bytes(t, cols) * size_t(rows));
      for (int64_t r = 0; r < rows; ++r)
        quantize_row(t, wf.data() + r * cols, bytes.data() + size_t(r) * row_bytes(t, cols), cols);
      const Matrix W{t, rows, cols, bytes.data()};
      std::vector<uint8_t> tiled_bytes = bytes;
      Matrix T{t, rows, cols, tiled_bytes.data()};
      ASSERT_TRUE(to_tiles(T, tiled_bytes.data()));
      for (int64_t n : {1, 3, 9}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " rows " + std::to_string(rows) + " tokens " + std::to_string(n));
        std::vector<float> x(size_t(n * cols));
        for (float& v : x) v = normal(rng);
        std::vector<float> want(size_t(n * rows)), got(want.size());
        if (!int8) {
          ref::matmul(W, x.data(), n, want.data());
          ref::matmul(T, x.data(), n, got.data());
          EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float))) << "ref::matmul";
        }
        for (SimdLevel l : {SimdLevel::AVX2, SimdLevel::AVX512}) {
          if (int(l) > int(best)) continue;
          set_simd_level(l);
          for (int threads : {1, 2}) {
            ThreadPool pool(threads);
            matmul(W, x.data(), n, want.data(), pool);
            matmul(T, x.data(), n, got.data(), pool);
            EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
                << (l == SimdLevel::AVX2 ? "AVX2" : "AVX512") << ", " << threads << " threads";
          }
        }
        set_simd_level(best);
      }
    }
  set_int8_activations(int8_was);
}

TEST(WeightTiles, FloatMatmulReadsTiles) { expect_matmul_reads_tiles(false); }
TEST(WeightTiles, Int8MatmulReadsTiles) { expect_matmul_reads_tiles(true); }

}  // namespace
}  // namespace mixtral
