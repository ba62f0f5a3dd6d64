// The trainer's parameters: every tensor of the model lives in one flat float32 array, at an
// offset given by ParamLayout. Gradients and the two AdamW moments use the same layout, so the
// optimizer, the gradient norm and checkpoints are loops over one array, and a tensor's name
// (the Hugging Face name it is saved under) is attached to its slice.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace mixtral::train {

struct ParamInfo {
  std::string name;             // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;   // outermost first ([out][in] for a linear layer)
  size_t offset = 0, numel = 0;
  bool decay = false;           // weight decay applies (matrices), or not (norm gains)
  double init_std = 0;          // N(0, init_std²); 0 means the constant 1 (norm gains)
};

// Offsets of each tensor. A dense model has one "expert" per layer (HF's mlp.* names) and no
// router; with tie_embeddings the LM head offset equals the embedding's.
class ParamLayout {
 public:
  explicit ParamLayout(const TrainConfig& c);

  struct Layer {
    size_t attn_norm, wq, wk, wv, wo, ffn_norm;
    size_t router = 0;              // [E][D]; MoE only
    std::vector<size_t> w1, w3, w2;  // per expert: gate [F][D], up [F][D], down [D][F]
  };
  size_t embed = 0, norm = 0, lm_head = 0;
  std::vector<Layer> layers;

  const std::vector<ParamInfo>& tensors() const { return tensors_; }
  size_t size() const { return size_; }  // floats in all

 private:
  size_t add(const std::string& name, std::vector<int64_t> shape, bool decay, double init_std);
  std::vector<ParamInfo> tensors_;
  size_t size_ = 0;
};

// GPT-2-style initialisation: N(0, 0.02²) for matrices, the two residual projections (o_proj,
// w2) scaled by 1/√(2·layers) so the residual stream's variance does not grow with depth; norm
// gains 1. Each tensor draws from its own stream seeded by (seed, tensor index), so the result
// depends on nothing but the seed and the layout.
void init_params(const ParamLayout& layout, uint64_t seed, float* params);

// SplitMix64: the one random generator of the trainer (initialisation and data order), tiny
// and fully determined by its 64-bit state.
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

}  // namespace mixtral::train
