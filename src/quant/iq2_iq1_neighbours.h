// Search tables for the IQ2_XXS / IQ2_XS / IQ2_S / IQ1_S / IQ1_M quantizers: which grid entry an
// 8-value pattern of levels is, and for a pattern that is no entry, which entries are nearest.
// They give the same answers as ggml's iq2xs_init_impl tables (ggml-quants.c), so the quantizers
// pick the same entries.
//
// A pattern is 8 levels l_j in 0..2 (IQ2: magnitudes 8, 25, 43; IQ1: -1, 0, 1), packed as the
// code u = sum l_j << 2j. Distances are measured between the points 2l+1 (ggml's integer grid).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace mixtral::iq {

enum class GridKind { IQ2_XXS, IQ2_XS, IQ2_S, IQ1 };  // IQ1_S and IQ1_M share the 2048-entry grid

struct GridSearch {
  std::vector<uint16_t> codes;   // codes[k]: the pattern of grid entry k
  std::vector<int32_t> map;      // by code: entry index (>= 0), or -1 - offset into `lists`
  std::vector<uint16_t> lists;   // at each offset: the count n, then n entry indices

  // The entry with pattern u, or -1.
  int entry(uint16_t u) const { return map[u] >= 0 ? map[u] : -1; }
  // For a pattern that is no entry: the entries at the smallest distances from it (ggml keeps
  // the nearest 1 (IQ2_S), 2 (IQ2_XXS, IQ2_XS) or 3 (IQ1) distinct distances), ordered by
  // distance, then index.
  std::span<const uint16_t> neighbours(uint16_t u) const {
    const size_t off = size_t(-1 - map[u]);
    return {lists.data() + off + 1, lists[off]};
  }
  // Level j (0..2) of entry k.
  int level(int k, int j) const { return (codes[size_t(k)] >> (2 * j)) & 3; }
};

// Built on first use (thread-safe), kept for the process.
const GridSearch& grid_search(GridKind g);

}  // namespace mixtral::iq
