// safetensors reader: u64 little-endian header length N | N bytes of JSON | data.
// The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data start, 8 + N); "__metadata__" holds free-form string pairs.
//
// The file is mapped and tensors point into it (no copy). Supported dtypes: F32, F16, BF16.
// The constructor validates the header length, the JSON, every dtype, shape and byte range
// (inside the file, the right size for the shape, no overlaps) and throws Error("PATH: problem").
#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace mixtral {

inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;  // as the official reader

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path, bool in_memory = false);  // in_memory: see MappedFile

  const std::string& path() const { return file_->path(); }
  // Tensors in the order of their data in the file.
  const std::vector<RawTensor>& tensors() const { return tensors_; }
  const RawTensor* find(const std::string& name) const;  // nullptr when absent
  // "__metadata__" string values (non-string values are skipped).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const MappedFile& file() const { return *file_; }

 private:
  std::unique_ptr<MappedFile> file_;
  std::vector<RawTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// "F32" / "F16" / "BF16" for those dtypes; Error for any other (safetensors_writer uses it).
const char* safetensors_dtype_name(DType dtype);

}  // namespace mixtral
