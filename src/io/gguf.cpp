#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>

#include "core/error.h"

namespace mixtral {

const char* gguf_type_name(GgufType t) {
  static const char* const names[kGgufTypeCount] = {
      "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
      "bool",  "string", "array", "uint64", "int64", "float64"};
  const uint32_t i = uint32_t(t);
  return i < kGgufTypeCount ? names[i] : "?";
}

size_t gguf_type_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::STRING: case GgufType::ARRAY: return 0;
  }
  return 0;
}

const char* ggml_type_name(uint32_t id) {
  // ggml's enum ggml_type; ids 4, 5, 31-33 and 36-38 were removed from ggml but stay reserved.
  static const char* const names[] = {
      "F32",      "F16",      "Q4_0",     "Q4_1",       "Q4_2",       "Q4_3",       "Q5_0",
      "Q5_1",     "Q8_0",     "Q8_1",     "Q2_K",       "Q3_K",       "Q4_K",       "Q5_K",
      "Q6_K",     "Q8_K",     "IQ2_XXS",  "IQ2_XS",     "IQ3_XXS",    "IQ1_S",      "IQ4_NL",
      "IQ3_S",    "IQ2_S",    "IQ4_XS",   "I8",         "I16",        "I32",        "I64",
      "F64",      "IQ1_M",    "BF16",     "Q4_0_4_4",   "Q4_0_4_8",   "Q4_0_8_8",   "TQ1_0",
      "TQ2_0",    "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
  return id < std::size(names) ? names[id] : "unknown";
}

namespace {

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Reads integer value `t` at `p`; a uint64 above INT64_MAX is an error.
int64_t load_int(const uint8_t* p, GgufType t, const std::string& path, const std::string& key) {
  switch (t) {
    case GgufType::U8: return load<uint8_t>(p);
    case GgufType::I8: return load<int8_t>(p);
    case GgufType::U16: return load<uint16_t>(p);
    case GgufType::I16: return load<int16_t>(p);
    case GgufType::U32: return load<uint32_t>(p);
    case GgufType::I32: return load<int32_t>(p);
    case GgufType::I64: return load<int64_t>(p);
    case GgufType::U64: {
      const uint64_t u = load<uint64_t>(p);
      if (u > uint64_t(std::numeric_limits<int64_t>::max()))
        fail(path, "key " + key + ": uint64 value " + std::to_string(u) + " does not fit in int64");
      return int64_t(u);
    }
    default: return 0;
  }
}

// A bounds-checked cursor over the mapping. Every read states what it reads, so a truncated or
// lying file gets a message that says where it went wrong.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  // `what` names the thing being read, `part` (optional) the field of it; the message is only
  // built on failure, so walking 32000 vocabulary strings costs no allocations.
  void need(uint64_t n, const std::string& what, const char* part = nullptr) const {
    if (n > remaining())
      fail(path_, "truncated: " + what + (part ? part : "") + " at offset " +
                      std::to_string(pos_) + " needs " + std::to_string(n) +
                      " bytes, the file has " + std::to_string(remaining()) + " left (size " +
                      std::to_string(size_) + ")");
  }
  void skip(uint64_t n, const std::string& what, const char* part = nullptr) {
    need(n, what, part);
    pos_ += size_t(n);
  }
  template <typename T>
  T read(const std::string& what, const char* part = nullptr) {
    need(sizeof(T), what, part);
    T v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  // A GGUF string: u64 length, then that many bytes. Returns the offset of the bytes.
  size_t string(const std::string& what, uint64_t* len_out) {
    const uint64_t len = read<uint64_t>(what, " string length");
    if (len > remaining())
      fail(path_, what + ": string length " + std::to_string(len) + " at offset " +
                      std::to_string(pos_ - 8) + " runs past the end of the file (size " +
                      std::to_string(size_) + "; corrupt or truncated?)");
    const size_t at = pos_;
    pos_ += size_t(len);
    *len_out = len;
    return at;
  }
  std::string read_string(const std::string& what) {
    uint64_t len = 0;
    const size_t at = string(what, &len);
    return std::string(reinterpret_cast<const char*>(data_ + at), size_t(len));
  }
  GgufType value_type(const std::string& what, const char* part) {
    const uint32_t t = read<uint32_t>(what, part);
    if (t >= kGgufTypeCount)
      fail(path_, what + ": unknown value type " + std::to_string(t) + " at offset " +
                      std::to_string(pos_ - 4));
    return GgufType(t);
  }

  // Skips one value of type `t` (already read), validating it; `depth` counts enclosing arrays.
  void skip_value(GgufType t, int depth, const std::string& what) {
    switch (t) {
      case GgufType::STRING: {
        uint64_t len = 0;
        string(what, &len);
        return;
      }
      case GgufType::BOOL: {
        const uint8_t b = read<uint8_t>(what);
        if (b > 1) fail(path_, what + ": invalid bool value " + std::to_string(b));
        return;
      }
      case GgufType::ARRAY: {
        const GgufType elem = value_type(what, " array element type");
        const uint64_t n = read<uint64_t>(what, " array element count");
        skip_array(elem, n, depth + 1, what);
        return;
      }
      default: skip(gguf_type_size(t), what); return;
    }
  }
  void skip_array(GgufType elem, uint64_t n, int depth, const std::string& what) {
    if (depth > kGgufMaxArrayDepth)
      fail(path_, what + ": arrays nested more than " + std::to_string(kGgufMaxArrayDepth) +
                      " deep");
    // Every element takes at least this many bytes: a count that cannot fit is rejected before
    // anything walks or allocates for it.
    const size_t fixed = gguf_type_size(elem);
    const size_t min_bytes = fixed ? fixed : elem == GgufType::STRING ? 8 : 12;
    if (n > remaining() / min_bytes)
      fail(path_, what + ": array count " + std::to_string(n) + " of " + gguf_type_name(elem) +
                      " cannot fit in the " + std::to_string(remaining()) +
                      " bytes left in the file (corrupt or truncated?)");
    if (fixed && elem != GgufType::BOOL) {
      pos_ += size_t(n) * fixed;
      return;
    }
    for (uint64_t i = 0; i < n; ++i) skip_value(elem, depth, what);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  const std::string& path_;
  size_t pos_ = 0;
};

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

GgufFile::GgufFile(const std::string& path, bool in_memory) : file_(std::make_unique<MappedFile>(path)) {
  const std::string& p = file_->path();
  Cursor c(file_->data(), file_->size(), p);

  // --- header ---
  constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;
  if (file_->size() < kHeaderBytes)
    fail(p, "truncated: " + std::to_string(file_->size()) +
                " bytes is shorter than a GGUF header (24 bytes)");
  const uint8_t* magic = file_->data();
  if (std::memcmp(magic, "GGUF", 4) != 0) fail(p, "bad magic: not a GGUF file");
  c.skip(4, "magic");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1)
    fail(p, "unsupported GGUF version 1 (too old: re-convert it with a current llama.cpp)");
  if (version_ != 2 && version_ != 3) {
    const bool swapped = (version_ & 0xffffu) == 0 && version_ != 0;
    fail(p, "unsupported GGUF version " + std::to_string(version_) +
                (swapped ? " (a big-endian file?)" : " (supported: 2, 3)"));
  }
  const uint64_t n_tensors = c.read<uint64_t>("n_tensors");
  const uint64_t n_kv = c.read<uint64_t>("n_kv");
  // Smallest possible entries: KV = key length 8 + type 4 + 1-byte value; tensor info = name
  // length 8 + n_dims 4 + one ne 8 + type 4 + offset 8.
  if (n_kv > c.remaining() / 13)
    fail(p, "n_kv " + std::to_string(n_kv) + " cannot fit in a file of " +
                std::to_string(file_->size()) + " bytes (corrupt or truncated?)");
  if (n_tensors > c.remaining() / 32 || n_kv * 13 + n_tensors * 32 > c.remaining())
    fail(p, "n_tensors " + std::to_string(n_tensors) + " cannot fit in a file of " +
                std::to_string(file_->size()) + " bytes (corrupt or truncated?)");

  // --- metadata ---
  kvs_.reserve(size_t(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    Kv kv;
    kv.key = c.read_string("key #" + std::to_string(i));
    const std::string what = "key " + kv.key;
    kv.type = c.value_type(what, " value type");
    kv.value_begin = c.pos();
    if (kv.type == GgufType::ARRAY) {
      kv.elem = c.value_type(what, " array element type");
      kv.count = c.read<uint64_t>(what, " array element count");
      kv.data_begin = c.pos();
      c.skip_array(kv.elem, kv.count, 1, what);
    } else {
      kv.data_begin = kv.type == GgufType::STRING ? c.pos() + 8 : c.pos();
      c.skip_value(kv.type, 0, what);
    }
    kv.value_end = c.pos();
    if (!kv_index_.emplace(kv.key, kvs_.size()).second) fail(p, "duplicate key " + kv.key);
    kvs_.push_back(std::move(kv));
  }

  if (has("general.alignment")) {
    const int64_t a = *get_int("general.alignment");
    if (a <= 0 || a > (int64_t(1) << 30) || (a & (a - 1)) != 0)
      fail(p, "general.alignment " + std::to_string(a) + " is not a power of two (1..2^30)");
    alignment_ = uint32_t(a);
  }

  // --- tensor infos ---
  struct Info {
    uint64_t offset;
    size_t nbytes;
  };
  std::vector<Info> infos;
  infos.reserve(size_t(n_tensors));
  tensors_.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    RawTensor t;
    t.name = c.read_string("tensor info #" + std::to_string(i) + " name");
    const std::string what = "tensor " + t.name;
    const uint32_t n_dims = c.read<uint32_t>(what, " n_dims");
    if (n_dims == 0 || n_dims > 4)
      fail(p, what + ": n_dims " + std::to_string(n_dims) + " is not in 1..4");
    int64_t ne[4] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; ++d) {
      ne[d] = c.read<int64_t>(what, " ne");
      if (ne[d] <= 0)
        fail(p, what + ": dimension ne[" + std::to_string(d) + "] = " + std::to_string(ne[d]) +
                    " is not positive");
    }
    const uint32_t type_id = c.read<uint32_t>(what, " type");
    const uint64_t offset = c.read<uint64_t>(what, " offset");

    const std::optional<DType> dt = dtype_from_ggml(type_id);
    if (!dt)
      fail(p, what + " has unsupported type " + ggml_type_name(type_id) + " (ggml type " +
                  std::to_string(type_id) + ")");
    t.dtype = *dt;
    const DTypeInfo info = dtype_info(t.dtype);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d)
      if (__builtin_mul_overflow(numel, ne[d], &numel))
        fail(p, what + ": element count of ne [" + std::to_string(ne[0]) + ", ...] overflows int64");
    if (ne[0] % info.block_size != 0)
      fail(p, what + ": row length ne[0] = " + std::to_string(ne[0]) +
                  " is not a multiple of the " + info.name + " block size " +
                  std::to_string(info.block_size));
    uint64_t nbytes = 0;
    if (mul_overflows(uint64_t(numel / info.block_size), info.block_bytes, &nbytes))
      fail(p, what + ": byte size overflows");
    if (offset % alignment_ != 0)
      fail(p, what + ": data offset " + std::to_string(offset) +
                  " is not aligned to general.alignment " + std::to_string(alignment_));
    for (int d = int(n_dims) - 1; d >= 0; --d) t.shape.push_back(ne[d]);
    t.nbytes = size_t(nbytes);
    if (!tensor_index_.emplace(t.name, tensors_.size()).second)
      fail(p, "duplicate tensor name " + t.name);
    tensors_.push_back(std::move(t));
    infos.push_back({offset, size_t(nbytes)});
  }

  // --- data section: aligned start, every tensor inside the file, no two overlapping ---
  data_offset_ = (uint64_t(c.pos()) + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t size = file_->size();
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Info& in = infos[i];
    if (data_offset_ > size || in.offset > data_size || in.nbytes > data_size - in.offset)
      fail(p, "tensor " + tensors_[i].name + ": data at offset " + std::to_string(in.offset) +
                  " + " + std::to_string(in.nbytes) + " bytes runs past the end of the file (size " +
                  std::to_string(size) + ", data section at " + std::to_string(data_offset_) +
                  "); truncated?");
    tensors_[i].data = file_->data() + data_offset_ + in.offset;
  }
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return infos[a].offset < infos[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const Info& prev = infos[order[k - 1]];
    if (infos[order[k]].offset < prev.offset + prev.nbytes)
      fail(p, "tensors " + tensors_[order[k - 1]].name + " and " + tensors_[order[k]].name +
                  " overlap in the data section");
  }
  // --no-mmap: the header was read through the mapping; now the whole file is read into memory
  // with the data section on a 64-byte boundary (files align it to 32 bytes by default), so
  // the weights' 64-byte loads are aligned.
  if (in_memory) {
    auto mem = std::make_unique<MappedFile>(p, true, data_offset_);
    if (mem->size() != file_->size()) fail(p, "changed size while being read");
    for (RawTensor& t : tensors_) t.data = mem->data() + (t.data - file_->data());
    file_ = std::move(mem);
  }
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(kvs_.size());
  for (const Kv& kv : kvs_) out.push_back(kv.key);
  return out;
}

