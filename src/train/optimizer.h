// AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, the learning-rate schedule
// (linear warm-up, then a cosine down to min_lr) and gradient clipping by global norm.
// Every loop splits the flat parameter array into fixed chunks, so the result does not depend
// on the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "train/params.h"

namespace mixtral::train {

// Learning rate of optimizer step `step` (0-based):
//   step < warmup:  lr · (step + 1) / warmup
//   after:          min_lr + ½ (lr − min_lr)(1 + cos(π · (step − warmup) / (steps − warmup)))
double learning_rate(const TrainHyper& h, int64_t step);

// √(Σ g²), summed in double over fixed chunks of 65536 values, the chunks added in order.
double global_norm(const float* g, size_t n, ThreadPool& pool);

void scale_in_place(float* x, size_t n, float s, ThreadPool& pool);

class AdamW {
 public:
  explicit AdamW(size_t n_params) : m_(n_params, 0.0f), v_(n_params, 0.0f) {}

  // One update with gradient g (already averaged and clipped), for step t = steps()+1:
  //   m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²
  //   p −= lr · ( m/(1−β1ᵗ) / (√(v/(1−β2ᵗ)) + ε)  +  wd · p )     (wd only where decay is set)
  void step(const ParamLayout& layout, float* params, const float* g, const TrainHyper& h, double lr,
            ThreadPool& pool);

  int64_t steps() const { return t_; }
  // The moments, for checkpoints (resume restores all three).
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

}  // namespace mixtral::train
