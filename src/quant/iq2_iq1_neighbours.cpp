#include "quant/iq2_iq1_neighbours.h"

#include <array>
#include <limits>

#include "quant/iq_grids_iq2_iq1.h"

namespace mixtral::iq {
namespace {

constexpr int32_t kUnused = std::numeric_limits<int32_t>::min();  // a code with a level 3

// The 2-bit level of a grid byte.
int level_of(uint8_t b, bool iq1) {
  if (iq1) return b == 0xff ? 0 : b == 0x00 ? 1 : 2;
  return b == 0x08 ? 0 : b == 0x19 ? 1 : 2;
}

GridSearch build(const uint64_t* grid, int size, bool iq1, int n_distances) {
  GridSearch s;
  s.codes.resize(size_t(size));
  for (int k = 0; k < size; ++k) {
    uint16_t u = 0;
    for (int j = 0; j < 8; ++j) u = uint16_t(u | level_of(grid_byte(grid[k], j), iq1) << (2 * j));
    s.codes[size_t(k)] = u;
  }
  s.map.assign(1 << 16, kUnused);
  for (int k = 0; k < size; ++k) s.map[s.codes[size_t(k)]] = k;

  // Squared distance of the points 2a+1 and 2b+1 is 4 (a - b)^2; at most 8 * 4 * 4 = 128 for
  // levels 0..2 (ggml also lists patterns with a level 3, which the quantizers never form).
  constexpr int kMaxD2 = 128;
  std::vector<int> d2(size_t(size), 0);
  for (int code = 0; code < (1 << 16); ++code) {
    bool valid = true;
    for (int j = 0; j < 8; ++j) valid = valid && ((code >> (2 * j)) & 3) != 3;
    if (!valid || s.map[size_t(code)] >= 0) continue;
    std::array<bool, kMaxD2 + 1> present{};
    for (int k = 0; k < size; ++k) {
      int d = 0;
      for (int j = 0; j < 8; ++j) {
        const int diff = 2 * (((code >> (2 * j)) & 3) - s.level(k, j));
        d += diff * diff;
      }
      d2[size_t(k)] = d;
      present[size_t(d)] = true;
    }
    // Every entry at one of the n_distances smallest distances, by (distance, index): the
    // order of ggml's sorted (d2, index) pairs.
    const size_t off = s.lists.size();
    s.lists.push_back(0);
    int taken = 0;
    for (int d = 0; d <= kMaxD2 && taken < n_distances; ++d) {
      if (!present[size_t(d)]) continue;
      ++taken;
      for (int k = 0; k < size; ++k)
        if (d2[size_t(k)] == d) s.lists.push_back(uint16_t(k));
    }
    s.lists[off] = uint16_t(s.lists.size() - off - 1);
    s.map[size_t(code)] = -1 - int32_t(off);
  }
  return s;
}

}  // namespace

const GridSearch& grid_search(GridKind g) {
  switch (g) {
    case GridKind::IQ2_XXS: {
      static const GridSearch s = build(iq2xxs_grid, 256, false, 2);
      return s;
    }
    case GridKind::IQ2_XS: {
      static const GridSearch s = build(iq2xs_grid, 512, false, 2);
      return s;
    }
    case GridKind::IQ2_S: {
      static const GridSearch s = build(iq2s_grid, 1024, false, 1);
      return s;
    }
    case GridKind::IQ1:
      break;
  }
  static const GridSearch s = build(iq1s_grid, 2048, true, 3);
  return s;
}

}  // namespace mixtral::iq
