#include "train/params.h"

#include <cmath>

namespace mixtral::train {

size_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay, double init_std) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t d : shape) p.numel *= size_t(d);
  p.shape = std::move(shape);
  p.offset = size_;
  p.decay = decay;
  p.init_std = init_std;
  size_ += p.numel;
  tensors_.push_back(p);
  return p.offset;
}

ParamLayout::ParamLayout(const TrainConfig& c) {
  const Config& m = c.model;
  const int64_t D = m.dim, F = m.ffn_dim;
  const double std0 = 0.02, std_out = 0.02 / std::sqrt(2.0 * double(m.n_layers));
  embed = add("model.embed_tokens.weight", {m.vocab_size, D}, true, std0);
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.attn_norm = add(p + "input_layernorm.weight", {D}, false, 0);
    L.wq = add(p + "self_attn.q_proj.weight", {m.q_dim(), D}, true, std0);
    L.wk = add(p + "self_attn.k_proj.weight", {m.kv_dim(), D}, true, std0);
    L.wv = add(p + "self_attn.v_proj.weight", {m.kv_dim(), D}, true, std0);
    L.wo = add(p + "self_attn.o_proj.weight", {D, m.q_dim()}, true, std_out);
    L.ffn_norm = add(p + "post_attention_layernorm.weight", {D}, false, 0);
    if (c.dense()) {
      L.w1 = {add(p + "mlp.gate_proj.weight", {F, D}, true, std0)};
      L.w3 = {add(p + "mlp.up_proj.weight", {F, D}, true, std0)};
      L.w2 = {add(p + "mlp.down_proj.weight", {D, F}, true, std_out)};
    } else {
      const std::string moe = p + "block_sparse_moe.";
      L.router = add(moe + "gate.weight", {m.n_experts, D}, true, std0);
      for (int64_t e = 0; e < m.n_experts; ++e) {
        const std::string E = moe + "experts." + std::to_string(e) + ".";
        L.w1.push_back(add(E + "w1.weight", {F, D}, true, std0));
        L.w2.push_back(add(E + "w2.weight", {D, F}, true, std_out));
        L.w3.push_back(add(E + "w3.weight", {F, D}, true, std0));
      }
    }
    layers.push_back(std::move(L));
  }
  norm = add("model.norm.weight", {D}, false, 0);
  lm_head = c.tie_embeddings ? embed : add("lm_head.weight", {m.vocab_size, D}, true, std0);
}

void init_params(const ParamLayout& layout, uint64_t seed, float* params) {
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const ParamInfo& p = layout.tensors()[i];
    float* x = params + p.offset;
    if (p.init_std == 0) {
      for (size_t j = 0; j < p.numel; ++j) x[j] = 1.0f;
      continue;
    }
    SplitMix64 rng{seed * 0x9E3779B97F4A7C15ull + i + 1};
    for (size_t j = 0; j < p.numel; j += 2) {  // Box-Muller: two normals per pair of uniforms
      const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
      const double r = std::sqrt(-2.0 * std::log(u1)) * p.init_std;
      x[j] = float(r * std::cos(2 * M_PI * u2));
      if (j + 1 < p.numel) x[j + 1] = float(r * std::sin(2 * M_PI * u2));
    }
  }
}

}  // namespace mixtral::train
