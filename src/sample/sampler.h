// Choosing the next token from a row of logits: greedy, or temperature sampling narrowed by
// top-k, top-p (nucleus) and min-p, with a repetition penalty over recent tokens. Seeded: the
// same seed and logits give the same choices.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace mixtral {

struct SamplerParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off. > 1 makes recent tokens less likely (llama.cpp/CTRL rule)
  int32_t repeat_last_n = 64;   // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks a token from logits[n_vocab]; `history` is the sequence so far (for the penalty).
  int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
  const SamplerParams& params() const { return p_; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // reused between calls
};

int32_t argmax(const float* x, int64_t n);

}  // namespace mixtral
