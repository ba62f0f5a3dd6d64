#include "engine/session.h"

#include <algorithm>

#include "core/error.h"

namespace mixtral {

namespace {
int64_t ctx_or_max(const Model& m, int64_t n_ctx) {
  return n_ctx <= 0 ? m.config().max_context : n_ctx;  // KVCache rejects more than the model's maximum
}
int threads_or_default(int n) { return n > 0 ? n : ThreadPool::default_threads(); }
}  // namespace

Session::Session(const Model& model, const SessionOptions& o)
    : model_(model),
      pool_(threads_or_default(o.n_threads)),
      n_ctx_(ctx_or_max(model, o.n_ctx)),
      kv_(KVCache::reserved(model.config(), 1, n_ctx_)),
      state_(model.config(), std::max<int64_t>(1, std::min(o.n_batch, n_ctx_)), threads_or_default(o.n_threads)),
      n_batch_(state_.max_tokens) {}

const std::vector<float>& Session::eval(const std::vector<int32_t>& tokens, bool all_logits) {
  const int64_t vocab = model_.config().vocab_size;
  if (tokens.empty()) fail("eval", "no tokens to evaluate");
  if (n_past_ + int64_t(tokens.size()) > n_ctx_)
    fail("context", std::to_string(n_past_ + int64_t(tokens.size())) + " tokens do not fit in the context of " +
                        std::to_string(n_ctx_) + " (raise --ctx-size, up to " +
                        std::to_string(model_.config().max_context) + ")");
  out_.clear();
  if (all_logits) state_.reserve_logit_rows(std::min(int64_t(tokens.size()), n_batch_));
  for (size_t i = 0; i < tokens.size(); i += size_t(n_batch_)) {
    const size_t end = std::min(tokens.size(), i + size_t(n_batch_));
    batch_.clear();
    for (size_t j = i; j < end; ++j) batch_.add(tokens[j], int32_t(n_past_ + int64_t(j)), 0, all_logits || j + 1 == tokens.size());
    forward(model_, batch_, kv_, state_, pool_, observer_, activations_);
    const int64_t n_out = batch_.n_logits();
    out_.insert(out_.end(), state_.logits.begin(), state_.logits.begin() + n_out * vocab);
  }
  n_past_ += int64_t(tokens.size());
  return out_;
}

}  // namespace mixtral
