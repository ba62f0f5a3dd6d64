#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mixtral {

namespace {

std::optional<DType> dtype_from_safetensors(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  return std::nullopt;
}

// A non-negative JSON integer that fits int64, or nullopt.
std::optional<int64_t> as_index(const nlohmann::json& j) {
  if (!j.is_number_unsigned() && !j.is_number_integer()) return std::nullopt;
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return int64_t(u);
  }
  const int64_t i = j.get<int64_t>();
  return i >= 0 ? std::optional(i) : std::nullopt;
}

}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: fail("safetensors", std::string("dtype ") + dtype_name(dtype) + " is not supported (F32, F16, BF16)");
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path, bool in_memory)
    : file_(std::make_unique<MappedFile>(path, in_memory)) {
  const std::string& p = file_->path();
  const uint64_t size = file_->size();
  if (size < 8) fail(p, "truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, file_->data(), 8);
  if (n > kSafetensorsMaxHeader)
    fail(p, "header length " + std::to_string(n) + " is over the limit of " +
                std::to_string(kSafetensorsMaxHeader) + " bytes (not a safetensors file?)");
  if (n > size - 8)
    fail(p, "header length " + std::to_string(n) + " runs past the end of the file (size " +
                std::to_string(size) + "); truncated?");
  const char* hb = reinterpret_cast<const char*>(file_->data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hb, hb + n);
  } catch (const nlohmann::json::exception& e) {
    fail(p, std::string("invalid JSON header: ") + e.what());
  }
  if (!header.is_object()) fail(p, "invalid JSON header: not an object");

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;
  struct Range {
    uint64_t begin, end;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object())
        for (const auto& [k, v] : entry.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    const std::string what = "tensor " + name;
    if (!entry.is_object()) fail(p, what + ": header entry is not an object");
    const auto dt = entry.find("dtype");
    const auto sh = entry.find("shape");
    const auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) fail(p, what + ": missing or invalid dtype");
    if (sh == entry.end() || !sh->is_array()) fail(p, what + ": missing or invalid shape");
    if (off == entry.end() || !off->is_array() || off->size() != 2)
      fail(p, what + ": missing or invalid data_offsets (want [begin, end])");

    RawTensor t;
    t.name = name;
    const std::string dts = dt->get<std::string>();
    const std::optional<DType> dtype = dtype_from_safetensors(dts);
    if (!dtype) fail(p, what + " has unsupported dtype " + dts + " (supported: F32, F16, BF16)");
    t.dtype = *dtype;

    int64_t numel = 1;
    for (const nlohmann::json& d : *sh) {
      const std::optional<int64_t> v = as_index(d);
      if (!v) fail(p, what + ": shape " + sh->dump() + " has a negative or non-integer dimension");
      if (__builtin_mul_overflow(numel, *v, &numel))
        fail(p, what + ": shape " + sh->dump() + " element count overflows int64");
      t.shape.push_back(*v);
    }
    const std::optional<int64_t> b = as_index((*off)[0]);
    const std::optional<int64_t> e = as_index((*off)[1]);
    if (!b || !e || *b > *e) fail(p, what + ": invalid data_offsets " + off->dump());
    uint64_t need = 0;
    const uint64_t elem = dtype_info(t.dtype).block_bytes;
    if (__builtin_mul_overflow(uint64_t(numel), elem, &need))
      fail(p, what + ": byte size of shape " + sh->dump() + " overflows");
    if (uint64_t(*e) > data_size)
      fail(p, what + ": data_offsets " + off->dump() + " run past the end of the file (data section " +
                  std::to_string(data_size) + " bytes); truncated?");
    if (uint64_t(*e - *b) != need)
      fail(p, what + ": data_offsets " + off->dump() + " hold " + std::to_string(*e - *b) + " bytes, but " +
                  dts + " " + shape_str(t.shape) + " needs " + std::to_string(need) + " bytes");
    t.data = file_->data() + data_start + uint64_t(*b);
    t.nbytes = size_t(need);
    tensors_.push_back(std::move(t));
    ranges.push_back({uint64_t(*b), uint64_t(*e)});
  }

  // File order, and no two tensors sharing bytes.
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ranges[a].begin != ranges[b].begin ? ranges[a].begin < ranges[b].begin : ranges[a].end < ranges[b].end;
  });
  std::vector<RawTensor> sorted;
  sorted.reserve(tensors_.size());
  for (size_t k = 0; k < order.size(); ++k) {
    if (k > 0 && ranges[order[k]].begin < ranges[order[k - 1]].end)
      fail(p, "tensors " + tensors_[order[k - 1]].name + " and " + tensors_[order[k]].name +
                  " overlap in the data section");
    sorted.push_back(std::move(tensors_[order[k]]));
  }
  tensors_ = std::move(sorted);
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const RawTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace mixtral
