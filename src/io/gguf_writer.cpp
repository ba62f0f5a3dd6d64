#include "io/gguf_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unordered_set>

#include "core/error.h"

namespace mixtral {

namespace {

constexpr const char* kWhere = "GgufWriter";
constexpr size_t kMaxName = 64;  // GGML_MAX_NAME, terminator included

template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

void put_string(std::vector<uint8_t>& b, std::string_view s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

template <typename T>
std::vector<uint8_t> scalar(T v) {
  std::vector<uint8_t> b;
  put(b, v);
  return b;
}

bool power_of_two(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

// A FILE* that throws Error naming the path on any failure and closes itself.
class OutFile {
 public:
  explicit OutFile(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) fail(path, std::string("cannot create: ") + std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~OutFile() {
    if (f_) std::fclose(f_);
  }
  void write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) fail(path_, std::string("write failed: ") + std::strerror(errno));
  }
  void zeros(size_t n) {
    static const uint8_t z[256] = {};
    for (; n > 0; n -= std::min(n, sizeof(z))) write(z, std::min(n, sizeof(z)));
  }
  // Starts writing back what was written since the last call, waits for the part before it
  // (written back while the caller made the next tensor) and drops that from the page cache.
  void drop_behind() {
#ifdef __linux__
    if (std::fflush(f_) != 0) fail(path_, std::string("write failed: ") + std::strerror(errno));
    const int fd = fileno(f_);
    const off_t now = ftello(f_);
    if (started_ > dropped_) {
      // Advice only, except that a failed writeback (EIO, ENOSPC) is reported here.
      if (sync_file_range(fd, dropped_, started_ - dropped_,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0 &&
          (errno == EIO || errno == ENOSPC))
        fail(path_, std::string("write failed: ") + std::strerror(errno));
      posix_fadvise(fd, dropped_, started_ - dropped_, POSIX_FADV_DONTNEED);
      dropped_ = started_;
    }
    sync_file_range(fd, started_, now - started_, SYNC_FILE_RANGE_WRITE);
    started_ = now;
#endif
  }
  void close() {
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) fail(path_, std::string("write failed: ") + std::strerror(errno));
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  off_t started_ = 0, dropped_ = 0;  // drop_behind(): writeback started up to, dropped up to
};

}  // namespace

void GgufWriter::set(const std::string& key, GgufType type, std::vector<uint8_t> value) {
  if (key == "general.alignment") {
    uint32_t a = 0;
    if (type != GgufType::U32 || value.size() != 4)
      fail(kWhere, "general.alignment must be a uint32");
    std::memcpy(&a, value.data(), 4);
    if (!power_of_two(a) || a > (1u << 30))
      fail(kWhere, "general.alignment " + std::to_string(a) + " is not a power of two (1..2^30)");
    alignment_ = a;
  }
  for (Kv& kv : kvs_)
    if (kv.key == key) {
      kv.type = type;
      kv.value = std::move(value);
      return;
    }
  kvs_.push_back({key, type, std::move(value)});
}

void GgufWriter::set_string(const std::string& key, std::string_view v) {
  std::vector<uint8_t> b;
  put_string(b, v);
  set(key, GgufType::STRING, std::move(b));
}
void GgufWriter::set_bool(const std::string& key, bool v) { set(key, GgufType::BOOL, scalar<uint8_t>(v ? 1 : 0)); }
void GgufWriter::set_u8(const std::string& key, uint8_t v) { set(key, GgufType::U8, scalar(v)); }
void GgufWriter::set_i8(const std::string& key, int8_t v) { set(key, GgufType::I8, scalar(v)); }
void GgufWriter::set_u16(const std::string& key, uint16_t v) { set(key, GgufType::U16, scalar(v)); }
void GgufWriter::set_i16(const std::string& key, int16_t v) { set(key, GgufType::I16, scalar(v)); }
void GgufWriter::set_u32(const std::string& key, uint32_t v) { set(key, GgufType::U32, scalar(v)); }
void GgufWriter::set_i32(const std::string& key, int32_t v) { set(key, GgufType::I32, scalar(v)); }
void GgufWriter::set_u64(const std::string& key, uint64_t v) { set(key, GgufType::U64, scalar(v)); }
void GgufWriter::set_i64(const std::string& key, int64_t v) { set(key, GgufType::I64, scalar(v)); }
void GgufWriter::set_f32(const std::string& key, float v) { set(key, GgufType::F32, scalar(v)); }
void GgufWriter::set_f64(const std::string& key, double v) { set(key, GgufType::F64, scalar(v)); }

void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& values) {
  std::vector<uint8_t> b;
  put(b, uint32_t(GgufType::STRING));
  put<uint64_t>(b, values.size());
  for (const std::string& s : values) put_string(b, s);
  set(key, GgufType::ARRAY, std::move(b));
}

void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& values) {
  std::vector<uint8_t> b;
  put(b, uint32_t(GgufType::F32));
  put<uint64_t>(b, values.size());
  for (float v : values) put(b, v);
  set(key, GgufType::ARRAY, std::move(b));
}

void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& values) {
  std::vector<uint8_t> b;
  put(b, uint32_t(GgufType::I32));
  put<uint64_t>(b, values.size());
  for (int32_t v : values) put(b, v);
  set(key, GgufType::ARRAY, std::move(b));
}

