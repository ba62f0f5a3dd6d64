// Config: the plain numbers that define a Mixtral-family model. Read from a Hugging Face
// config.json, from GGUF metadata, or from a named preset (the published configurations).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace mixtral {

class GgufFile;

// How RoPE pairs the dimensions of a head. HF checkpoints rotate (x[i], x[i + d/2])
// ("rotate_half"); GGUF converters permute q/k rows so that ggml rotates adjacent pairs
// (x[2i], x[2i+1]). Using the pairing of the file's own convention gives identical scores
// without touching the weights.
enum class RopeStyle { HalfSplit, Interleaved };

struct Config {
  std::string arch = "mixtral";  // "mixtral" (MoE) or "mistral" (dense)
  int64_t dim = 0;               // model width
  int64_t n_layers = 0;
  int64_t n_heads = 0;           // query heads
  int64_t n_kv_heads = 0;        // key/value heads (grouped-query attention)
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;           // hidden width of one expert (or of the dense MLP)
  int64_t vocab_size = 0;
  int64_t max_context = 0;       // max_position_embeddings
  int64_t n_experts = 0;         // 0 for a dense model
  int64_t n_experts_used = 0;    // top-k
  int64_t sliding_window = 0;    // 0: full causal attention
  float norm_eps = 1e-5f;
  float rope_theta = 1e6f;
  RopeStyle rope_style = RopeStyle::HalfSplit;
  bool tied_embeddings = false;  // the LM head is the embedding matrix (no separate output weight)
  int32_t bos_id = 1;
  int32_t eos_id = 2;

  bool is_moe() const { return n_experts > 0; }
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }

  static Config from_hf(const nlohmann::json& config, const std::string& where);
  static Config from_gguf(const GgufFile& gguf);
  // "mixtral-8x7b", "mixtral-8x22b", "mistral-7b": the published configurations.
  static Config preset(const std::string& name);

  // Throws Error("<where>: ...") when a value is missing, non-positive, inconsistent or absurd.
  void validate(const std::string& where) const;

  // Parameters stored, and parameters used for one token (top-k experts of each layer).
  int64_t params_total() const;
  int64_t params_active() const;
};

std::string to_string(const Config& c);

}  // namespace mixtral
