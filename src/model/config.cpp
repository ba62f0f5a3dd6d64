#include "model/config.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/gguf.h"

namespace mixtral {
namespace {

int64_t json_int(const nlohmann::json& j, const char* key, const std::string& where,
                 std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail(where, std::string("config.json has no \"") + key + "\"");
  }
  if (!it->is_number_integer()) fail(where, std::string("config.json: \"") + key + "\" is not an integer");
  return it->get<int64_t>();
}

double json_num(const nlohmann::json& j, const char* key, const std::string& where, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(where, std::string("config.json: \"") + key + "\" is not a number");
  return it->get<double>();
}

}  // namespace

Config Config::from_hf(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, "config.json is not a JSON object");
  Config c;
  std::string hf_arch;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string())
    hf_arch = (*it)[0].get<std::string>();
  const std::string model_type = j.value("model_type", std::string());
  const bool moe = j.contains("num_local_experts") || hf_arch == "MixtralForCausalLM" || model_type == "mixtral";
  c.arch = moe ? "mixtral" : "mistral";
  c.dim = json_int(j, "hidden_size", where);
  c.n_layers = json_int(j, "num_hidden_layers", where);
  c.n_heads = json_int(j, "num_attention_heads", where);
  c.n_kv_heads = json_int(j, "num_key_value_heads", where, c.n_heads);
  c.head_dim = json_int(j, "head_dim", where, c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.ffn_dim = json_int(j, "intermediate_size", where);
  c.vocab_size = json_int(j, "vocab_size", where);
  c.max_context = json_int(j, "max_position_embeddings", where, 32768);
  c.n_experts = moe ? json_int(j, "num_local_experts", where) : 0;
  c.n_experts_used = moe ? json_int(j, "num_experts_per_tok", where, 2) : 0;
  c.sliding_window = json_int(j, "sliding_window", where, 0);
  c.norm_eps = float(json_num(j, "rms_norm_eps", where, 1e-5));
  c.rope_theta = float(json_num(j, "rope_theta", where, 1e4));
  c.rope_style = RopeStyle::HalfSplit;
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) c.tied_embeddings = it->get<bool>();
  c.bos_id = int32_t(json_int(j, "bos_token_id", where, 1));
  c.eos_id = int32_t(json_int(j, "eos_token_id", where, 2));
  c.validate(where);
  return c;
}

