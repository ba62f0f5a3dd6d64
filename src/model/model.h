// A loaded model: its Config, its Weights (views into the mapped files, which the Model keeps
// open) and its Tokenizer. Loading understands Hugging Face directories and GGUF files and maps
// their tensor names onto Weights; nothing else in the engine knows about file formats.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "text/tokenizer.h"

namespace mixtral {

class GgufFile;
class HfCheckpoint;

struct LoadOptions {
  std::optional<int64_t> experts_per_token;  // overrides the config's top-k
  bool prefetch = false;                     // read every page once after mapping (--preload)
  bool no_mmap = false;                      // read the files into memory instead of mapping them
};

class Model {
 public:
  // `path`: a directory (Hugging Face) or a .gguf file. Throws Error naming the file and problem.
  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& options = {});
  ~Model();

  const Config& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const std::string& path() const { return path_; }
  std::string format() const;  // "gguf" or "safetensors"
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  // Throws Error when the checkpoint came without a tokenizer.
  const Tokenizer& tokenizer() const;
  // dtype name -> count of weight tensors, e.g. "Q4_K: 64, F32: 65"
  std::string dtype_summary() const;
  // Bytes of weight data the model references.
  size_t weight_bytes() const;
  // Reads every page of every weight once (so the first tokens do not wait on the disk).
  uint64_t prefetch() const;

 private:
  Model() = default;
  void bind_gguf(const GgufFile& g);
  void bind_hf(const HfCheckpoint& hf);

  std::string path_;
  Config config_;
  Weights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<HfCheckpoint> hf_;
};

}  // namespace mixtral
