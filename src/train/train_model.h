// The Mixtral forward and backward pass for training, over B sequences of S tokens.
//
//   x = E[tokens]
//   per layer:  h = x + Wo·Attention(RoPE(Wq·n), RoPE(Wk·n), Wv·n),   n = RMSNorm(x)
//               x = h + Σ_r w_r · Expert_{e_r}(m),                    m = RMSNorm(h)
//               (e, w) = top-k of Wg·m, softmax over the k                (Mixtral §2.1)
//   logits = W_lm · RMSNorm(x);   loss = mean CE + aux + z
//
// The activations of the last forward() are kept (TrainActs) for backward(), which walks the
// same steps in reverse with the ops of train_ops.h. All buffers are sized once for B×S.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "train/params.h"
#include "train/train_ops.h"

namespace mixtral::train {

struct Losses {
  double ce = 0;   // mean cross-entropy per predicted token
  double aux = 0;  // load-balancing loss, coef · mean over layers
  double z = 0;    // router z-loss, coef · mean over layers
  double total() const { return ce + aux + z; }
};

class TrainModel {
 public:
  // Buffers for `batch` sequences of `seq` tokens. `pool` is used for every op.
  TrainModel(const TrainConfig& config, int64_t batch, int64_t seq, ThreadPool& pool);
  ~TrainModel();

  // tokens, targets: [batch][seq]; target t is the token that should follow tokens[t].
  Losses forward(const float* params, const int32_t* tokens, const int32_t* targets);
  // grads += scale · ∂(ce + aux + z)/∂params for the last forward().
  void backward(const float* params, float* grads, float scale);

  // Routing of the last forward: slots per expert, [layer][expert] (for logs and tests).
  std::vector<std::vector<int64_t>> expert_counts() const;
  const ParamLayout& layout() const { return layout_; }
  int64_t tokens() const { return T_; }

 private:
  struct LayerActs;
  void attention_fwd(const ParamLayout::Layer& L, const float* P, LayerActs& a, const float* x);
  void moe_fwd(const ParamLayout::Layer& L, const float* P, LayerActs& a, int64_t layer);
  void moe_bwd(const ParamLayout::Layer& L, const float* P, float* G, LayerActs& a, const float* dx, float* dh,
               float scale);
  void attention_bwd(const ParamLayout::Layer& L, const float* P, float* G, LayerActs& a, const float* dh,
                     float* dx);

  TrainConfig c_;
  ParamLayout layout_;
  ThreadPool& pool_;
  int64_t B_, S_, T_, D_, F_, E_, K_, V_;
  RopeTable rope_;
  AttnShape attn_;
  std::vector<int32_t> pos_, tokens_, targets_;
  std::vector<LayerActs> layers_;
  std::vector<float> x_final_, r_final_, f_, logits_;
  // backward scratch
  std::vector<float> dx_, dtmp_, dtmp2_, dq_, dk_, dv_, datt_, dz_, dw_, dye_, dxe_, dxe2_, dg_, dh1_, dh3_;
  LinearScratch ls_;
};

}  // namespace mixtral::train