const GgufFile::Kv* GgufFile::kv(const std::string& key) const {
  const auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

std::optional<GgufType> GgufFile::type(const std::string& key) const {
  const Kv* k = kv(key);
  return k ? std::optional(k->type) : std::nullopt;
}

std::optional<GgufType> GgufFile::array_type(const std::string& key) const {
  const Kv* k = kv(key);
  return k && k->type == GgufType::ARRAY ? std::optional(k->elem) : std::nullopt;
}

void GgufFile::type_error(const Kv& k, const char* expected) const {
  std::string t = gguf_type_name(k.type);
  if (k.type == GgufType::ARRAY) t += std::string("[") + gguf_type_name(k.elem) + "]";
  fail(path(), "key " + k.key + " has type " + t + ", expected " + expected);
}

std::span<const uint8_t> GgufFile::raw_value(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return {};
  return {file_->data() + k->value_begin, k->value_end - k->value_begin};
}

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  if (k->type != GgufType::STRING) type_error(*k, "string");
  const auto* s = reinterpret_cast<const char*>(file_->data() + k->data_begin);
  return std::string(s, k->value_end - k->data_begin);
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  if (!is_integer(k->type)) type_error(*k, "integer");
  return load_int(file_->data() + k->data_begin, k->type, path(), key);
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  const uint8_t* d = file_->data() + k->data_begin;
  if (k->type == GgufType::F32) return double(load<float>(d));
  if (k->type == GgufType::F64) return load<double>(d);
  if (is_integer(k->type)) return double(load_int(d, k->type, path(), key));
  type_error(*k, "float");
}

