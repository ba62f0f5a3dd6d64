#include "train/optimizer.h"

#include <cmath>

namespace mixtral::train {

double learning_rate(const TrainHyper& h, int64_t step) {
  if (step < h.warmup_steps) return h.lr * double(step + 1) / double(h.warmup_steps);
  const double span = double(std::max<int64_t>(1, h.steps - h.warmup_steps));
  const double progress = std::min(1.0, double(step - h.warmup_steps) / span);
  return h.min_lr + 0.5 * (h.lr - h.min_lr) * (1.0 + std::cos(M_PI * progress));
}

double global_norm(const float* g, size_t n, ThreadPool& pool) {
  constexpr size_t kChunk = 65536;
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks, 0.0);
  pool.parallel_for(int64_t(chunks), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (size_t i = size_t(c) * kChunk; i < std::min(n, size_t(c + 1) * kChunk); ++i) s += double(g[i]) * double(g[i]);
      part[size_t(c)] = s;
    }
  });
  double total = 0;
  for (double s : part) total += s;
  return std::sqrt(total);
}

void scale_in_place(float* x, size_t n, float s, ThreadPool& pool) {
  pool.parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] *= s;
  }, 4096);
}

void AdamW::step(const ParamLayout& layout, float* params, const float* g, const TrainHyper& h, double lr,
                 ThreadPool& pool) {
  ++t_;
  const float b1 = float(h.beta1), b2 = float(h.beta2), eps = float(h.adam_eps);
  const float c1 = float(1.0 / (1.0 - std::pow(h.beta1, double(t_))));  // bias corrections
  const float c2 = float(1.0 / (1.0 - std::pow(h.beta2, double(t_))));
  const float lr_f = float(lr);
  for (const ParamInfo& p : layout.tensors()) {
    const float wd = p.decay ? float(h.weight_decay) : 0.0f;
    float *x = params + p.offset, *m = m_.data() + p.offset, *v = v_.data() + p.offset;
    const float* gr = g + p.offset;
    pool.parallel_for(int64_t(p.numel), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        m[i] = b1 * m[i] + (1.0f - b1) * gr[i];
        v[i] = b2 * v[i] + (1.0f - b2) * gr[i] * gr[i];
        const float update = (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
        x[i] -= lr_f * (update + wd * x[i]);
      }
    }, 4096);
  }
}

}  // namespace mixtral::train
