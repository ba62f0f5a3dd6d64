#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace mixtral {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  cand_.resize(size_t(n_vocab));
  for (int64_t i = 0; i < n_vocab; ++i) cand_[i] = {logits[i], int32_t(i)};

  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
    std::unordered_set<int32_t> seen(history.end() - n, history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = cand_[id].first;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  auto best_first = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (p_.temperature <= 0.f) return std::min_element(cand_.begin(), cand_.end(), best_first)->second;

  // Top-k: keep the k most likely, sorted.
  size_t n = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < n) n = size_t(p_.top_k);
  std::partial_sort(cand_.begin(), cand_.begin() + n, cand_.end(), best_first);
  cand_.resize(n);

  // Softmax at the temperature, in double.
  std::vector<double> prob(n);
  const double m = cand_[0].first;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += prob[i] = std::exp((cand_[i].first - m) / p_.temperature);
  for (double& q : prob) q /= sum;

  // Min-p: drop tokens less likely than min_p times the most likely.
  if (p_.min_p > 0.f) {
    size_t keep = 1;
    while (keep < n && prob[keep] >= p_.min_p * prob[0]) ++keep;
    n = keep;
  }
  // Top-p: the smallest prefix whose probability reaches top_p.
  if (p_.top_p < 1.f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += prob[keep++];
      if (cum >= p_.top_p) break;
    }
    n = std::max<size_t>(1, keep);
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= prob[i];
    if (r < 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace mixtral
