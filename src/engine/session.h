// One conversation with a model: a single sequence, its KV cache and activation state, fed a
// prompt in batches and then one token at a time. The CLI's generate/chat/logits use it; the
// server's scheduler drives transformer.h's forward() directly with many sequences.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/transformer.h"

namespace mixtral {

struct SessionOptions {
  int64_t n_ctx = 4096;    // KV-cache positions (capped at the model's maximum)
  int64_t n_batch = 512;   // most tokens per forward pass
  int n_threads = 0;       // 0: all cores
};

class Session {
 public:
  Session(const Model& model, const SessionOptions& options);

  // Appends tokens to the sequence. Returns the logits of the last one ([vocab]), or with
  // all_logits of every one ([n][vocab]). Throws Error when the context would overflow.
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits = false);

  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return n_ctx_; }
  void reset() { n_past_ = 0; }
  // Drops the positions from n onward (the cache keeps them but they are overwritten).
  void truncate(int64_t n) { n_past_ = std::min(n_past_, n); }
  void set_observer(RoutingObserver* o) { observer_ = o; }
  void set_activation_observer(ActivationObserver* o) { activations_ = o; }
  const Model& model() const { return model_; }
  ThreadPool& pool() { return pool_; }

 private:
  const Model& model_;
  ThreadPool pool_;
  int64_t n_ctx_;
  KVCache kv_;
  State state_;
  Batch batch_;
  int64_t n_batch_;
  int64_t n_past_ = 0;
  std::vector<float> out_;
  RoutingObserver* observer_ = nullptr;
  ActivationObserver* activations_ = nullptr;
};

}  // namespace mixtral
