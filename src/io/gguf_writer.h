// GGUF v3 writer, laid out exactly as llama.cpp lays out its files (a copy of a llama.cpp file
// made with it is byte-identical): header, KVs in insertion order, tensor infos in insertion
// order, zero padding to the alignment, then each tensor's data followed by zero padding to the
// alignment. Tensor offsets are the running sum of the padded sizes.
//
// Costs: the header (KVs + tensor infos) is built in memory; tensor data is streamed from the
// caller's buffers to the file. add_tensor(..., const void* data, ...) REFERENCES the data: the
// caller keeps it alive and unchanged until write() returns. The std::vector overload takes
// ownership instead (for data produced on the fly, e.g. by a quantizer). The Producer overload
// makes the data during write(), one tensor at a time, into one buffer the writer reuses: a
// file of any size is written holding only its largest produced tensor in memory.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"

namespace mixtral {

class GgufWriter {
 public:
  // Scalars. Setting an existing key replaces its value in place (keeps its position).
  void set_string(const std::string& key, std::string_view value);
  void set_bool(const std::string& key, bool value);
  void set_u8(const std::string& key, uint8_t value);
  void set_i8(const std::string& key, int8_t value);
  void set_u16(const std::string& key, uint16_t value);
  void set_i16(const std::string& key, int16_t value);
  void set_u32(const std::string& key, uint32_t value);  // "general.alignment" also sets the alignment
  void set_i32(const std::string& key, int32_t value);
  void set_u64(const std::string& key, uint64_t value);
  void set_i64(const std::string& key, int64_t value);
  void set_f32(const std::string& key, float value);
  void set_f64(const std::string& key, double value);
  // Arrays.
  void set_string_array(const std::string& key, const std::vector<std::string>& values);
  void set_f32_array(const std::string& key, const std::vector<float>& values);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& values);
  // Copies `key` from `src` with its type and value unchanged (any type, nested arrays too).
  void copy_kv(const GgufFile& src, const std::string& key);
  void remove(const std::string& key);
  bool has(const std::string& key) const;

  // Data alignment (a power of two; default 32). A value other than 32 is also recorded as the
  // KV general.alignment (uint32); 32 removes that key, as llama.cpp's writers omit it.
  void set_alignment(uint32_t alignment);
  uint32_t alignment() const { return alignment_; }

  // `shape` is outermost first (written as ne innermost first); 1..4 positive dimensions, the
  // innermost a multiple of the dtype's block size; `nbytes` must equal the size that implies.
  // Names are unique and shorter than 64 bytes (llama.cpp's GGML_MAX_NAME).
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  const void* data, size_t nbytes);  // referenced until write()
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  std::vector<uint8_t> data);  // owned
  // Fills dst[0, nbytes) with the tensor's data; called once, by write(), in tensor order.
  using Producer = std::function<void(uint8_t* dst)>;
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  size_t nbytes, Producer produce);  // produced during write()

  // For files larger than memory: write() writes each tensor back to disk while the next one
  // is made, then drops it from the page cache, so writing the file does not evict everything
  // else cached (Linux; elsewhere a no-op). Off by default.
  void set_drop_behind(bool on) { drop_behind_ = on; }

  size_t n_kv() const { return kvs_.size(); }
  size_t n_tensors() const { return tensors_.size(); }

  // Writes `path` (through `path`.tmp, renamed at the end, so a failed write never leaves a
  // half-written file under the final name). Throws Error naming the path on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufType type;
    std::vector<uint8_t> value;  // encoded value (after the u32 type)
  };
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data;
    size_t nbytes;
    std::vector<uint8_t> owned;
    Producer produce;  // set instead of data for produced tensors
  };
  void set(const std::string& key, GgufType type, std::vector<uint8_t> value);
  Tensor& add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
              size_t nbytes);

  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
  uint32_t alignment_ = kGgufDefaultAlignment;
  bool drop_behind_ = false;
};

}  // namespace mixtral
