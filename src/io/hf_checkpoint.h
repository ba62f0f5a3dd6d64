// A Hugging Face model directory: config.json plus safetensors weights, found as
//   1. model.safetensors, else
//   2. model.safetensors.index.json ("weight_map": tensor name -> shard file; each shard is
//      opened once; the index is the list of tensors), else
//   3. every *.safetensors file in the directory, in sorted order.
// All files stay mapped for the checkpoint's lifetime; tensors point into them.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace mixtral {

class HfCheckpoint {
 public:
  // Throws Error naming the path when the directory, config.json, a shard, or an indexed
  // tensor is missing, or when any file is malformed.
  explicit HfCheckpoint(const std::string& dir, bool in_memory = false);  // in_memory: see MappedFile

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  const RawTensor* find(const std::string& name) const;  // nullptr when absent
  std::vector<const RawTensor*> tensors() const { return tensors_; }  // shard order, then file order
  std::vector<std::string> files() const;                // the safetensors files opened
  std::vector<const MappedFile*> mappings() const;       // the same files, as mapped
  std::string tokenizer_model_path() const;              // dir/tokenizer.model, "" when absent

 private:
  void add(const RawTensor& t, const std::string& file);

  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<const RawTensor*> tensors_;
  std::unordered_map<std::string, const RawTensor*> by_name_;
};

}  // namespace mixtral
