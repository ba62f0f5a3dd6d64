// Scalar tiling and untiling (the format: weight_tiles.h). Load time runs this once per weight;
// the kernels only read tiles.
#include "kernels/weight_tiles.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/blocks.h"

namespace mixtral {
namespace {

constexpr int kR = int(kTileRows);

// The bytes of a block that tiles move unchanged (but for Q8_0's + 128): f(src, dst, n, flip, d)
// for each piece of n bytes at offset src of row r's block and offset dst of its body, or of its
// 32 bytes of d's when d.
template <class F>
void for_each_piece(DType t, int r, F&& f) {
  switch (t) {
    case DType::Q8_0:
      f(0, 2 * r, 2, false, true);
      for (int k = 0; k < 8; ++k) f(2 + 4 * k, 64 * k + 4 * r, 4, true, false);
      break;
    case DType::Q4_0:
      f(0, 2 * r, 2, false, true);
      for (int k = 0; k < 4; ++k) f(2 + 4 * k, 64 * k + 4 * r, 4, false, false);
      break;
    case DType::Q4_K:
      for (int k = 0; k < 4; ++k) f(4 * k, 64 * k + 4 * r, 4, false, false);
      for (int g = 0; g < 4; ++g)
        for (int k = 0; k < 8; ++k) f(16 + 32 * g + 4 * k, tiles::q4_K_qs(g) + 64 * k + 4 * r, 4, false, false);
      break;
    case DType::Q6_K:  // d and scales; the quants are rearranged (tile_q6_values)
      f(offsetof(BlockQ6_K, d), 2 * r, 2, false, true);
      for (int k = 0; k < 4; ++k) f(offsetof(BlockQ6_K, scales) + 4 * k, 64 * k + 4 * r, 4, false, false);
      break;
    default: break;
  }
}

// Q6_K: where the 32 values of 32-column block b live in a body (row r).
constexpr size_t q6_lo(int b, int k, int r) { return tiles::q6_K_block(b) + 64 * size_t(k) + 4 * size_t(r); }
constexpr size_t q6_hi(int b, int h, int r) { return q6_lo(b, 4 + h, r); }

// Q6_K's values move a dword (4 values of a row) at a time; every mask keeps bits inside their
// byte, so a dword's 4 bytes are 4 independent lanes. For 32-column block b (half h = b / 4,
// quarter q = b % 4), value i (< 32) has
//   low4  = (QL[i] >> 4(q / 2)) & 15   QL = ql + 64h + 32(q % 2)
//   high2 = (QH[i] >> 2q) & 3          QH = qh + 32h
// (quant/blocks.h). In the tile (weight_tiles.h), dword k of lo holds values 4k..4k+3 in its low
// nibbles and 16 + 4k.. in its high nibbles: the low4 of QL dwords k and 4 + k; dword h' of hi
// holds, in bits 2m..2m+1 of each byte, the high2 of QH dword 4h' + m.
uint32_t dword(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
void put_dword(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
constexpr uint32_t kLowNibbles = 0x0F0F0F0Fu, kLow2 = 0x03030303u;

void tile_q6_values(const uint8_t* src, int r, uint8_t* tile) {
  const auto& blk = *reinterpret_cast<const BlockQ6_K*>(src);
  for (int b = 0; b < 8; ++b) {
    const int h = b / 4, q = b % 4, s = 4 * (q / 2);
    const uint8_t* ql = blk.ql + 64 * h + 32 * (q % 2);
    const uint8_t* qh = blk.qh + 32 * h;
    for (int k = 0; k < 4; ++k)
      put_dword(tile + q6_lo(b, k, r),
                ((dword(ql + 4 * k) >> s) & kLowNibbles) | ((dword(ql + 16 + 4 * k) >> s) & kLowNibbles) << 4);
    for (int hh = 0; hh < 2; ++hh) {
      uint32_t bits = 0;
      for (int m = 0; m < 4; ++m) bits |= ((dword(qh + 4 * (4 * hh + m)) >> (2 * q)) & kLow2) << (2 * m);
      put_dword(tile + q6_hi(b, hh, r), bits);
    }
  }
}

void untile_q6_values(const uint8_t* tile, int r, uint8_t* dst) {
  uint32_t ql[32] = {}, qh[16] = {};  // the block's ql and qh as dwords
  for (int b = 0; b < 8; ++b) {
    const int h = b / 4, q = b % 4, s = 4 * (q / 2);
    uint32_t* l = ql + 16 * h + 8 * (q % 2);
    for (int k = 0; k < 4; ++k) {
      const uint32_t lo = dword(tile + q6_lo(b, k, r));
      l[k] |= (lo & kLowNibbles) << s;
      l[4 + k] |= ((lo >> 4) & kLowNibbles) << s;
    }
    for (int hh = 0; hh < 2; ++hh) {
      const uint32_t hi = dword(tile + q6_hi(b, hh, r));
      for (int m = 0; m < 4; ++m) qh[8 * h + 4 * hh + m] |= ((hi >> (2 * m)) & kLow2) << (2 * q);
    }
  }
  auto& blk = *reinterpret_cast<BlockQ6_K*>(dst);
  std::memcpy(blk.ql, ql, sizeof blk.ql);
  std::memcpy(blk.qh, qh, sizeof blk.qh);
}

// body: the block's body; d: its 32 bytes of d's (unused for Q4_K).
void tile_block(DType t, const uint8_t* src, int r, uint8_t* body, uint8_t* d) {
  for_each_piece(t, r, [&](size_t s, size_t o, size_t n, bool flip, bool in_d) {
    for (size_t i = 0; i < n; ++i) (in_d ? d : body)[o + i] = uint8_t(src[s + i] ^ (flip ? 0x80 : 0));
  });
  if (t == DType::Q6_K) tile_q6_values(src, r, body);
}

void untile_block(DType t, const uint8_t* body, const uint8_t* d, int r, uint8_t* dst) {
  for_each_piece(t, r, [&](size_t s, size_t o, size_t n, bool flip, bool in_d) {
    for (size_t i = 0; i < n; ++i) dst[s + i] = uint8_t((in_d ? d : body)[o + i] ^ (flip ? 0x80 : 0));
  });
  if (t == DType::Q6_K) untile_q6_values(body, r, dst);
}

}  // namespace

bool tileable(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_K || t == DType::Q6_K;
}

namespace tiles {

void tile_group(DType t, const uint8_t* rows, size_t row_bytes, uint8_t* out) {
  const size_t bb = dtype_info(t).block_bytes, nb = row_bytes / bb, body = body_bytes(t);
  for (size_t j = 0; j < nb; ++j) {
    const Place p = place(int64_t(j), int64_t(nb), body, has_d(t));
    for (int r = 0; r < kR; ++r) tile_block(t, rows + size_t(r) * row_bytes + j * bb, r, out + p.body, out + p.d);
  }
}

void untile_row(DType t, const uint8_t* group, size_t row_bytes, int r, uint8_t* out) {
  const size_t bb = dtype_info(t).block_bytes, nb = row_bytes / bb, body = body_bytes(t);
  for (size_t j = 0; j < nb; ++j) {
    const Place p = place(int64_t(j), int64_t(nb), body, has_d(t));
    untile_block(t, group + p.body, group + p.d, r, out + j * bb);
  }
}

}  // namespace tiles

bool to_tiles(Matrix& m, uint8_t* data) {
  if (!tileable(m.dtype) || m.layout != Layout::Rows) return false;
  if (data != m.data) fail("to_tiles", "internal: the writable bytes are not the matrix's");
  const size_t rb = m.row_bytes(), group = size_t(kR) * rb;
  std::vector<uint8_t> rows(group);
  for (int64_t g = 0; g + kR <= m.rows; g += kR) {
    uint8_t* p = data + size_t(g) * rb;
    std::memcpy(rows.data(), p, group);
    tiles::tile_group(m.dtype, rows.data(), rb, p);
  }
  m.layout = Layout::Tiles16;
  return true;
}

void copy_row(const Matrix& m, int64_t r, uint8_t* out) {
  const int64_t full = m.rows / kR * kR;
  if (m.layout == Layout::Rows || r >= full) {
    std::memcpy(out, m.row(r), m.row_bytes());
    return;
  }
  tiles::untile_row(m.dtype, m.row(r / kR * kR), m.row_bytes(), int(r % kR), out);
}

const uint8_t* row_in_rows_layout(const Matrix& m, int64_t r, uint8_t* buf) {
  if (m.layout == Layout::Rows || r >= m.rows / kR * kR) return m.row(r);
  copy_row(m, r, buf);
  return buf;
}

}  // namespace mixtral