void GgufWriter::copy_kv(const GgufFile& src, const std::string& key) {
  const std::optional<GgufType> t = src.type(key);
  if (!t) fail(src.path(), "key " + key + " not found");
  const std::span<const uint8_t> raw = src.raw_value(key);
  set(key, *t, std::vector<uint8_t>(raw.begin(), raw.end()));
}

void GgufWriter::remove(const std::string& key) {
  for (size_t i = 0; i < kvs_.size(); ++i)
    if (kvs_[i].key == key) {
      kvs_.erase(kvs_.begin() + ptrdiff_t(i));
      if (key == "general.alignment") alignment_ = kGgufDefaultAlignment;
      return;
    }
}

bool GgufWriter::has(const std::string& key) const {
  for (const Kv& kv : kvs_)
    if (kv.key == key) return true;
  return false;
}

void GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment == kGgufDefaultAlignment) {
    remove("general.alignment");
    alignment_ = alignment;
  } else {
    set_u32("general.alignment", alignment);  // validates and sets alignment_
  }
}

GgufWriter::Tensor& GgufWriter::add(const std::string& name, DType dtype,
                                    const std::vector<int64_t>& shape, size_t nbytes) {
  const std::string what = "tensor " + name;
  if (name.empty() || name.size() >= kMaxName)
    fail(kWhere, what + ": name must be 1.." + std::to_string(kMaxName - 1) + " bytes");
  for (const Tensor& t : tensors_)
    if (t.name == name) fail(kWhere, "duplicate tensor name " + name);
  if (shape.empty() || shape.size() > 4)
    fail(kWhere, what + ": " + std::to_string(shape.size()) + " dimensions (GGUF allows 1..4)");
  const DTypeInfo info = dtype_info(dtype);
  int64_t numel = 1;
  for (int64_t d : shape)
    if (d <= 0 || __builtin_mul_overflow(numel, d, &numel))
      fail(kWhere, what + ": bad shape " + shape_str(shape));
  if (shape.back() % info.block_size != 0)
    fail(kWhere, what + ": row length " + std::to_string(shape.back()) + " is not a multiple of the " +
                     info.name + " block size " + std::to_string(info.block_size));
  const uint64_t expect = uint64_t(numel / info.block_size) * info.block_bytes;
  if (nbytes != expect)
    fail(kWhere, what + ": " + std::to_string(nbytes) + " bytes given, " + info.name + " " +
                     shape_str(shape) + " needs " + std::to_string(expect));
  tensors_.push_back({name, dtype, shape, nullptr, nbytes, {}, {}});
  return tensors_.back();
}

void GgufWriter::add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* data, size_t nbytes) {
  if (!data) fail(kWhere, "tensor " + name + ": no data");
  add(name, dtype, shape, nbytes).data = static_cast<const uint8_t*>(data);
}

void GgufWriter::add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            std::vector<uint8_t> data) {
  Tensor& t = add(name, dtype, shape, data.size());
  t.owned = std::move(data);
  t.data = t.owned.data();
}

void GgufWriter::add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            size_t nbytes, Producer produce) {
  if (!produce) fail(kWhere, "tensor " + name + ": no producer");
  add(name, dtype, shape, nbytes).produce = std::move(produce);
}

void GgufWriter::write(const std::string& path) const {
  // Header: magic, version, counts, KVs, tensor infos (ne innermost first), padding.
  std::vector<uint8_t> h;
  h.insert(h.end(), {'G', 'G', 'U', 'F'});
  put<uint32_t>(h, 3);
  put<uint64_t>(h, tensors_.size());
  put<uint64_t>(h, kvs_.size());
  for (const Kv& kv : kvs_) {
    put_string(h, kv.key);
    put(h, uint32_t(kv.type));
    h.insert(h.end(), kv.value.begin(), kv.value.end());
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(h, t.name);
    put<uint32_t>(h, uint32_t(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put<int64_t>(h, *d);
    put(h, uint32_t(t.dtype));
    put<uint64_t>(h, offset);
    offset += pad_to(t.nbytes, alignment_);
  }
  h.resize(size_t(pad_to(h.size(), alignment_)), 0);

  const std::string tmp = path + ".tmp";
  try {
    OutFile out(tmp);
    out.write(h.data(), h.size());
    std::vector<uint8_t> produced;  // the one buffer every produced tensor passes through
    for (const Tensor& t : tensors_) {
      const uint8_t* data = t.data;
      if (t.produce) {
        produced.resize(t.nbytes);
        t.produce(produced.data());
        data = produced.data();
      }
      out.write(data, t.nbytes);
      out.zeros(size_t(pad_to(t.nbytes, alignment_) - t.nbytes));
      if (drop_behind_) out.drop_behind();
    }
    if (drop_behind_) out.drop_behind();  // the last tensor too
    out.close();
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) fail(path, "cannot rename " + tmp + ": " + ec.message());
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

}  // namespace mixtral
