#include "io/safetensors_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace mixtral {

namespace {

constexpr const char* kWhere = "SafetensorsWriter";

// Runs body(write) to fill `path` through `path`.tmp, then renames it into place; a failure
// removes the temporary and throws Error naming the path.
template <typename WriteBody>
void write_file(const std::string& path, WriteBody body) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, std::string("cannot create ") + tmp + ": " + std::strerror(errno));
  std::setvbuf(f, nullptr, _IOFBF, 1 << 20);
  int err = 0;
  auto write = [&](const void* p, size_t n) {
    if (!err && n && std::fwrite(p, 1, n, f) != n) err = errno ? errno : EIO;
  };
  body(write);
  if (std::fclose(f) != 0 && !err) err = errno ? errno : EIO;
  std::error_code ec;
  if (err) {
    std::filesystem::remove(tmp, ec);
    fail(path, std::string("write failed: ") + std::strerror(err));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail(path, "cannot rename " + tmp + " into place: " + ec.message());
  }
}

}  // namespace

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  for (auto& kv : metadata_)
    if (kv.first == key) {
      kv.second = value;
      return;
    }
  metadata_.emplace_back(key, value);
}

SafetensorsWriter::Tensor& SafetensorsWriter::add(const std::string& name, DType dtype,
                                                  const std::vector<int64_t>& shape, size_t nbytes) {
  const std::string what = "tensor " + name;
  if (name.empty() || name == "__metadata__") fail(kWhere, "invalid tensor name '" + name + "'");
  for (const Tensor& t : tensors_)
    if (t.name == name) fail(kWhere, "duplicate tensor name " + name);
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    fail(kWhere, what + ": dtype " + dtype_name(dtype) + " is not supported (F32, F16, BF16)");
  int64_t numel = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) fail(kWhere, what + ": bad shape " + shape_str(shape));
  const uint64_t expect = uint64_t(numel) * dtype_info(dtype).block_bytes;
  if (nbytes != expect)
    fail(kWhere, what + ": " + std::to_string(nbytes) + " bytes given, " + dtype_name(dtype) + " " +
                     shape_str(shape) + " needs " + std::to_string(expect));
  tensors_.push_back({name, dtype, shape, nullptr, nbytes, {}});
  return tensors_.back();
}

void SafetensorsWriter::add_tensor(const std::string& name, DType dtype,
                                   const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  if (!data && nbytes) fail(kWhere, "tensor " + name + ": no data");
  add(name, dtype, shape, nbytes).data = static_cast<const uint8_t*>(data);
}

void SafetensorsWriter::add_tensor(const std::string& name, DType dtype,
                                   const std::vector<int64_t>& shape, std::vector<uint8_t> data) {
  Tensor& t = add(name, dtype, shape, data.size());
  t.owned = std::move(data);
  t.data = t.owned.data();
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  for (const Tensor& t : tensors_) out.push_back(t.name);
  return out;
}

uint64_t SafetensorsWriter::data_bytes() const {
  uint64_t n = 0;
  for (const Tensor& t : tensors_) n += t.nbytes;
  return n;
}

void SafetensorsWriter::write(const std::string& path) const {
  std::vector<const Tensor*> order;
  for (const Tensor& t : tensors_) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const Tensor* a, const Tensor* b) {
    return dtype_info(a->dtype).block_bytes > dtype_info(b->dtype).block_bytes;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Tensor* t : order) {
    header[t->name] = {{"dtype", safetensors_dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  const uint64_t n = json.size();

  write_file(path, [&](auto&& write) {
    write(&n, 8);
    write(json.data(), json.size());
    for (const Tensor* t : order) write(t->data, t->nbytes);
  });
}

void write_safetensors_index(const std::string& path,
                             const std::vector<std::pair<std::string, std::string>>& weight_map,
                             uint64_t total_size) {
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (const auto& [name, file] : weight_map) map[name] = file;
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", std::move(map)}};
  const std::string text = index.dump(2) + "\n";
  write_file(path, [&](auto&& write) { write(text.data(), text.size()); });
}

}  // namespace mixtral
