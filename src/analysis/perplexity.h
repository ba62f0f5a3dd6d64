// llama-perplexity's windows and its perplexity sums, shared by `mixtral perplexity` (plain,
// writing a KL-divergence base, and comparing against one) and its tests.
//
// The text (tokenized with <s> first) is cut into non-overlapping windows of n_ctx tokens (a
// tail shorter than one window is dropped); each window is evaluated from an empty cache with
// <s> in place of its first token, and only the predictions of its second half are scored
// (positions n_ctx/2 .. n_ctx-2, each predicting the next token, so each has at least n_ctx/2
// tokens of context).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/session.h"

namespace mixtral::analysis {

// The negative log-likelihood of `target` under softmax(logits), in float64.
double token_nll(const float* logits, int64_t n_vocab, int32_t target);

// Sums of per-token negative log-likelihoods.
struct NllSums {
  double sum = 0, sum2 = 0;
  int64_t count = 0;
  void add(double nll) {
    sum += nll;
    sum2 += nll * nll;
    ++count;
  }
  double perplexity() const { return count ? std::exp(sum / double(count)) : 0.0; }
  // perplexity × the standard error of the mean log-likelihood.
  double perplexity_error() const;
};

// Evaluates the windows of a token sequence with one session (at least n_ctx positions; the
// whole window is one batch when the session's batch allows).
class PerplexityWindows {
 public:
  PerplexityWindows(Session& session, int32_t bos, int64_t n_ctx);
  int64_t n_ctx() const { return n_ctx_; }
  int64_t first_scored() const { return n_ctx_ / 2; }
  // The logits of every position of window c of `tokens`: [n_ctx][n_vocab].
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, int64_t c);

 private:
  Session& session_;
  int32_t bos_;
  int64_t n_ctx_;
  std::vector<int32_t> window_;
};

}  // namespace mixtral::analysis
