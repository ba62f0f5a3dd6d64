#include "core/tensor.h"

#include "core/error.h"

namespace mixtral {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Matrix Matrix::slice_rows(int64_t first, int64_t n) const {
  if (first < 0 || n < 0 || first + n > rows)
    fail("slice_rows", "rows [" + std::to_string(first) + ", " + std::to_string(first + n) + ") of " +
                           std::to_string(rows));
  if (layout == Layout::Tiles16 && (first % kTileRows != 0 || (n % kTileRows != 0 && first + n != rows)))
    fail("slice_rows", "a tiled matrix splits only at groups of 16 rows");
  return {dtype, n, cols, row(first), layout};
}

}  // namespace mixtral
