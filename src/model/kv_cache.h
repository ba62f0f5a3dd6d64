// The key/value cache: for every layer and sequence slot, the rotated keys and the values of
// every position so far, float32 (llama.cpp's references use an F32 cache; F16 moves logits by
// ~2e-4). Memory is allocated once for the context the caller asks for, never the model's max.
#pragma once
#include <cstdint>
#include <memory>

#include "model/config.h"

namespace mixtral {

class KVCache {
 public:
  // Throws Error when the cache would not fit in memory the machine has.
  KVCache(const Config& config, int n_seq, int64_t n_ctx);

  int n_seq() const { return n_seq_; }
  int64_t n_ctx() const { return n_ctx_; }
  size_t bytes() const { return 2 * n_elems_ * sizeof(float); }

  // [kv_dim] key / value vectors of `layer`, `seq`, position `pos`.
  float* k(int64_t layer, int seq, int64_t pos) { return k_.get() + offset(layer, seq, pos); }
  float* v(int64_t layer, int seq, int64_t pos) { return v_.get() + offset(layer, seq, pos); }
  const float* k(int64_t layer, int seq, int64_t pos) const { return k_.get() + offset(layer, seq, pos); }
  const float* v(int64_t layer, int seq, int64_t pos) const { return v_.get() + offset(layer, seq, pos); }

 private:
  size_t offset(int64_t layer, int seq, int64_t pos) const {
    return ((size_t(layer) * size_t(n_seq_) + size_t(seq)) * size_t(n_ctx_) + size_t(pos)) * size_t(kv_dim_);
  }
  int n_seq_;
  int64_t n_ctx_;
  int64_t kv_dim_;
  size_t n_elems_;
  // [layer][seq][pos][kv_dim]; left uninitialised so untouched context costs no memory.
  std::unique_ptr<float[]> k_, v_;
};

}  // namespace mixtral
