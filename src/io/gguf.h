// GGUF reader (versions 2 and 3, little-endian): llama.cpp's single-file checkpoint format.
//
// Layout: "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv × (string key, u32 type, value)
//         | n_tensors × (string name, u32 n_dims, i64 ne[n_dims], u32 ggml_type, u64 offset)
//         | zero padding to `general.alignment` (default 32) | tensor data.
// A string is u64 length + bytes (no terminator); an array is u32 element type + u64 count +
// elements. `ne` lists dimensions innermost first; RawTensor::shape is the reverse.
//
// The file is mapped, never copied: tensors point into the mapping, and KV values are decoded
// from it when asked for. The constructor validates everything a hostile file could use to make
// a later reader crash (every length, count, shape, type, offset and overlap) and throws
// Error("PATH: problem") on the first violation.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace mixtral {

// GGUF metadata value types (gguf_type ids).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
inline constexpr uint32_t kGgufTypeCount = 13;

// "uint8", "int32", "float32", "string", "array", ... (gguf-py's names); "?" when out of range.
const char* gguf_type_name(GgufType t);
// Bytes of a fixed-size value type; 0 for STRING and ARRAY.
size_t gguf_type_size(GgufType t);
// ggml's name for a tensor type id ("Q5_0", "IQ2_XS", ...), also for types this engine cannot
// run; "unknown" for ids ggml never had.
const char* ggml_type_name(uint32_t id);

inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxArrayDepth = 4;  // arrays of arrays nested deeper are rejected

class GgufFile {
 public:
  explicit GgufFile(const std::string& path, bool in_memory = false);  // in_memory: see MappedFile

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section

  // --- metadata ---
  bool has(const std::string& key) const { return kv_index_.count(key) != 0; }
  std::vector<std::string> keys() const;  // in file order
  // The value's type, and for arrays the element type; nullopt when the key is absent.
  std::optional<GgufType> type(const std::string& key) const;
  std::optional<GgufType> array_type(const std::string& key) const;

  // Typed getters: nullopt when the key is absent; Error("PATH: key K has type T, expected U")
  // when it holds another type.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;   // any integer type
  std::optional<double> get_float(const std::string& key) const;  // float32/64, or any integer
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::vector<std::string>> get_string_array(const std::string& key) const;
  std::optional<std::vector<float>> get_float_array(const std::string& key) const;  // also ints
  std::optional<std::vector<int64_t>> get_int_array(const std::string& key) const;

  // The encoded value exactly as stored after the key's u32 type (for arrays: element type,
  // count, elements). GgufWriter::copy_kv uses it to carry any value over unchanged.
  std::span<const uint8_t> raw_value(const std::string& key) const;

  // --- tensors, in file order ---
  const std::vector<RawTensor>& tensors() const { return tensors_; }
  const RawTensor* find(const std::string& name) const;  // nullptr when absent
  const MappedFile& file() const { return *file_; }
  MappedFile& file() { return *file_; }  // to change bytes read into memory (MappedFile::writable)

 private:
  struct Kv {
    std::string key;
    GgufType type;
    GgufType elem = GgufType::U8;  // arrays only
    uint64_t count = 0;            // arrays only
    size_t value_begin = 0;        // first byte after the u32 type
    size_t value_end = 0;
    size_t data_begin = 0;         // scalars: the value; strings: the bytes; arrays: element 0
  };
  const Kv* kv(const std::string& key) const;
  [[noreturn]] void type_error(const Kv& kv, const char* expected) const;

  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<Kv> kvs_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<RawTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace mixtral
