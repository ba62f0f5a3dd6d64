// Weight tiles: the int8-path dtypes (Q8_0, Q4_0, Q4_K, Q6_K) stored 16 rows at a time in the
// order the int8 kernels read them, so decode streams every weight byte once, in one sequential
// pass, with no transposes. (From plain rows the kernels build the same registers with 4-byte
// transposes, which cost as much as the arithmetic: matmul_q8_blocks.h's loaders.) A group of 16
// rows in tiles takes exactly the bytes it takes as rows, so a model is tiled in place at load.
//
// Layout (Matrix::layout == Tiles16): each full group of 16 rows g (rows 16g .. 16g+15) keeps
// its 16 · row_bytes bytes, holding for each dtype block j of the rows, in column order, a body
// (the 16 rows' block j but for its fp16 d's) and, but for Q4_K, the 32 bytes of its d's (d[16]:
// row r's d at 2r). Blocks go in pairs, [d's of 2p | d's of 2p+1 | body 2p | body 2p+1] (an odd
// last block: [d's | body]; tiles::place), so the group is one run read in order and every
// 64-byte register starts at a multiple of 64 bytes from the group (aligned loads when the
// matrix is; all d's of a group in one section after the bodies, a second stream, decoded Q4_0
// and Q8_0 ~5 % slower than rows: bench_matmul --layouts rows,tiles at commit e5c8c9c).
// Below, X[k][r] is the dword (4 bytes) k of row r of the block's field X, and "q[k][16][4]" is
// the 64 bytes q[k][0] .. q[k][15] (one zmm: lane r = row r):
//   Q8_0  body 512 B   q[8][16][4]      q[k][r] = qs dword k, each byte + 128 (mod 256: the
//                                       unsigned operand)
//   Q4_0  body 256 B   n[4][16][4]      n[k][r] = qs dword k (nibbles as stored)
//   Q4_K  body 2304 B  h[4][16][4]      h[k][r] = dword k of bytes 0..15 (d | dmin << 16, then
//                                       scales[12]); no d's apart
//                      | n[4][8][16][4] n[g][k][r] = qs dword 8g + k
//   Q6_K  body 3328 B  s[4][16][4]      s[k][r] = scales dword k
//                      | for each 32-column block b = 0..7: lo[4][16][4] | hi[2][16][4]
//         with v[i] (i < 32) the 6-bit quant (0..63) of column 32b + i of the row:
//           lo[k][r] byte i = (v[4k + i] & 15) | (v[16 + 4k + i] & 15) << 4
//           hi[h][r] byte i = bits 2m..2m+1: v[4(4h + m) + i] >> 4, for m = 0..3
//         so that value 4k + i (k < 8) is the byte i of lane r of ((lo[k % 4] >> 4(k / 4)) & 15)
//         | ((hi[k / 4] >> 2(k % 4)) & 3) << 4: the unsigned quants of Packed::q.
// Rows after the last full group (rows % 16) stay in Rows layout.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"
#include "quant/blocks.h"

namespace mixtral {

// Whether t has a tile layout.
bool tileable(DType t);

// Reorders m's full row groups into tiles in place and sets m.layout = Tiles16. `data` is m's
// bytes, writable (m.data == data). Returns false, changing nothing, when m's dtype has no tiles
// or m is already tiled.
bool to_tiles(Matrix& m, uint8_t* data);

// Row r's row_bytes() bytes as Rows layout stores them, whatever m's layout.
void copy_row(const Matrix& m, int64_t r, uint8_t* out);
// m.row(r) when that holds row r as Rows layout stores it; else `buf` (row_bytes() bytes) filled
// by copy_row.
const uint8_t* row_in_rows_layout(const Matrix& m, int64_t r, uint8_t* buf);


namespace tiles {
// Bytes of one block's body (above) and offsets in it; every size here is the format's.
constexpr size_t kQ8_0 = 512, kQ4_0 = 256, kQ4_K = 2304, kQ6_K = 3328;
constexpr size_t q4_K_qs(int g) { return 256 + 512 * size_t(g); }     // n[g]
constexpr size_t q6_K_block(int b) { return 256 + 384 * size_t(b); }  // lo of 32-column block b
static_assert(q6_K_block(8) == kQ6_K && q4_K_qs(4) == kQ4_K, "tile sizes");
static_assert(kQ8_0 + 32 == 16 * sizeof(BlockQ8_0) && kQ4_0 + 32 == 16 * sizeof(BlockQ4_0) &&
                  kQ4_K == 16 * sizeof(BlockQ4_K) && kQ6_K + 32 == 16 * sizeof(BlockQ6_K),
              "a group of tiles takes the bytes of its rows");
// Whether the dtype keeps its d's apart from the body (all but Q4_K), and its body's bytes.
constexpr bool has_d(DType t) { return t != DType::Q4_K; }
constexpr size_t body_bytes(DType t) {
  return t == DType::Q8_0 ? kQ8_0 : t == DType::Q4_0 ? kQ4_0 : t == DType::Q4_K ? kQ4_K : kQ6_K;
}
// Where block j of a group of nb blocks is, in bytes from the group: its body and its d's, for a
// body of `body` bytes and (with_d) 32 bytes of d's (Q4_K: bodies back to back).
struct Place {
  size_t body, d;
};
constexpr Place place(int64_t j, int64_t nb, size_t body, bool with_d = true) {
  if (!with_d) return {size_t(j) * body, 0};
  const size_t pair = size_t(j / 2) * (64 + 2 * body), in_pair = 2 * (j / 2) + 1 < nb ? 2 : 1;
  return {pair + 32 * in_pair + size_t(j % 2) * body, pair + 32 * size_t(j % 2)};
}
// One group, scalar (the format above): `rows` = 16 rows in Rows layout, contiguous; out: their
// 16 · row_bytes bytes as tiles. untile_row: row r (< 16) of a tiled group back in Rows layout.
void tile_group(DType t, const uint8_t* rows, size_t row_bytes, uint8_t* out);
void untile_row(DType t, const uint8_t* group, size_t row_bytes, int r, uint8_t* out);
}  // namespace tiles

}  // namespace mixtral
