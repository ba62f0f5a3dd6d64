// Weights: non-owning views into the mapped checkpoint, one struct per level of the model.
// Only the norm vectors are copied (to float32; a few KB per layer) so the forward pass needs
// no per-dtype code outside the kernels.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace mixtral {

// One SwiGLU expert: out = w2 · (silu(w1 · x) ⊙ (w3 · x)).
struct ExpertWeights {
  Matrix w1;  // gate  [ffn][dim]
  Matrix w3;  // up    [ffn][dim]
  Matrix w2;  // down  [dim][ffn]
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  Matrix wq;                     // [n_heads·head_dim][dim]
  Matrix wk;                     // [n_kv_heads·head_dim][dim]
  Matrix wv;                     // [n_kv_heads·head_dim][dim]
  Matrix wo;                     // [dim][n_heads·head_dim]
  std::vector<float> ffn_norm;   // [dim]
  Matrix router;                 // [n_experts][dim]; empty for a dense model
  std::vector<ExpertWeights> experts;  // n_experts (one for a dense model: its MLP)
};

struct Weights {
  Matrix token_embd;               // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;  // [dim]
  Matrix output;                   // [vocab][dim]  (LM head)
};

}  // namespace mixtral
