// `quantize` in llama.cpp's file types and the file-type lines of `info` (quantize_files.cpp).
#pragma once
#include <string>

namespace mixtral::cli {

struct LlamaQuantizeArgs {
  std::string in, out, type, imatrix;
  int threads = 0;  // 0: all cores
};

// Converts as llama-quantize does when `type` names a llama.cpp file type and the input is a
// GGUF with F32/F16/BF16 weights; false when the conversion is not one (export_gguf's turn).
bool llama_quantize(const LlamaQuantizeArgs& args);
// "Q4_0, Q4_1, ..., IQ1_M": the 25 published file types.
std::string llama_file_type_names();
// For `info`: file type, bits per weight and per-type tensor counts of a .gguf (else nothing).
void print_gguf_file_summary(const std::string& path);

}  // namespace mixtral::cli
