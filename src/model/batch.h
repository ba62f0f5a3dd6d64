// A batch: tokens from one or many sequences, evaluated together in one forward pass.
// Prefill of one prompt, decode of many streams, and a server step mixing both are all batches.
#pragma once
#include <cstdint>
#include <vector>

namespace mixtral {

struct Batch {
  std::vector<int32_t> token;   // [n] token ids
  std::vector<int32_t> pos;     // [n] position of each token in its sequence
  std::vector<int32_t> seq;     // [n] sequence (KV-cache slot) of each token
  std::vector<uint8_t> logits;  // [n] 1 where the caller wants this token's logits

  void add(int32_t t, int32_t p, int32_t s, bool want_logits) {
    token.push_back(t);
    pos.push_back(p);
    seq.push_back(s);
    logits.push_back(want_logits ? 1 : 0);
  }
  void clear() { token.clear(); pos.clear(); seq.clear(); logits.clear(); }
  int64_t size() const { return int64_t(token.size()); }
  int64_t n_logits() const {
    int64_t n = 0;
    for (uint8_t l : logits) n += l;
    return n;
  }
};

}  // namespace mixtral
