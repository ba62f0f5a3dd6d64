// A loaded model: its Config, its Weights (views into the mapped files, which the Model keeps
// open) and its Tokenizer. Loading understands Hugging Face directories and GGUF files and maps
// their tensor names onto Weights; nothing else in the engine knows about file formats.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/expert_cache.h"
#include "model/weights.h"
#include "text/tokenizer.h"

namespace mixtral {

class GgufFile;
class HfCheckpoint;
class MappedFile;

struct LoadOptions {
  std::optional<int64_t> experts_per_token;  // overrides the config's top-k
  bool prefetch = false;                     // read every page once after mapping (--preload)
  bool no_mmap = false;                      // read the files into memory instead of mapping them
  // Weights in writable memory (no_mmap, and the resident copies of offloading; not the expert
  // slots) are tiled in place (kernels/weight_tiles.h: Q8_0/Q4_0/Q4_K/Q6_K in the order the int8
  // kernels read them; the same values) — all but the embedding, which is read a row at a time, and the
  // LM head when it is the embedding. Mapped files are never tiled (read-only pages). Off
  // (--no-tiles): weights stay in file order, for A/B comparisons and for exporting.
  bool tiles = true;

  // Experts out of memory (--memory-budget). With a budget, everything but the experts is read
  // into memory and the experts go through an ExpertCache whose slots fill what the budget
  // leaves after the resident weights and `runtime_bytes` (the KV cache and activations the
  // caller will allocate). A budget too small for one expert slot is an Error.
  std::optional<uint64_t> memory_budget;
  // No explicit budget: offload only when the files do not fit in what the machine has
  // available (budget: 90 % of MemAvailable); otherwise load as usual.
  bool auto_budget = false;
  std::function<uint64_t(const Config&)> runtime_bytes;
  ExpertCacheOptions cache;  // policy, prefetch, I/O threads (n_slots is computed)
  bool fill_cache = true;    // read experts into every slot while loading
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
  // The expert cache when the experts are offloaded (their Matrix views in weights() are then
  // empty: forward() gets them from here); nullptr when every weight is in memory. Its state is
  // a resource shared by every forward pass, hence mutable through a const Model.
  ExpertCache* expert_cache() const { return experts_.get(); }
  // Bytes of weights held in memory (all of them, or all but the experts when offloaded).
  size_t resident_weight_bytes() const;
  // Whether weight matrices are held as tiles (LoadOptions::tiles took effect: a model with
  // tileable dtypes in writable memory), and the seconds loading spent tiling them.
  bool tiled() const { return tiled_; }
  double tile_seconds() const { return tile_seconds_; }

 private:
  Model() = default;
  void bind_gguf(const GgufFile& g);
  void bind_hf(const HfCheckpoint& hf);
  // Moves the non-expert weights into memory and hands the experts to an ExpertCache.
  void offload_experts(const std::vector<const MappedFile*>& files, uint64_t budget, const LoadOptions& o);
  // Tiles each (matrix, its bytes made writable) in place, on all cores (LoadOptions::tiles).
  void tile(const std::vector<std::pair<Matrix*, uint8_t*>>& jobs);

  std::string path_;
  Config config_;
  Weights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<HfCheckpoint> hf_;
  std::vector<std::unique_ptr<uint8_t, void (*)(void*)>> owned_;  // resident copies (offloading)
  std::unique_ptr<ExpertCache> experts_;
  bool tiled_ = false;
  double tile_seconds_ = 0;
};

}  // namespace mixtral
