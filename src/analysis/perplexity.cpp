#include "analysis/perplexity.h"

#include <algorithm>

#include "core/error.h"

namespace mixtral::analysis {

double token_nll(const float* z, int64_t n_vocab, int32_t target) {
  double mx = z[0], sum = 0;
  for (int64_t v = 1; v < n_vocab; ++v) mx = std::max(mx, double(z[v]));
  for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(double(z[v]) - mx);
  return mx + std::log(sum) - double(z[target]);
}

double NllSums::perplexity_error() const {
  if (count == 0) return 0;
  const double mean = sum / double(count), var = sum2 / double(count) - mean * mean;
  return std::exp(mean) * std::sqrt(std::max(0.0, var) / double(count));
}

PerplexityWindows::PerplexityWindows(Session& session, int32_t bos, int64_t n_ctx)
    : session_(session), bos_(bos), n_ctx_(n_ctx) {
  if (n_ctx < 3) fail("perplexity", "a window needs at least 3 tokens (-c)");
  if (session.n_ctx() < n_ctx) fail("perplexity", "the session's context is shorter than a window");
}

const std::vector<float>& PerplexityWindows::eval(const std::vector<int32_t>& tokens, int64_t c) {
  if (c < 0 || (c + 1) * n_ctx_ > int64_t(tokens.size())) fail("perplexity", "window past the end of the text");
  window_.assign(tokens.begin() + c * n_ctx_, tokens.begin() + (c + 1) * n_ctx_);
  window_[0] = bos_;
  session_.reset();
  return session_.eval(window_, /*all_logits=*/true);
}

}  // namespace mixtral::analysis