std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  if (k->type != GgufType::BOOL) type_error(*k, "bool");
  return file_->data()[k->data_begin] != 0;
}

std::optional<std::vector<std::string>> GgufFile::get_string_array(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  if (k->type != GgufType::ARRAY || k->elem != GgufType::STRING) type_error(*k, "array[string]");
  std::vector<std::string> out;
  out.reserve(size_t(k->count));
  const uint8_t* d = file_->data() + k->data_begin;
  for (uint64_t i = 0; i < k->count; ++i) {  // lengths were validated by the constructor
    const uint64_t len = load<uint64_t>(d);
    out.emplace_back(reinterpret_cast<const char*>(d + 8), size_t(len));
    d += 8 + len;
  }
  return out;
}

std::optional<std::vector<float>> GgufFile::get_float_array(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  const bool ok = k->type == GgufType::ARRAY &&
                  (k->elem == GgufType::F32 || k->elem == GgufType::F64 || is_integer(k->elem));
  if (!ok) type_error(*k, "array of numbers");
  std::vector<float> out(size_t(k->count));
  const uint8_t* d = file_->data() + k->data_begin;
  const size_t step = gguf_type_size(k->elem);
  for (size_t i = 0; i < out.size(); ++i, d += step) {
    if (k->elem == GgufType::F32) out[i] = load<float>(d);
    else if (k->elem == GgufType::F64) out[i] = float(load<double>(d));
    else out[i] = float(load_int(d, k->elem, path(), key));
  }
  return out;
}

std::optional<std::vector<int64_t>> GgufFile::get_int_array(const std::string& key) const {
  const Kv* k = kv(key);
  if (!k) return std::nullopt;
  if (k->type != GgufType::ARRAY || !is_integer(k->elem)) type_error(*k, "array of integers");
  std::vector<int64_t> out(size_t(k->count));
  const uint8_t* d = file_->data() + k->data_begin;
  const size_t step = gguf_type_size(k->elem);
  for (size_t i = 0; i < out.size(); ++i, d += step) out[i] = load_int(d, k->elem, path(), key);
  return out;
}

const RawTensor* GgufFile::find(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace mixtral
