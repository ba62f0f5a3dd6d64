#include "model/routing.h"

#include <cmath>

namespace mixtral {

void route_top_k(const float* logits, int64_t n_tokens, int64_t n_experts, int64_t k,
                 int32_t* experts, float* weights) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* l = logits + t * n_experts;
    int32_t* e = experts + t * k;
    float* w = weights + t * k;
    // Partial selection sort: k is 1-4 and n_experts 8-128; simple beats clever here.
    for (int64_t r = 0; r < k; ++r) {
      int32_t best = -1;
      for (int64_t i = 0; i < n_experts; ++i) {
        bool taken = false;
        for (int64_t j = 0; j < r; ++j) taken |= (e[j] == i);
        if (!taken && (best < 0 || l[i] > l[best])) best = int32_t(i);
      }
      e[r] = best;
    }
    // softmax over the k selected logits; the first is the largest.
    const float m = l[e[0]];
    float sum = 0.f;
    for (int64_t r = 0; r < k; ++r) sum += (w[r] = std::exp(l[e[r]] - m));
    for (int64_t r = 0; r < k; ++r) w[r] /= sum;
  }
}

}  // namespace mixtral
