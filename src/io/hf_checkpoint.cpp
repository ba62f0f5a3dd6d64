#include "io/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_set>

#include "core/error.h"

namespace mixtral {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("invalid JSON: ") + e.what());
  }
}

}  // namespace

HfCheckpoint::HfCheckpoint(const std::string& dir, bool in_memory) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir, "not a directory (expected a Hugging Face model folder)");
  const fs::path root(dir);
  const std::string config_path = (root / "config.json").string();
  if (!fs::is_regular_file(config_path, ec)) fail(config_path, "missing (not a Hugging Face model folder?)");
  config_ = read_json(config_path);
  if (!config_.is_object()) fail(config_path, "not a JSON object");

  const fs::path single = root / "model.safetensors";
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single.string(), in_memory));
    for (const RawTensor& t : files_.back()->tensors()) add(t, single.string());
  } else if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    const nlohmann::json index = read_json(ip);
    const auto wm = index.is_object() ? index.find("weight_map") : index.end();
    if (wm == index.end() || !wm->is_object()) fail(ip, "missing \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensor names
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) fail(ip, "weight_map entry " + name + " is not a file name");
      const std::string s = shard.get<std::string>();
      const fs::path sp(s);
      const bool escapes = std::any_of(sp.begin(), sp.end(), [](const fs::path& c) { return c == ".."; });
      if (s.empty() || sp.is_absolute() || escapes)
        fail(ip, "weight_map entry " + name + ": shard '" + s + "' is not a file inside " + dir);
      by_shard[s].push_back(name);
    }
    for (const auto& [shard, names] : by_shard) {
      const std::string sp = (root / shard).string();
      files_.push_back(std::make_unique<SafetensorsFile>(sp, in_memory));
      const SafetensorsFile& f = *files_.back();
      for (const std::string& name : names)
        if (!f.find(name)) fail(sp, "tensor " + name + " is listed in " + ip + " but missing from this shard");
      // File order within the shard, only the tensors the index assigns to it.
      const std::unordered_set<std::string> listed(names.begin(), names.end());
      for (const RawTensor& t : f.tensors())
        if (listed.count(t.name)) add(t, sp);
    }
  } else {
    std::vector<std::string> shards;
    for (const fs::directory_entry& e : fs::directory_iterator(root, ec))
      if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) shards.push_back(e.path().string());
    if (ec) fail(dir, "cannot list: " + ec.message());
    std::sort(shards.begin(), shards.end());
    if (shards.empty()) fail(dir, "no model.safetensors, model.safetensors.index.json or *.safetensors files");
    for (const std::string& sp : shards) {
      files_.push_back(std::make_unique<SafetensorsFile>(sp, in_memory));
      for (const RawTensor& t : files_.back()->tensors()) add(t, sp);
    }
  }
}

void HfCheckpoint::add(const RawTensor& t, const std::string& file) {
  if (!by_name_.emplace(t.name, &t).second)
    fail(file, "tensor " + t.name + " appears in more than one file of " + dir_);
  tensors_.push_back(&t);
}

const RawTensor* HfCheckpoint::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<const MappedFile*> HfCheckpoint::mappings() const {
  std::vector<const MappedFile*> out;
  for (const auto& f : files_) out.push_back(&f->file());
  return out;
}

std::vector<std::string> HfCheckpoint::files() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

std::string HfCheckpoint::tokenizer_model_path() const {
  const fs::path p = fs::path(dir_) / "tokenizer.model";
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? p.string() : std::string();
}

}  // namespace mixtral
