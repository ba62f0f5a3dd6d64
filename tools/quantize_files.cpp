// `quantize` in llama.cpp's file types (requantize.h) and the file-type lines of `info`.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include "quantize_files.h"

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/imatrix.h"
#include "model/quant_mix.h"
#include "model/requantize.h"

namespace mixtral::cli {

namespace {

std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool is_gguf(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec) && path.size() > 5 && path.substr(path.size() - 5) == ".gguf";
}

bool unquantized_weights(const GgufFile& g) {
  for (const RawTensor& t : g.tensors())
    if (is_quantized(t.dtype)) return false;
  return true;
}

}  // namespace

std::string llama_file_type_names() {
  std::string s;
  for (FileType t : published_file_types()) s += std::string(s.empty() ? "" : ", ") + file_type_info(t).name;
  return s;
}

// Handles the conversion when `type` names a llama.cpp file type (not one of the Q3_K/Q4_K/Q5_K
// aliases, which keep this tool's meaning: all-Q4_K etc.) and the input is a GGUF file with
// F32/F16/BF16 weights. Returns false to leave the conversion to export_gguf.
bool llama_quantize(const LlamaQuantizeArgs& a) {
  const std::optional<FileType> ft = file_type_from_name(a.type);
  const bool named = ft && upper(a.type) == file_type_info(*ft).name;
  const bool gguf = is_gguf(a.in);
  if (!named || !gguf) {
    if (!a.imatrix.empty()) fail("--imatrix", "needs a llama.cpp file type (" + llama_file_type_names() + ") and a .gguf input with F32/F16/BF16 weights");
    return false;
  }
  const FileTypeInfo& info = file_type_info(*ft);
  if (info.needs_imatrix && a.imatrix.empty()) fail("quantize", kImatrixRequiredReason);
  if (!unquantized_weights(GgufFile(a.in))) {
    if (!a.imatrix.empty()) fail("--imatrix", a.in + " holds quantized weights: start from an F32/F16/BF16 GGUF");
    return false;
  }
  RequantizeOptions o;
  o.type = *ft;
  o.threads = a.threads > 0 ? a.threads : ThreadPool::default_threads();
  Imatrix imatrix;
  if (!a.imatrix.empty()) {
    imatrix = read_imatrix(a.imatrix);
    o.imatrix = &imatrix;
    o.imatrix_file = a.imatrix;
  }
  const auto t0 = Clock::now();
  o.progress = [t0](size_t i, size_t n, const PlannedTensor& t) {
    std::fprintf(stderr, "\rquantize [%3zu/%3zu] %-32s -> %-7s %.1f s", i + 1, n, t.tensor.name.c_str(), dtype_name(t.type), seconds_since(t0));
  };
  requantize_gguf(a.in, a.out, o);
  std::fprintf(stderr, "\nwrote %s (%s) in %.1f s\n", a.out.c_str(), info.name, seconds_since(t0));
  return true;
}

// For `info` on a GGUF file: its file type, bits per weight over all tensors, and how many
// tensors of each type it holds. Reads only the header.
void print_gguf_file_summary(const std::string& path) {
  if (!is_gguf(path)) return;
  const GgufFile g(path);
  std::map<std::string, int> counts;
  uint64_t bytes = 0, values = 0;
  for (const RawTensor& t : g.tensors()) {
    ++counts[dtype_name(t.dtype)];
    bytes += t.nbytes;
    values += uint64_t(t.numel());
  }
  const auto ft = g.get_int("general.file_type");
  std::cout << "file type:        " << (ft ? file_type_name(uint32_t(*ft)) : std::string("not recorded")) << "\n";
  std::printf("bits per weight:  %.2f (%llu bytes of tensors, %llu values)\n", values ? 8.0 * double(bytes) / double(values) : 0.0,
              (unsigned long long)bytes, (unsigned long long)values);
  std::cout << "tensor types:     ";
  bool first = true;
  for (const auto& [name, n] : counts) std::cout << (first ? "" : ", ") << name << " " << n, first = false;
  std::cout << std::endl;
}

}  // namespace mixtral::cli
