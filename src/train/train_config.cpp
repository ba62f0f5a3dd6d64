#include "train/train_config.h"

#include <fstream>

#include "core/error.h"

namespace mixtral::train {
namespace {

template <class T>
void read(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(where, std::string("\"train\": \"") + key + "\" has the wrong type");
  }
}

}  // namespace

TrainConfig TrainConfig::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    fail(where, "expected {\"model\": {...}, \"train\": {...}}");
  TrainConfig c;
  c.model_json = j["model"];
  if (c.model_json.value("num_local_experts", 1) == 0) c.model_json.erase("num_local_experts");
  c.model = Config::from_hf(c.model_json, where);
  c.tie_embeddings = c.model_json.value("tie_word_embeddings", false);
  c.aux_loss_coef = c.model_json.value("router_aux_loss_coef", 0.02);
  if (c.model.sliding_window > 0) fail(where, "sliding_window is not supported by the trainer (set it to null)");
  if (c.model.n_heads % c.model.n_kv_heads != 0) fail(where, "num_attention_heads must be a multiple of num_key_value_heads");
  if (c.model.head_dim % 2 != 0) fail(where, "head_dim must be even (RoPE turns pairs)");

  TrainHyper& h = c.train;
  const nlohmann::json t = j.value("train", nlohmann::json::object());
  if (!t.is_object()) fail(where, "\"train\" is not an object");
  static const char* known[] = {"seq_len", "batch_size", "grad_accum", "steps", "lr", "min_lr", "warmup_steps",
                                "weight_decay", "beta1", "beta2", "adam_eps", "grad_clip", "router_z_loss_coef",
                                "seed", "eval_fraction", "eval_every", "eval_batches", "save_every", "threads",
                                "save_dtype"};
  for (auto it = t.begin(); it != t.end(); ++it)
    if (std::find(std::begin(known), std::end(known), it.key()) == std::end(known))
      fail(where, "\"train\": unknown key \"" + it.key() + "\"");
  read(t, "seq_len", h.seq_len, where);
  read(t, "batch_size", h.batch_size, where);
  read(t, "grad_accum", h.grad_accum, where);
  read(t, "steps", h.steps, where);
  read(t, "lr", h.lr, where);
  read(t, "min_lr", h.min_lr, where);
  read(t, "warmup_steps", h.warmup_steps, where);
  read(t, "weight_decay", h.weight_decay, where);
  read(t, "beta1", h.beta1, where);
  read(t, "beta2", h.beta2, where);
  read(t, "adam_eps", h.adam_eps, where);
  read(t, "grad_clip", h.grad_clip, where);
  read(t, "router_z_loss_coef", h.router_z_loss_coef, where);
  read(t, "seed", h.seed, where);
  read(t, "eval_fraction", h.eval_fraction, where);
  read(t, "eval_every", h.eval_every, where);
  read(t, "eval_batches", h.eval_batches, where);
  read(t, "save_every", h.save_every, where);
  read(t, "threads", h.threads, where);
  read(t, "save_dtype", h.save_dtype, where);
  if (h.seq_len < 2 || h.batch_size < 1 || h.grad_accum < 1 || h.steps < 1)
    fail(where, "\"train\": seq_len ≥ 2, batch_size, grad_accum and steps ≥ 1 are required");
  if (h.seq_len > c.model.max_context) fail(where, "\"train\": seq_len exceeds max_position_embeddings");
  if (!(h.lr > 0) || h.min_lr < 0 || h.warmup_steps < 0) fail(where, "\"train\": bad learning-rate schedule");
  if (!(h.eval_fraction > 0 && h.eval_fraction < 0.5)) fail(where, "\"train\": eval_fraction must be in (0, 0.5)");
  if (h.save_dtype != "f32" && h.save_dtype != "bf16" && h.save_dtype != "f16")
    fail(where, "\"train\": save_dtype must be f32, bf16 or f16");
  return c;
}

TrainConfig TrainConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, "cannot read training config");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("invalid JSON: ") + e.what());
  }
  return from_json(j, path);
}

nlohmann::json TrainConfig::to_json() const {
  const TrainHyper& h = train;
  nlohmann::json t = {{"seq_len", h.seq_len},
                      {"batch_size", h.batch_size},
                      {"grad_accum", h.grad_accum},
                      {"steps", h.steps},
                      {"lr", h.lr},
                      {"min_lr", h.min_lr},
                      {"warmup_steps", h.warmup_steps},
                      {"weight_decay", h.weight_decay},
                      {"beta1", h.beta1},
                      {"beta2", h.beta2},
                      {"adam_eps", h.adam_eps},
                      {"grad_clip", h.grad_clip},
                      {"router_z_loss_coef", h.router_z_loss_coef},
                      {"seed", h.seed},
                      {"eval_fraction", h.eval_fraction},
                      {"eval_every", h.eval_every},
                      {"eval_batches", h.eval_batches},
                      {"save_every", h.save_every},
                      {"threads", h.threads},
                      {"save_dtype", h.save_dtype}};
  return {{"model", model_json}, {"train", t}};
}

nlohmann::json TrainConfig::hf_config(const std::string& torch_dtype) const {
  const Config& m = model;
  nlohmann::json j = {{"architectures", {dense() ? "MistralForCausalLM" : "MixtralForCausalLM"}},
                      {"model_type", dense() ? "mistral" : "mixtral"},
                      {"hidden_size", m.dim},
                      {"intermediate_size", m.ffn_dim},
                      {"num_hidden_layers", m.n_layers},
                      {"num_attention_heads", m.n_heads},
                      {"num_key_value_heads", m.n_kv_heads},
                      {"head_dim", m.head_dim},
                      {"max_position_embeddings", m.max_context},
                      {"vocab_size", m.vocab_size},
                      {"rms_norm_eps", model_json.value("rms_norm_eps", 1e-5)},  // as written, not float-rounded
                      {"rope_theta", model_json.value("rope_theta", double(m.rope_theta))},
                      {"sliding_window", nullptr},
                      {"hidden_act", "silu"},
                      {"tie_word_embeddings", tie_embeddings},
                      {"bos_token_id", m.bos_id},
                      {"eos_token_id", m.eos_id},
                      {"attention_dropout", 0.0},
                      {"initializer_range", 0.02},
                      {"torch_dtype", torch_dtype}};
  if (!dense()) {
    j["num_local_experts"] = m.n_experts;
    j["num_experts_per_tok"] = m.n_experts_used;
    j["router_aux_loss_coef"] = aux_loss_coef;
    j["output_router_logits"] = false;
  }
  return j;
}

}  // namespace mixtral::train
