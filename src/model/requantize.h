// GGUF (F32 / F16 / BF16 weights) -> GGUF in one of llama.cpp's file types, written as
// llama-quantize (c392e509) writes it, so that from the same input the bytes are the same:
//   - every KV of the input in its order, minus general.quantization_version, general.file_type
//     and the split.* keys, then general.quantization_version = 2 and general.file_type (uint32),
//     then with an importance matrix quantize.imatrix.file (the path as given, at most 127
//     bytes), quantize.imatrix.dataset, quantize.imatrix.entries_count and (when recorded)
//     quantize.imatrix.chunks_count (int32);
//   - tensors in llama-quantize's order (llama_quantize_order), each tensor's type chosen by
//     plan_quant_types, data aligned to 32 bytes;
//   - each quantized row from quantize_rows with the imatrix entry of its tensor and expert
//     (values divided by the entry's ncall, as llama-quantize loads them), or without.
// Rows are quantized independently, so the file does not depend on the thread count.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/imatrix.h"
#include "model/quant_mix.h"

namespace mixtral {

class GgufFile;

struct RequantizeOptions {
  FileType type = FileType::Q8_0;
  const Imatrix* imatrix = nullptr;  // optional; required by the file types that need one
  std::string imatrix_file;          // recorded as quantize.imatrix.file (llama-quantize: the path given)
  int threads = 1;
  // Called before each tensor is converted: its index in the output, the count, and its plan.
  std::function<void(size_t i, size_t n, const PlannedTensor& t)> progress;
};

struct RequantizeTensor {
  PlannedTensor plan;      // name, shape, output type
  DType from;              // type in the input file
  bool weighted = false;   // quantized with importance weights from the imatrix
};

// The output's tensors and types, without doing any work. Throws Error for what llama-quantize
// refuses: a file type that needs an imatrix without one, a quantized input tensor (no
// requantizing), an imatrix entry whose size does not fit its tensor, a very-low-bit tensor
// without importance weights, an architecture other than llama.
std::vector<RequantizeTensor> plan_requantize(const GgufFile& in, const RequantizeOptions& options);

// Whether quantize_rows can write `t` in this build (with or without importance weights).
bool has_quantizer(DType t, bool weighted);
// The output types of `plan` this build cannot write, each once, in first-use order.
std::vector<DType> missing_quantizers(const std::vector<RequantizeTensor>& plan);

// Writes `out` (through a temporary file renamed at the end). Checks before any work that the
// output can be created and is not the input.
void requantize_gguf(const std::string& in, const std::string& out, const RequantizeOptions& options);

}  // namespace mixtral
