// ../shared/fixtures/blocks (QUANTS.md section 4): one 64x512 matrix W quantized by ggml to each
// tensor type, ggml's dequantization of it, ggml's CPU product with three activation rows X, and
// the importance weights QW the IQ types were quantized with.
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"
#include "test_util.h"

namespace mixtral::testing {

inline std::string blocks_dir() { return shared_dir() + "/fixtures/blocks"; }

inline std::vector<float> read_f32_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

struct BlocksFixture {
  static constexpr int64_t kRows = 64, kCols = 512, kTokens = 3;
  DType type;
  std::vector<uint8_t> w;         // the quantized matrix, kRows rows of row_bytes(type, kCols)
  std::vector<float> dequant;     // [kRows][kCols], ggml's to_float of w
  std::vector<float> matmul;      // [kTokens][kRows], ggml_mul_mat(w, x)
  std::vector<float> W, QW, X;    // the inputs: [kRows][kCols], [kCols], [kTokens][kCols]
  bool imatrix = false;           // whether ggml was given QW (the IQ types)
};

// stem: "q4_1", "iq2_xxs", ...  Call after REQUIRE_PATH(blocks_dir()).
inline BlocksFixture load_blocks(const std::string& stem) {
  BlocksFixture f;
  const std::string d = blocks_dir() + "/";
  GgufFile g(d + stem + ".gguf");
  const RawTensor* w = g.find("w");
  f.type = w->dtype;
  f.w.assign(w->data, w->data + w->nbytes);
  f.imatrix = g.get_bool("blocks.imatrix").value_or(false);
  f.dequant = read_f32_file(d + stem + ".dequant.f32");
  f.matmul = read_f32_file(d + stem + ".matmul.f32");
  f.W = read_f32_file(d + "W.f32");
  f.QW = read_f32_file(d + "QW.f32");
  f.X = read_f32_file(d + "X.f32");
  return f;
}

}  // namespace mixtral::testing