Config Config::from_gguf(const GgufFile& g) {
  const std::string& where = g.path();
  const auto arch = g.get_string("general.architecture");
  if (!arch) fail(where, "no general.architecture");
  if (*arch != "llama" && *arch != "mixtral")
    fail(where, "architecture \"" + *arch + "\" is not supported (expected llama/mixtral)");
  const std::string a = *arch;
  auto need = [&](const std::string& key) {
    const auto v = g.get_int(a + "." + key);
    if (!v) fail(where, "missing " + a + "." + key);
    return *v;
  };
  auto opt = [&](const std::string& key, int64_t fallback) {
    return g.get_int(a + "." + key).value_or(fallback);
  };
  Config c;
  c.dim = need("embedding_length");
  c.n_layers = need("block_count");
  c.n_heads = need("attention.head_count");
  c.n_kv_heads = opt("attention.head_count_kv", c.n_heads);
  c.head_dim = opt("attention.key_length", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.ffn_dim = need("feed_forward_length");
  c.max_context = opt("context_length", 32768);
  c.n_experts = opt("expert_count", 0);
  c.n_experts_used = c.n_experts > 0 ? opt("expert_used_count", 2) : 0;
  c.arch = c.n_experts > 0 ? "mixtral" : "mistral";
  c.sliding_window = opt("attention.sliding_window", 0);
  c.norm_eps = float(g.get_float(a + ".attention.layer_norm_rms_epsilon").value_or(1e-5));
  c.rope_theta = float(g.get_float(a + ".rope.freq_base").value_or(1e4));
  c.rope_style = RopeStyle::Interleaved;
  const auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  c.vocab_size = opt("vocab_size", tokens ? int64_t(tokens->size()) : 0);
  c.bos_id = int32_t(g.get_int("tokenizer.ggml.bos_token_id").value_or(1));
  c.eos_id = int32_t(g.get_int("tokenizer.ggml.eos_token_id").value_or(2));
  c.validate(where);
  return c;
}

Config Config::preset(const std::string& name) {
  Config c;
  c.vocab_size = 32000;
  c.norm_eps = 1e-5f;
  c.rope_style = RopeStyle::HalfSplit;
  if (name == "mixtral-8x7b") {
    c.arch = "mixtral";
    c.dim = 4096; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 128;
    c.ffn_dim = 14336; c.max_context = 32768; c.n_experts = 8; c.n_experts_used = 2;
    c.rope_theta = 1e6f;
  } else if (name == "mixtral-8x22b") {
    c.arch = "mixtral";
    c.vocab_size = 32768;
    c.dim = 6144; c.n_layers = 56; c.n_heads = 48; c.n_kv_heads = 8; c.head_dim = 128;
    c.ffn_dim = 16384; c.max_context = 65536; c.n_experts = 8; c.n_experts_used = 2;
    c.rope_theta = 1e6f;
  } else if (name == "mistral-7b") {
    c.arch = "mistral";
    c.dim = 4096; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 128;
    c.ffn_dim = 14336; c.max_context = 32768; c.sliding_window = 4096; c.rope_theta = 1e4f;
  } else {
    fail("--preset", "unknown preset \"" + name + "\" (mixtral-8x7b, mixtral-8x22b, mistral-7b)");
  }
  c.validate("preset " + name);
  return c;
}

void Config::validate(const std::string& where) const {
  auto range = [&](const char* what, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      fail(where, std::string(what) + " = " + std::to_string(v) + " is out of range [" +
                      std::to_string(lo) + ", " + std::to_string(hi) + "]");
  };
  range("hidden size", dim, 1, 1 << 16);
  range("layer count", n_layers, 1, 1024);
  range("head count", n_heads, 1, 1024);
  range("kv head count", n_kv_heads, 1, n_heads);
  range("head dim", head_dim, 2, 1024);
  range("ffn size", ffn_dim, 1, 1 << 20);
  range("vocab size", vocab_size, 3, 1 << 22);
  range("context length", max_context, 1, 1 << 24);
  range("expert count", n_experts, 0, 1024);
  if (is_moe()) range("experts per token", n_experts_used, 1, n_experts);
  range("sliding window", sliding_window, 0, 1 << 30);
  if (n_heads % n_kv_heads != 0)
    fail(where, "head count " + std::to_string(n_heads) + " is not a multiple of kv head count " +
                    std::to_string(n_kv_heads));
  if (head_dim % 2 != 0) fail(where, "head dim must be even for RoPE");
  if (!(norm_eps > 0.f && norm_eps < 1.f)) fail(where, "rms norm eps out of range");
  if (!(rope_theta > 1.f && rope_theta < 1e12f)) fail(where, "rope theta out of range");
  if (bos_id < 0 || bos_id >= vocab_size || eos_id < 0 || eos_id >= vocab_size)
    fail(where, "bos/eos token id outside the vocabulary");
}

int64_t Config::params_total() const {
  const int64_t attn = dim * q_dim() * 2 + dim * kv_dim() * 2;
  const int64_t experts = std::max<int64_t>(1, n_experts) * 3 * dim * ffn_dim;
  const int64_t router = n_experts * dim;
  const int64_t layer = attn + experts + router + 2 * dim;
  return n_layers * layer + (tied_embeddings ? 1 : 2) * vocab_size * dim + dim;
}

int64_t Config::params_active() const {
  const int64_t attn = dim * q_dim() * 2 + dim * kv_dim() * 2;
  const int64_t experts = (is_moe() ? n_experts_used : 1) * 3 * dim * ffn_dim;
  const int64_t router = n_experts * dim;
  const int64_t layer = attn + experts + router + 2 * dim;
  return n_layers * layer + (tied_embeddings ? 1 : 2) * vocab_size * dim + dim;
}

std::string to_string(const Config& c) {
  std::ostringstream s;
  s << "arch " << c.arch << ", dim " << c.dim << ", layers " << c.n_layers << ", heads " << c.n_heads
    << "/" << c.n_kv_heads << " (head_dim " << c.head_dim << "), ffn " << c.ffn_dim;
  if (c.is_moe()) s << ", experts " << c.n_experts << " top-" << c.n_experts_used;
  s << ", vocab " << c.vocab_size << ", context " << c.max_context << ", rope_theta " << c.rope_theta;
  if (c.sliding_window) s << ", sliding window " << c.sliding_window;
  return s.str();
}

}  // namespace mixtral
