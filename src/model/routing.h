// The router of a sparse MoE layer, and the way its decisions are observed.
//
// Mixtral (§2.1): logits = W_g · x over the experts; keep the top-k; weights = softmax over
// those k logits. (HF's softmax-over-all-then-renormalise is the same: the denominator cancels.)
#pragma once
#include <cstdint>

#include "model/batch.h"

namespace mixtral {

// Selects, for each of n_tokens rows of `logits` ([n_tokens][n_experts]), the k largest
// (ties: lower expert first) and their softmax weights (fp32, max subtracted), in rank order.
//   experts: [n_tokens][k]   weights: [n_tokens][k]
void route_top_k(const float* logits, int64_t n_tokens, int64_t n_experts, int64_t k,
                 int32_t* experts, float* weights);

// Receives every layer's routing decisions as the forward pass makes them. The forward pass
// computes these values anyway; with no observer attached the only cost is one null check per
// layer. Implementations must not keep the pointers past the call.
class RoutingObserver {
 public:
  virtual ~RoutingObserver() = default;
  //   experts, weights: [batch.size()][k], rank order (first choice first)
  //   logits:           [batch.size()][n_experts], the router's raw logits
  virtual void on_route(int64_t layer, const Batch& batch, int64_t k, int64_t n_experts,
                        const int32_t* experts, const float* weights, const float* logits) = 0;
};

}  // namespace mixtral
