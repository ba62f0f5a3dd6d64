// safetensors writer, in the official layout: u64 header length | JSON header padded with
// spaces to a multiple of 8 | tensor data packed back to back with no gaps (the official reader
// requires that). Data is laid out by element size, largest first (F32, then F16/BF16), in
// insertion order within a size, so every tensor stays aligned to its element size; the JSON
// lists "__metadata__" first, then the tensors in data order.
//
// Costs: add_tensor(..., const void* data, ...) REFERENCES the data (keep it alive and
// unchanged until write() returns); the std::vector overload takes ownership. The header is
// built in memory, tensor data is streamed to the file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace mixtral {

class SafetensorsWriter {
 public:
  // Adds "__metadata__": {key: value} (e.g. "format": "pt").
  void set_metadata(const std::string& key, const std::string& value);

  // dtype F32, F16 or BF16; `shape` outermost first, dimensions >= 0; `nbytes` must equal
  // numel × element size. Names are unique and not "__metadata__".
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  const void* data, size_t nbytes);  // referenced until write()
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  std::vector<uint8_t> data);  // owned

  std::vector<std::string> names() const;  // insertion order
  uint64_t data_bytes() const;             // sum of tensor sizes (the index's total_size)

  // Writes `path` (through `path`.tmp + rename). Throws Error naming the path on failure.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data;
    size_t nbytes;
    std::vector<uint8_t> owned;
  };
  Tensor& add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, size_t nbytes);

  std::vector<std::pair<std::string, std::string>> metadata_;
  std::vector<Tensor> tensors_;
};

// Writes a Hugging Face shard index (model.safetensors.index.json):
//   {"metadata": {"total_size": total_size}, "weight_map": {tensor name: shard file name}}
// `weight_map` pairs are (tensor name, shard file name relative to the index's folder).
void write_safetensors_index(const std::string& path,
                             const std::vector<std::pair<std::string, std::string>>& weight_map,
                             uint64_t total_size);

}  // namespace mixtral
