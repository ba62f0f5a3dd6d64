// Non-owning views of weights. Weights live in mmapped files; a view is a pointer and a shape,
// never a copy. A Matrix is row-major [rows][cols] in any dtype: the layout of nn.Linear's
// weight (out_features rows of in_features values), and of one expert's slice of a stacked
// GGUF tensor.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace mixtral {

// How a Matrix's bytes are ordered. Rows: row r's blocks at row(r), as checkpoint files store
// them. Tiles16: each full group of 16 rows is stored in the order the int8 kernels read it
// (kernels/weight_tiles.h), in the same bytes the group takes as rows; the rows after the last
// full group (rows % 16) stay as rows, so row(r) is still right for them.
enum class Layout : uint8_t { Rows, Tiles16 };
constexpr int64_t kTileRows = 16;  // rows per group of Tiles16

struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  Layout layout = Layout::Rows;

  bool empty() const { return data == nullptr; }
  size_t row_bytes() const { return mixtral::row_bytes(dtype, cols); }
  size_t bytes() const { return row_bytes() * size_t(rows); }
  // Row r's bytes in Rows layout; for Tiles16 the start of r's group of 16 (r a multiple of 16)
  // or a trailing row.
  const uint8_t* row(int64_t r) const { return data + size_t(r) * row_bytes(); }
  // Rows [first, first + n) as a matrix of their own (no copy). Throws Error when they are not
  // rows of this matrix, or (Tiles16) split a group of 16 (n not a multiple of 16 is fine when
  // the slice runs to the last row).
  Matrix slice_rows(int64_t first, int64_t n) const;
};

// A tensor as a checkpoint file stores it: shape outermost first (PyTorch order; GGUF's ne is
// reversed into this), data contiguous in the file mapping.
struct RawTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace mixtral
